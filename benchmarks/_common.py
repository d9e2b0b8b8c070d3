"""Shared by the benchmarks: a throwaway project home, the machine, timing, Markdown tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

PEPPER = "benchmark-pepper-not-secret"
REPO = Path(__file__).resolve().parents[1]
RESULT = "RESULT "
"""How a benchmark's child process hands its measurements back: one line of JSON after this prefix (its last wins)."""


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss_mib() -> float:
    """The largest peak RSS of this process's ended children."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


@contextlib.contextmanager
def project_home(policy_text: str, keep: str | None = None) -> Iterator[Path]:
    """A fresh project home with ``policy_text``; every project setting points at it."""
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="erasure-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(policy_text)
    saved = dict(os.environ)
    for k in list(os.environ):
        if k.startswith("ERASURE_PIPELINE_") or k == "DAGSTER_HOME":
            os.environ.pop(k)
    os.environ.update({
        "ERASURE_PIPELINE_HOME": str(root),
        "ERASURE_PIPELINE_PEPPER": PEPPER,
        "ERASURE_PIPELINE_POLICY": str(root / "policy.yaml"),
    })
    from erasure_pipeline.app.runner import ensure_dagster_home

    ensure_dagster_home()
    try:
        yield root
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            for sibling in (root.parent / f"{root.name}.kek.json", root.parent / f"{root.name}.kek.json.lock"):
                sibling.unlink(missing_ok=True)  # the default key file lives beside the home


def copy_home(home: Path, to: Path) -> None:
    """A copy of a kept project home at ``to``, with the default key file that lives beside it."""
    shutil.copytree(home, to, symlinks=True)
    kek = home.parent / f"{home.name}.kek.json"
    if kek.exists():
        shutil.copy(kek, to.parent / f"{to.name}.kek.json")


def kept_home_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of a benchmark that erases on copies of a kept home: which home, and the erasures on each copy."""
    ap.add_argument("--keep", default=None, help="a home erasure_cost built and kept (default: build one here)")
    ap.add_argument("--subjects", type=int, default=200_000, help="the home's size, as erasure_cost was given it")
    ap.add_argument("--seed", type=int, default=7, help="the home's landing seed, as erasure_cost was given it")
    ap.add_argument("--subjects-per-file", type=int, default=10_000, help="for a home built here")
    ap.add_argument("-n", type=int, default=7, help="single erasures per copy (after one that warms the process)")
    ap.add_argument("--batch", type=int, default=100, help="then this many in one tick (0: none)")


def kept_home(args: argparse.Namespace, scratch: Path) -> Path:
    """``--keep``'s home, or one ``erasure_cost`` builds and keeps under ``scratch`` (``kept_home_arguments``)."""
    if args.keep:
        return Path(args.keep)
    from benchmarks import erasure_cost

    where = scratch / "built"
    erasure_cost.main(["--subjects", str(args.subjects), "--seed", str(args.seed), "--subjects-per-file",
                       str(args.subjects_per_file), "--batch", "1", "--fresh", "0", "--keep", str(where)])
    return where


def child_result(command: Sequence[str], what: str, stdin: str | None = None, echo: bool = False) -> dict:
    """Run a benchmark's child process; its last ``RESULT`` line's JSON. ``echo``: print its other output. A child
    that failed or printed no result stops the benchmark with the end of its output, naming ``what`` failed."""
    done = subprocess.run([sys.executable, *command], input=stdin, capture_output=True, text=True, check=False)
    if echo:
        print("\n".join(ln for ln in done.stdout.splitlines() if not ln.startswith(RESULT)), flush=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(RESULT))


def short_rev(rev: str) -> str:
    """A git revision of this repository, as its short commit id."""
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def base_worktree(rev: str, at: Path) -> Iterator[Path]:
    """``rev`` checked out at ``at`` (a detached git worktree, removed afterwards): the base a pairs benchmark runs."""
    subprocess.run(["git", "worktree", "add", "--detach", str(at), rev], cwd=REPO, capture_output=True, check=True)
    try:
        yield at
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(at)], cwd=REPO, capture_output=True, check=False)


class Timer:
    def __enter__(self) -> Self:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def settings():
    from erasure_pipeline.core.settings import Settings

    return Settings.from_environ()


def lake():
    """The lake the project home points at."""
    from erasure_pipeline.stores.factory import lake_at

    return lake_at(settings().lake)


def landing():
    from erasure_pipeline.stores.factory import lake_at

    return lake_at(settings().landing)


def ledger():
    from erasure_pipeline.ledger import ledger_for

    return ledger_for(settings())


def env(policy=None):
    """Every store a node computation uses (``kinds.environment.open_env``)."""
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.kinds.environment import open_env

    s = settings()
    return open_env(policy or load_policy(settings=s), s)

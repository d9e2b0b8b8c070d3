"""How long the CLI's ledger commands take to answer, end to end, and what they import.

Each command runs as a person runs it (the installed ``erasure-pipeline`` script, a fresh process) in a
project home with a demo ledger: ``--runs`` times after one warm-up, median and slowest reported, with
and without Python's bytecode cache (``PYTHONDONTWRITEBYTECODE=1`` makes every start compile the
project's modules from source; some machines, this one included, set it globally). ``-X importtime``
names the heaviest imports and checks that none of Dagster, pandas, scikit-learn or numpy loads.

    python -m benchmarks.cli_startup [--runs 7]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._common import machine

HEAVY = ("dagster", "pandas", "sklearn", "numpy", "pyarrow", "qdrant_client", "pydantic")
"""What a ledger command must not import (pydantic: only when the declaration changed since the last command)."""


def _script() -> str:
    """The console script itself (a version manager's shim would add its own start-up)."""
    beside = Path(sys.executable).with_name("erasure-pipeline")
    return str(beside) if beside.exists() else shutil.which("erasure-pipeline") or "erasure-pipeline"


def _run(args: list[str], env: dict) -> tuple[float, str, str]:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done.stdout, done.stderr


def _imports(command: list[str], env: dict) -> tuple[set[str], list[tuple[int, str]]]:
    """(top-level packages imported, the five heaviest imports in µs) of one run of ``command``."""
    _t, _out, err = _run([sys.executable, "-X", "importtime", "-m", "erasure_pipeline.app.cli", *command], env)
    rows = [(int(m.group(2)), m.group(3).strip()) for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|(.*)", err)]
    top = {name.strip().split(".")[0] for _us, name in rows}
    return top, sorted(rows, reverse=True)[:5]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    with cli_home("cli-startup-") as (home, base):
        _measure(args, home, base)


@contextlib.contextmanager
def cli_home(prefix: str) -> Iterator[tuple[Path, dict]]:
    """A throwaway project home and the environment a person's shell would have for it; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "ERASURE_PIPELINE_HOME": str(home), "ERASURE_PIPELINE_PEPPER": "benchmark-pepper"}
    env.pop("DAGSTER_HOME", None)
    try:
        yield home, env
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _measure(args, home: Path, base: dict) -> None:
    script = _script()
    subprocess.run([script, "demo", "--subjects", "200", "--no-materialize"], env=base, capture_output=True, check=True)
    rid = subprocess.run([script, "erase", "bench.subject@example.com"], env=base, capture_output=True, text=True,
                         check=True).stdout.strip()
    certificate = home / "cert.json"
    commands = {
        "erase ID": ["erase", "{n}.someone@example.com"],
        "status ID": ["status", rid],
        "status --overdue": ["status", "--overdue"],
        "hold ID --reason": ["hold", rid, "--reason", "legal hold"],
        "release ID": ["release", rid],
        "extend ID --reason": ["extend", rid, "--reason", "backlog"],
        "retry ID": ["retry", rid],
        "signing-key": ["signing-key"],
        "certificate ID --json": ["certificate", rid, "--json"],
        "verify --certificate FILE": ["verify", "--certificate", str(certificate)],
    }
    rows = []
    for cache in (False, True):
        env = _env(base, cache)
        for name, command in commands.items():
            if name.startswith(("certificate", "verify --certificate")):
                continue  # measured below, once a certificate exists
            rows.append((cache, name, *_timed(script, command, env, args.runs)))
    # A certificate to print and check offline: the request is completed by a run (Dagster loads there, not here).
    subprocess.run([script, "materialize"], env=base, capture_output=True, check=True)
    subprocess.run([script, "process"], env=base, capture_output=True, check=False)
    certificate.write_text(subprocess.run([script, "certificate", rid, "--json"], env=base, capture_output=True, text=True,
                                          check=True).stdout)
    for cache in (False, True):
        env = _env(base, cache)
        for name in ("certificate ID --json", "verify --certificate FILE"):
            rows.append((cache, name, *_timed(script, commands[name], env, args.runs)))
    print(f"## CLI start-up: ledger commands, end to end ({machine()}; {args.runs} runs each after one warm-up)\n")
    print("| command | bytecode cache | median s | slowest s | heavy packages imported | heaviest imports (cumulative ms) |")
    print("|---|---|---|---|---|---|")
    for cache, name, median, slowest in rows:
        command = [c.replace("{n}", "import") for c in commands[name]]
        top, heaviest = _imports(command, _env(base, cache))
        heavy = ", ".join(sorted(h for h in HEAVY if h in top)) or "none"
        shown = ", ".join(f"{n} {us / 1000:.0f}" for us, n in heaviest[:3])
        print(f"| `{name}` | {'on' if cache else 'off'} | {median:.2f} | {slowest:.2f} | {heavy} | {shown} |")


def _env(base: dict, bytecode_cache: bool) -> dict:
    env = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env if bytecode_cache else {**env, "PYTHONDONTWRITEBYTECODE": "1"}


def _timed(script: str, command: list[str], env: dict, runs: int) -> tuple[float, float]:
    times = []
    for n in range(runs + 1):
        elapsed, _out, _err = _run([script, *[c.replace("{n}", str(n)) for c in command]], env)
        if n:
            times.append(elapsed)
    return statistics.median(times), max(times)


if __name__ == "__main__":
    main()

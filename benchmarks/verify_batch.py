"""An auditor checking a month of certificates: ``verify`` of many requests in one pass, against one at a time.

Builds the demo at ``--subjects`` (default 2000, 16 shards) in a throwaway home, erases ``--requests``
subjects (one ``erase --from-file``, one ``process``), then times, each as a fresh process as a person runs it:
``verify --since DATE`` (every certificate, one pass sharing reads), ``verify ID`` of one, and the extrapolated
cost of checking them one by one. Peak RSS of the batch verify from ``/usr/bin/time``-free ``resource``.

    python -m benchmarks.verify_batch [--subjects 2000] [--requests 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import machine, table
from benchmarks.cli_startup import _script


def _timed(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[1:3])} failed: {done.stderr[-1500:]}")
    return seconds, done, max(before, after) / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="verify-batch-"))
    env = {**os.environ, "ERASURE_PIPELINE_HOME": str(home), "ERASURE_PIPELINE_PEPPER": "benchmark-pepper"}
    env.pop("DAGSTER_HOME", None)
    script = _script()
    build, _done, _rss = _timed([script, "demo", "--subjects", str(args.subjects)], env)
    ids = pd.read_csv(home / "landing" / "subjects" / "demo.csv")["subject_id"].head(args.requests)
    (home / "ids.txt").write_text("\n".join(ids) + "\n")
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    _t, filed, _rss = _timed([script, "erase", "--from-file", str(home / "ids.txt")], env)
    rids = filed.stdout.split()
    process, _done, _rss = _timed([script, "process"], env)
    batch, done, rss = _timed([script, "verify", "--since", since], env)
    one, _done, _rss = _timed([script, "verify", rids[0]], env)
    checked = done.stdout.count("\n")
    print(f"## verify: {len(rids)} certificates at {args.subjects} subjects ({machine()})\n")
    print(table(["requests", "demo build s", "process (erase all) s", "verify --since (one pass) s", "peak RSS MiB",
                 "verify ID (one) s", f"{len(rids)} × verify ID (estimated) s", "one pass vs one by one"],
                [[len(rids), f"{build:.1f}", f"{process:.1f}", f"{batch:.2f}", f"{rss:.0f}", f"{one:.2f}", f"{one * len(rids):.0f}",
                  f"{batch / (one * len(rids)):.3f}"]]))
    print(f"\n({checked} lines of verify output; home {home})", file=sys.stderr)


if __name__ == "__main__":
    main()

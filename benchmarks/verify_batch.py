"""An auditor checking a month of certificates: ``verify`` of many requests in one pass, against one at a time.

Builds the demo at ``--subjects`` (default 2000, 16 shards) in a throwaway home, erases ``--requests``
subjects (one ``erase --from-file``, one ``process``), then times, each as a fresh process as a person runs it:
``verify --since DATE`` (every certificate, one pass sharing reads), ``verify ID`` of one, and the extrapolated
cost of checking them one by one; and the batch verify's own peak RSS (``os.wait4`` on its process).

    python -m benchmarks.verify_batch [--subjects 2000] [--requests 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import machine, table
from benchmarks.cli_startup import _script, cli_home


def _timed(args: list[str], env: dict) -> tuple[float, str, float]:
    """(seconds, stdout, peak RSS in MiB) of one command, as its own process (its own rusage, from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args[1:3])} failed: {err.read()[-1500:]}")
        return seconds, out.read(), usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args(argv)
    with cli_home("verify-batch-") as (home, env):
        _measure(args, home, env)


def _measure(args, home: Path, env: dict) -> None:
    script = _script()
    # the ids from the landing file before the build takes it (the demo declares landing.keep_days: 0)
    written, _out, _rss = _timed([script, "demo", "--subjects", str(args.subjects), "--no-materialize"], env)
    ids = pd.read_csv(home / "landing" / "subjects" / "demo.csv")["subject_id"].head(args.requests)
    materialized, _out, _rss = _timed([script, "materialize"], env)
    build = written + materialized
    (home / "ids.txt").write_text("\n".join(ids) + "\n")
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    _t, filed, _rss = _timed([script, "erase", "--from-file", str(home / "ids.txt")], env)
    rids = filed.split()
    process, _out, _rss = _timed([script, "process"], env)
    batch, report, rss = _timed([script, "verify", "--since", since], env)
    one, _out, _rss = _timed([script, "verify", rids[0]], env)
    checked = report.count("\n")
    print(f"## verify: {len(rids)} certificates at {args.subjects} subjects ({machine()})\n")
    print(table(["requests", "demo build s", "process (erase all) s", "verify --since (one pass) s", "peak RSS MiB",
                 "verify ID (one) s", f"{len(rids)} × verify ID (estimated) s", "one pass vs one by one"],
                [[len(rids), f"{build:.1f}", f"{process:.1f}", f"{batch:.2f}", f"{rss:.0f}", f"{one:.2f}", f"{one * len(rids):.0f}",
                  f"{batch / (one * len(rids)):.3f}"]]))
    print(f"\n({checked} lines of verify output)", file=sys.stderr)


if __name__ == "__main__":
    main()

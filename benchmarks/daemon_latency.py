"""Latency from ``erase`` to a completed certificate under a real daemon (``dagster dev``).

    python -m benchmarks.daemon_latency --subjects 2000

Builds the demo (the repository's policy: S = 16) in a throwaway home, starts ``dagster dev``
(webserver + daemon, in-process executor, the project's instance config with the queued run
coordinator), then files erasure requests with no further command and polls the ledger until
every certificate is issued: one subject, then two subjects of different shards filed together,
counting the erasure runs each took.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks._common import landing, ledger, machine, project_home, table
from erasure_pipeline.app.demo import DEMO_POLICY

REPO = Path(__file__).resolve().parents[1]


def _wait_for(book, rids, timeout=600.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if all(book.requests.get(r)["status"] == "completed" for r in rids):
            return time.perf_counter() - t0
        time.sleep(0.25)
    raise TimeoutError(f"not completed within {timeout} s: {[book.requests.get(r)['status'] for r in rids]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=2000)
    args = ap.parse_args(argv)
    with project_home(DEMO_POLICY.read_text()) as home:
        import dagster as dg

        from erasure_pipeline.app import demo
        from erasure_pipeline.app.cli.common import quiet_dagster as _quiet_dagster
        from erasure_pipeline.app.runner import materialize_all
        from erasure_pipeline.core import names as tags
        from erasure_pipeline.core.contracts import contracts_for
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.erasure.intake import erase
        from erasure_pipeline.stores.landing import read_landing_table

        _quiet_dagster()
        policy = load_policy()
        tables = demo.generate(args.subjects, 7)
        demo.write_landing(landing(), tables)
        with dg.DagsterInstance.get() as instance:
            materialize_all(build_definitions(policy), instance)
        subjects = read_landing_table(landing(), contracts_for(policy)["subjects"], policy.keyer(os.environ["ERASURE_PIPELINE_PEPPER"].encode()))
        by_shard = subjects.groupby("shard")["subject_id"].first()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (home / "dagster_dev.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port), "-h", "127.0.0.1"],
            cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).close()
                    break
                except OSError:
                    time.sleep(1)
            time.sleep(10)  # let the daemon start its sensor loop
            book = ledger()

            def erasure_runs(seen: dict[str, float]) -> dict[str, float]:
                """The erasure runs not in ``seen``, by id, with their own duration, once every one has ended."""
                deadline = time.monotonic() + 120
                with dg.DagsterInstance.get() as inst:
                    while True:
                        records = [r for r in inst.get_run_records(dg.RunsFilter(job_name=tags.ERASURE_JOB))
                                   if r.dagster_run.run_id not in seen]
                        if all(r.end_time for r in records) or time.monotonic() > deadline:
                            return {r.dagster_run.run_id: (r.end_time or time.time()) - r.start_time for r in records}
                        time.sleep(0.25)

            rid, _ = erase(by_shard.iloc[0])
            one = _wait_for(book, [rid])
            runs_one = erasure_runs({})
            rids = [erase(by_shard.iloc[1])[0], erase(by_shard.iloc[2])[0]]
            two = _wait_for(book, rids)
            runs_two = erasure_runs(runs_one)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # dagster dev can outlive SIGTERM while a run winds down
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            log.close()
    print(f"Machine: {machine()}")
    print(f"Demo: {args.subjects:,} subjects, S = {policy.shards}; dagster dev (daemon), in-process executor, sensor interval 5 s\n")
    print(table(
        ["requests", "shards", "erasure runs", "the runs' own duration (s)", "erase -> all certificates completed (s)"],
        [[1, 1, len(runs_one), sum(runs_one.values()), one], [2, 2, len(runs_two), sum(runs_two.values()), two]],
    ))


if __name__ == "__main__":
    main()

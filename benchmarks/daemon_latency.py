"""Latency from ``erase`` to a completed certificate under a real daemon (``dagster dev``).

    python -m benchmarks.daemon_latency --subjects 2000

Builds the demo (the repository's policy: S = 16) in a throwaway home, starts ``dagster dev``
(webserver + daemon, in-process executor, the project's instance config: queued run coordinator
dequeuing every second), then files erasure requests with no further command and polls the ledger until
every certificate is issued: one subject ``--passes`` times (the median is the figure), then two subjects of
different shards filed together, counting the erasure runs each took. Each pass is split, from Dagster's run
records, into: filed -> run created (the sensor's tick), created -> started (queue, launch, the run worker's
start-up), the run itself, and its end -> the certificate seen completed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks._common import landing, ledger, machine, project_home, table
from erasure_pipeline.app.demo import DEMO_POLICY
from erasure_pipeline_tests.servers import answers_http, free_port, serving

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
    ap.add_argument("--passes", type=int, default=5)
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
        # read before the build: it removes the landing files it took (the demo declares landing.keep_days: 0)
        subjects = read_landing_table(landing(), contracts_for(policy)["subjects"], policy.keyer(os.environ["ERASURE_PIPELINE_PEPPER"].encode()))
        with dg.DagsterInstance.get() as instance:
            materialize_all(build_definitions(policy), instance)
        by_shard = subjects.groupby("shard")["subject_id"].first()
        port = free_port()
        with serving([sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port), "-h", "127.0.0.1"],
                     log=home / "dagster_dev.log", ready=answers_http(f"http://127.0.0.1:{port}/server_info"), what="dagster dev",
                     timeout=180, cwd=REPO):
            time.sleep(10)  # let the daemon start its sensor loop
            book = ledger()

            def erasure_runs(seen) -> dict[str, tuple[float, float, float]]:
                """The erasure runs not in ``seen``, by id, with (created, started, ended) epoch times, once every one has ended."""
                deadline = time.monotonic() + 120
                with dg.DagsterInstance.get() as inst:
                    while True:
                        records = [r for r in inst.get_run_records(dg.RunsFilter(job_name=tags.ERASURE_JOB))
                                   if r.dagster_run.run_id not in seen]
                        if all(r.end_time for r in records) or time.monotonic() > deadline:
                            return {r.dagster_run.run_id: (r.create_timestamp.timestamp(), r.start_time or time.time(),
                                                           r.end_time or time.time()) for r in records}
                        time.sleep(0.25)

            passes, seen = [], {}
            for i in range(args.passes):
                time.sleep(1.7 * i % 5)  # land at different points of the sensor's 5 s loop
                filed = time.time()
                rid, _ = erase(by_shard.iloc[i])
                total = _wait_for(book, [rid])
                runs = erasure_runs(seen)
                seen.update(runs)
                created, started, ended = min(r[0] for r in runs.values()), min(r[1] for r in runs.values()), max(r[2] for r in runs.values())
                passes.append([i + 1, len(runs), created - filed, started - created, ended - started, total - (ended - filed), total])
                print(f"pass {i + 1}: {total:.1f} s", flush=True)
            rids = [erase(by_shard.iloc[args.passes])[0], erase(by_shard.iloc[args.passes + 1])[0]]
            two = _wait_for(book, rids)
            runs_two = erasure_runs(seen)
    config = (REPO / "erasure_pipeline" / "app" / "instance.yaml").read_text()
    dequeue = next((line.split(":")[1].strip() for line in config.splitlines() if "dequeue_interval_seconds" in line), "5 (default)")
    print(f"Machine: {machine()}")
    print(f"Demo: {args.subjects:,} subjects, S = {policy.shards}; dagster dev (daemon), in-process executor, erasure_sensor "
          f"minimum interval 1 s (ticks every 5 s loop of the sensor daemon), queued run coordinator dequeuing every {dequeue} s\n")
    print(table(["pass (1 subject)", "erasure runs", "filed -> run created (s)", "created -> started (s)", "the run (s)",
                 "run end -> certificate seen (s)", "erase -> certificate (s)"], passes))
    print(f"\nmedian erase -> certificate, 1 subject: {statistics.median(p[-1] for p in passes):.1f} s over {len(passes)} passes")
    print(f"2 subjects of 2 shards filed together: {len(runs_two)} erasure run(s) of "
          f"{sum(r[2] - r[1] for r in runs_two.values()):.1f} s, erase -> both certificates {two:.1f} s")


if __name__ == "__main__":
    main()

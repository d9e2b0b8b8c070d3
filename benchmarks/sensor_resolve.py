"""Time for the erasure sensor to ask for a run over N pending requests, and for the run to claim them.

    python -m benchmarks.sensor_resolve --requests 10000

Files N requests (bulk intake) in a fresh SQLite ledger (embedded default) for subjects whose
provenance lists rows in raw_subjects, raw_events and training_shards of their shard, then times:
1. one whole sensor evaluation through Dagster (``build_sensor_context`` + ``evaluate_tick``): it only
   reads (requests, live runs) and returns one RunRequest naming the request ids (5 000 per run);
2. what the run does first with that request: claim the batch and its requests in one transaction
   (``jobs.claim_erasure``: claim, job-run record, audit rows, then the provenance lookup that plans
   each shard's nodes).
"""

from __future__ import annotations

import argparse
import os

from benchmarks._common import Timer, env, ledger, machine, project_home, table

POLICY = "shards: 16\nseed: 1\ndatasets:\n  subjects: {id: subject_id, subject: subject_id}\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    args = ap.parse_args(argv)
    with project_home(POLICY):
        import dagster as dg

        from erasure_pipeline.core import identity
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.erasure.intake import erase_many
        from erasure_pipeline.erasure.plan import claim_erasure

        policy = load_policy()
        book = ledger()
        with Timer() as filing:
            erase_many([f"subject-{i}@example.com" for i in range(args.requests)])
        # Provenance for all subjects in one write per asset partition (as raw materialisations do).
        by_part: dict[str, dict[str, int]] = {}
        for r in book.requests.list(status=["pending"]):
            by_part.setdefault(identity.partition_key(identity.shard_of(r["subject_key"], policy.shards)), {})[r["subject_key"]] = 3
        for part, keys in by_part.items():
            for asset in ("raw_subjects", "raw_events", "training_shards"):
                book.nodes.record_provenance(asset, part, keys, "0" * 64, "bench")
        print(f"filed {args.requests:,} requests in {filing.seconds:.1f} s", flush=True)

        defs = build_definitions(policy)
        sensor = defs.resolve_sensor_def("erasure_sensor")
        with (
            dg.DagsterInstance.get() as instance,
            Timer() as tick,
            dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as ctx,
        ):
            data = sensor.evaluate_tick(ctx)
        assert len(data.run_requests) == 1  # one run per tick, at most ticks.MAX_REQUESTS_PER_RUN requests
        assert len(book.requests.list(status=["pending"])) == args.requests  # the tick wrote nothing
        with dg.DagsterInstance.get() as instance:
            config = data.run_requests[0].run_config["ops"]["claim_requests"]["config"]
            with Timer() as claiming:
                from erasure_pipeline.defs import runtime

                environment = env(policy)
                plan = claim_erasure(environment, config["batch_id"], config["request_ids"], "bench-run",
                                     is_live=runtime.run_is_live(instance, environment.ledger), host=runtime.HOST, pid=os.getpid())
        assert plan.claimed and len(plan.works) == len(by_part)

    print()
    print(f"Machine: {machine()}")
    print(f"Ledger: SQLite (embedded default); S = {policy.shards}\n")
    print(table(
        ["step", "requests", "runs requested / shards planned", "wall time (s)", "per request (µs)"],
        [
            ["bulk intake (erase --from-file): tombstones, requests, audit rows", args.requests, "-", filing.seconds,
             1e6 * filing.seconds / args.requests],
            ["whole sensor tick (reads only): eligible requests + one RunRequest", args.requests, len(data.run_requests),
             tick.seconds, 1e6 * tick.seconds / args.requests],
            ["the run's claim of one RunRequest: claim in one transaction + provenance lookup + plan",
             len(plan.request_ids), len(plan.works), claiming.seconds, 1e6 * claiming.seconds / len(plan.request_ids)],
        ],
    ))


if __name__ == "__main__":
    main()

"""Time for the erasure sensor to resolve N pending requests to shards and runs.

    python -m benchmarks.sensor_resolve --requests 10000

Files N requests in a fresh SQLite ledger (embedded default) for subjects whose provenance lists
rows in raw_subjects, raw_events and training_shards of their shard, then times:
1. resolving: one provenance lookup for all pending subjects + planning them into per-shard batches;
2. one whole sensor evaluation through Dagster (``build_sensor_context`` + ``evaluate_tick``): the
   resolve, claiming every request in the ledger (one UPDATE ... RETURNING per 500 ids, one chained
   audit-log row each, inserted in one statement), writing the batches and
   building the RunRequests.
"""

from __future__ import annotations

import argparse

from benchmarks._common import PEPPER, Timer, machine, project_home, table

POLICY = "shards: 16\nseed: 1\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    args = ap.parse_args(argv)
    with project_home(POLICY):
        import dagster as dg

        from erasure_pipeline import identity
        from erasure_pipeline.definitions import build_definitions
        from erasure_pipeline.erasure import plan as pl
        from erasure_pipeline.erasure.service import default_ledger
        from erasure_pipeline.policy import load_policy

        policy = load_policy()
        book = default_ledger()
        with Timer() as filing:
            for i in range(args.requests):
                key = identity.subject_key(PEPPER.encode(), f"subject-{i}@example.com")
                book.file_request(key, identity.shard_of(key, policy.shards), due_days=30)
        # Provenance for all subjects in one write per asset partition (as raw materialisations do).
        by_part: dict[str, dict[str, int]] = {}
        for r in book.requests(status=["pending"]):
            by_part.setdefault(identity.partition_key(identity.shard_of(r["subject_key"], policy.shards)), {})[r["subject_key"]] = 3
        for part, keys in by_part.items():
            for asset in ("raw_subjects", "raw_events", "training_shards"):
                book.record_provenance(asset, part, keys, "0" * 64, "bench")
        print(f"filed {args.requests:,} requests in {filing.seconds:.1f} s", flush=True)

        with Timer() as resolve:
            pending = book.requests(status=["pending"])
            planned = pl.plan(pending, book.provenance_for([r["subject_key"] for r in pending]), policy.shards)
        assert len(planned.batches) == len(by_part) and not planned.no_data

        defs = build_definitions(policy)
        sensor = defs.resolve_sensor_def("erasure_sensor")
        with (
            dg.DagsterInstance.get() as instance,
            Timer() as tick,
            dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as ctx,
        ):
            data = sensor.evaluate_tick(ctx)
        assert len(data.run_requests) == len(by_part)
        assert not book.requests(status=["pending"])

    print()
    print(f"Machine: {machine()}")
    print(f"Ledger: SQLite (embedded default); S = {policy.shards}\n")
    print(table(
        ["step", "requests", "runs requested", "wall time (s)", "per request (µs)"],
        [
            ["resolve: provenance lookup + plan into shard batches", args.requests, len(planned.batches), resolve.seconds,
             1e6 * resolve.seconds / args.requests],
            ["whole sensor tick: resolve + claim in ledger + RunRequests", args.requests, len(data.run_requests), tick.seconds,
             1e6 * tick.seconds / args.requests],
        ],
    ))


if __name__ == "__main__":
    main()

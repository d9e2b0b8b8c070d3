"""What "later files win on id" across subjects costs an ingest (``stores/superseded.py``).

    python -m benchmarks.superseded_cost --subjects 200000

In a fresh project home with the demo's data and declaration: a full build, then a cycle that lands one
events file sending ``--moved`` existing event ids again under other subjects (and as many new events), then
``superseded.resolve`` alone on the demo's ``events`` (the largest dataset) in the three cases an ingest meets,
median of ``--repeat``: a first build (nothing in the lake), a cycle of one file, a full re-ingest of every
landing file into the built lake. After the cycle, each moved id is held once, under its new subject.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import pandas as pd

from benchmarks._common import Timer, landing, machine, project_home, table
from benchmarks.erasure_cost import breakdown
from erasure_pipeline.app.demo import DEMO_POLICY


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--moved", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    with project_home(DEMO_POLICY.read_text()):
        from erasure_pipeline.app import demo
        from erasure_pipeline.app.cli.common import quiet_dagster
        from erasure_pipeline.app.process import run_cycle
        from erasure_pipeline.app.runner import env_of, get_instance, materialize_all
        from erasure_pipeline.core.contracts import contracts_for
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.stores import buckets as bk
        from erasure_pipeline.stores import superseded
        from erasure_pipeline.stores.landing import STAGING, key_frame

        quiet_dagster()
        tables = demo.generate(args.subjects, args.seed)
        demo.write_landing(landing(), tables, subjects_per_file=10_000)
        defs, instance = build_definitions(load_policy()), get_instance()
        with Timer() as build:
            built = materialize_all(defs, instance)
        assert built.success
        claim_build = breakdown(instance, [built.run_id])[0]["claim_landing_files"]
        env = env_of(defs)
        contract = contracts_for(env.policy)["events"]

        # One new file: --moved events sent again under other subjects, and as many new events.
        events = tables["events"]
        rng = np.random.default_rng(args.seed)
        kept = pd.concat([bk.read_buckets(env.lake, "raw_events", p, columns=["event_id"]) for p in env.graph.partitions])["event_id"]
        moved = events[events["event_id"].isin(rng.choice(kept.to_numpy(), args.moved, replace=False))].copy()  # not past retention
        moved["subject_id"] = rng.choice(tables["subjects"]["subject_id"].to_numpy(), args.moved)
        moved = moved[moved["subject_id"] != events.set_index("event_id").loc[moved["event_id"], "subject_id"].to_numpy()]
        fresh = events.iloc[: args.moved].assign(event_id=[f"new-{i}" for i in range(args.moved)])
        file = pd.concat([moved, fresh], ignore_index=True)
        demo.write_landing(landing(), {"events": file}, batch="moved")
        with Timer() as cycle:
            ran = run_cycle(defs, instance)
        assert ran.summary.success, ran.summary.error
        claim_cycle = breakdown(instance, [ran.summary.run_id])[0]["claim_landing_files"]
        held = pd.concat([bk.read_buckets(env.lake, "raw_events", p, columns=["event_id", "subject_key"]) for p in env.graph.partitions])
        held = held[held["event_id"].isin(moved["event_id"])]
        assert len(held) == len(moved) and held["event_id"].is_unique, "a moved id is held twice"
        assert set(held["subject_key"]) == set(env.keyer.keys(moved["subject_id"].tolist()))

        # The landing files are gone (the demo keeps none after ingest): the same rows, keyed as staging keys them.
        keyed = key_frame(events.assign(event_id=events["event_id"].astype(str)), "subject_id", env.keyer)
        cuts = np.linspace(0, len(keyed), max(1, args.subjects // 10_000) + 1).astype(int)
        seen = [superseded.Sighting.of(i, keyed.iloc[a:b], contract) for i, (a, b) in enumerate(itertools.pairwise(cuts))]
        one = [superseded.Sighting.of(len(seen), key_frame(file.assign(event_id=file["event_id"].astype(str)), "subject_id", env.keyer), contract)]
        lake_rows = superseded.lake_rows(env.lake, "raw_events", env.graph.partitions, contract.id_column, env.keys)
        cases = [("first build: every file, nothing in the lake", seen, None),
                 ("cycle: one file, the built lake", one, lake_rows),
                 ("full re-ingest: every file, the built lake", seen, lake_rows)]
        rows = []
        for label, files, held_fn in cases:
            ids = sum(len(s.ids) for s in files)
            seconds = _median(lambda files=files, held_fn=held_fn: superseded.resolve(env.lake, STAGING, "bench", contract, files, env.keyer, held_fn),
                              args.repeat)
            rows.append([label, f"{ids:,}", f"{seconds:.3f}"])
        lake_read = _median(lake_rows, args.repeat)

    print(f"Machine: {machine()}")
    print(f"Data: {args.subjects:,} subjects, {len(events):,} events; one cycle file of {len(moved):,} moved and {args.moved:,} new events\n")
    print(table(["operation", "seconds"], [
        ["full build of every asset", f"{build.seconds:.1f}"], ["  its claim step (staging, the batch's ids resolved)", f"{claim_build:.2f}"],
        ["cycle of the moved file (request -> run end)", f"{cycle.seconds:.1f}"], ["  its claim step (the lake's ids read, retractions staged)", f"{claim_cycle:.2f}"],
    ]))
    print()
    print(table([f"superseded.resolve on events, median of {args.repeat}", "ids sent", "seconds"], rows))
    print(f"\nof which reading the lake's event ids and subject keys (every raw_events bucket): {lake_read:.3f} s")
    print(f"after the cycle: each of the {len(moved):,} moved ids held once, under its new subject")


if __name__ == "__main__":
    main()

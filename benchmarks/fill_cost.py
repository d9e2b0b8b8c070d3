"""What ``fill: mean`` costs an erasure: a shard-wide value, so the shard's whole training set is computed again.

    python -m benchmarks.fill_cost --subjects 200000

The demo's data with ``--blank`` of the ages left empty, and its declaration with ``{column: age, fill: zero}``
then ``fill: mean``. For each, in a fresh project home: a full build of every asset from landing, then
``--erasures`` one-subject erasures one after another (request -> certificate, the sensor's code path). Prints
the build, the median erasure and the training step's compute in the erasures: with ``zero`` the training step
computes the changed buckets' subjects again, with ``mean`` every subject of the shard (the mean held the erased
person's age; ``kinds/training.py``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from benchmarks._common import Timer, landing, ledger, machine, project_home, table
from benchmarks.erasure_cost import breakdown
from erasure_pipeline.app.demo import DEMO_POLICY

NUMERIC = "numeric: [age, tenure_days, lifetime_value]"


def _run(fill: str, args) -> dict:
    text = DEMO_POLICY.read_text()
    assert NUMERIC in text, "the demo's declaration changed: update NUMERIC"
    with project_home(text.replace(NUMERIC, f"numeric: [{{column: age, fill: {fill}}}, tenure_days, lifetime_value]")):
        from erasure_pipeline.app import demo
        from erasure_pipeline.app.cli.common import quiet_dagster
        from erasure_pipeline.app.process import drain
        from erasure_pipeline.app.runner import get_instance, materialize_all
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.erasure.intake import erase

        quiet_dagster()
        tables = demo.generate(args.subjects, args.seed, events_per_subject=args.events_per_subject,
                               tickets_per_subject=args.tickets_per_subject)
        subjects = tables["subjects"]
        blank = np.random.default_rng(args.seed).random(len(subjects)) < args.blank
        tables["subjects"] = subjects.assign(age=subjects["age"].astype("float64").mask(blank))
        demo.write_landing(landing(), tables, subjects_per_file=10_000)
        defs, instance = build_definitions(load_policy()), get_instance()
        with Timer() as build:
            assert materialize_all(defs, instance).success, "the full build failed"
        print(f"fill {fill}: full build {build.seconds:.1f} s", flush=True)
        walls, training = [], []
        for sid in random.Random(args.seed).sample(subjects["subject_id"].tolist(), args.erasures):
            t0 = time.perf_counter()
            rid, _ = erase(sid, reason="benchmark")
            res = drain(defs, instance)
            walls.append(time.perf_counter() - t0)
            assert ledger().requests.get(rid)["status"] == "completed" and not res.failed_runs
            training.append(breakdown(instance, res.runs)[1].get("training_shards", 0.0))
        print(f"  erasures: {', '.join(f'{s:.2f}' for s in walls)} s", flush=True)
        return {"build": build.seconds, "erasures": walls, "training": training, "blank": int(blank.sum())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--events-per-subject", type=float, default=16.0)
    ap.add_argument("--tickets-per-subject", type=float, default=0.3)
    ap.add_argument("--blank", type=float, default=0.02, help="fraction of the subjects whose age is left empty")
    ap.add_argument("--erasures", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    runs = {fill: _run(fill, args) for fill in ("zero", "mean")}
    zero, mean = runs["zero"], runs["mean"]
    print()
    print(f"Machine: {machine()}")
    print(f"Data: {args.subjects:,} subjects ({zero['blank']:,} without an age), the demo's declaration with age filled as given; "
          "embedded back-ends, in-process executor")
    print()
    spread = lambda xs: f"{min(xs):.2f}–{max(xs):.2f}"
    med = statistics.median
    print(table(["operation", "fill: zero (s)", "fill: mean (s)", "mean / zero"], [
        ["full build of every asset from landing", zero["build"], mean["build"], mean["build"] / zero["build"]],
        [f"erase 1 subject, median of {args.erasures} (range zero {spread(zero['erasures'])}, mean {spread(mean['erasures'])})",
         med(zero["erasures"]), med(mean["erasures"]), med(mean["erasures"]) / med(zero["erasures"])],
        [f"training_shards compute in those erasures, median (range zero {spread(zero['training'])}, mean {spread(mean['training'])})",
         med(zero["training"]), med(mean["training"]), med(mean["training"]) / med(zero["training"])],
    ]))


if __name__ == "__main__":
    main()

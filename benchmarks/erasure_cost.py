"""Erasure cost through the pipeline vs a full rebuild of every asset, same data, one run.

    python -m benchmarks.erasure_cost --subjects 200000 --events-per-subject 16 --tickets-per-subject 0.3

1. writes the synthetic landing set, then times a full build of every asset (all shards' partitions,
   then the merges) from landing into an empty lake: the cost of rebuilding everything;
2. files one erasure request and times ``drain`` (the sensor's code path: plan, run, prove, certify)
   from request to certificate;
3. files 100 requests at once (spread over shards as they fall) and times the drain.
Uses the repository's policy.yaml (S = 16, logistic regression) unless --shards says otherwise.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from benchmarks._common import Timer, machine, peak_rss_mib, project_home, table

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--events-per-subject", type=float, default=16.0)
    ap.add_argument("--tickets-per-subject", type=float, default=0.3)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", default=None, help="keep the project home here (default: a temporary directory)")
    args = ap.parse_args(argv)

    policy_text = (REPO / "policy.yaml").read_text().replace("shards: 16 ", f"shards: {args.shards} ")
    with project_home(policy_text, args.keep):
        import dagster as dg

        from erasure_pipeline import demo, settings
        from erasure_pipeline.cli import _quiet_dagster
        from erasure_pipeline.definitions import build_definitions
        from erasure_pipeline.erasure.service import default_ledger, erase
        from erasure_pipeline.policy import load_policy
        from erasure_pipeline.process import drain
        from erasure_pipeline.runner import materialize_all

        _quiet_dagster()
        policy = load_policy()
        with Timer() as gen:
            tables = demo.generate(args.subjects, args.seed, events_per_subject=args.events_per_subject,
                                   tickets_per_subject=args.tickets_per_subject)
            demo.write_landing(settings.landing(), tables)
        sizes = {k: len(v) for k, v in tables.items()}
        print(f"landing: {sizes} written in {gen.seconds:.1f} s", flush=True)
        defs = build_definitions(policy)
        instance = dg.DagsterInstance.get()
        with Timer() as full:
            results = materialize_all(defs, instance, policy.shards, progress=lambda m: print("  " + m, flush=True))
        assert all(r.success for r in results), "the full build failed"
        print(f"full build: {full.seconds:.1f} s", flush=True)

        subjects = tables["subjects"]["subject_id"].tolist()
        rng = random.Random(args.seed)
        one = rng.choice(subjects)
        del tables
        t0 = time.perf_counter()
        rid, _ = erase(one, reason="benchmark")
        res1 = drain(defs, instance)
        one_s = time.perf_counter() - t0
        assert default_ledger().get_request(rid)["status"] == "completed" and not res1.failed_batches
        print(f"one subject: {one_s:.1f} s in {len(res1.runs)} run(s)", flush=True)

        batch = rng.sample([s for s in subjects if s != one], args.batch)
        t0 = time.perf_counter()
        rids = [erase(s, reason="benchmark")[0] for s in batch]
        resn = drain(defs, instance)
        batch_s = time.perf_counter() - t0
        book = default_ledger()
        assert all(book.get_request(r)["status"] == "completed" for r in rids) and not resn.failed_batches
        print(f"{args.batch} subjects: {batch_s:.1f} s in {len(resn.runs)} run(s)", flush=True)

    print()
    print(f"Machine: {machine()}")
    print(f"Data: {sizes['subjects']:,} subjects, {sizes['events']:,} events, {sizes['tickets']:,} tickets; "
          f"S = {policy.shards}; estimator {policy.model.estimator}; in-process executor; embedded back-ends")
    print()
    print(table(
        ["operation", "runs", "wall time (s)", "ratio to full rebuild"],
        [
            ["full rebuild of every asset (all partitions + merges)", len(results), full.seconds, 1.0],
            ["erase 1 subject (request -> certificate)", len(res1.runs), one_s, one_s / full.seconds],
            [f"erase {args.batch} subjects in one batch (request -> certificates)", len(resn.runs), batch_s, batch_s / full.seconds],
        ],
    ))
    print(f"\npeak RSS of the benchmark process: {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()

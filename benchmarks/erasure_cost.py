"""Erasure cost through the pipeline vs a full rebuild of every asset, same data, one process.

    python -m benchmarks.erasure_cost --subjects 200000 --events-per-subject 16 --tickets-per-subject 0.3

1. writes the synthetic landing set, then times a full build of every asset (one ingest_job run: every
   landing file into every shard, then the merges) from landing into an empty lake;
2. files one erasure request and times ``drain`` (the sensor's code path: one run that claims, erases,
   proves and certifies) from request to certificate;
3. files ``--batch`` requests at once (spread over shards as they fall) and times the drain: one tick,
   one run, each merge once;
4. erases ``--fresh`` more subjects one at a time in a process started for them (as the daemon's run workers
   are): steps 2 and 3 run in the process that built everything, which holds what the build left in memory.
Beside each operation it prints its floor (``benchmarks/floor.py``: the reads, writes and fits no implementation
can skip, timed in the same process on the same data) and the ratio to it. ``--executor multiprocess:2`` runs
the pipeline's jobs on Dagster's multiprocess executor (shard steps of different shards at once).
Then breaks each operation down by step and by node, from the runs' event logs. Uses the repository's
the demo's declaration, erasure_pipeline/app/demo_policy.yaml (S = 16, logistic regression), unless --shards says otherwise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._common import Timer, child_peak_rss_mib, landing, ledger, machine, peak_rss_mib, project_home, table
from benchmarks.floor import erasure_floor, landing_read_write, rebuild_floor
from erasure_pipeline.app.demo import DEMO_POLICY

REPO = Path(__file__).resolve().parents[1]
MERGES = ("anonymised_cohorts", "cohort_model", "ensemble_model")


def breakdown(instance, run_ids: list[str]) -> tuple[dict[str, float], dict[str, float], int]:
    """(seconds per step kind, seconds per node summed over partitions, merge materialisations) of runs."""
    import dagster as dg

    steps: dict[str, float] = defaultdict(float)
    nodes: dict[str, float] = defaultdict(float)
    merges = 0
    for run_id in run_ids:
        starts = {}
        for e in instance.all_logs(run_id):
            ev = e.dagster_event
            if ev is None:
                continue
            if ev.event_type == dg.DagsterEventType.STEP_START:
                starts[ev.step_key] = e.timestamp
            elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and ev.step_key in starts:
                # one op per shard (shard_00 ...): summed as the shard steps
                steps["shard steps" if ev.step_key.startswith("shard_") else ev.step_key] += e.timestamp - starts[ev.step_key]
            elif ev.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                name = ev.asset_key.to_user_string()
                seconds = ev.event_specific_data.materialization.metadata.get("compute_seconds")
                nodes[name] += float(seconds.value) if seconds is not None else 0.0
                merges += name in MERGES
    return dict(steps), dict(nodes), merges


def landing_arguments(ap: argparse.ArgumentParser) -> None:
    """The options ``write_synthetic_landing`` reads: the demo's landing set, at a size."""
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--events-per-subject", type=float, default=16.0)
    ap.add_argument("--tickets-per-subject", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--subjects-per-file", type=int, default=10_000,
                    help="landing exports of this many subjects per file and table (0: one file per table)")


def write_synthetic_landing(args: argparse.Namespace) -> tuple[dict[str, int], list[str], list[str]]:
    """(rows per table, landing files written, subject ids) of the demo's generator at ``args``' size."""
    from erasure_pipeline.app import demo

    tables = demo.generate(args.subjects, args.seed, events_per_subject=args.events_per_subject, tickets_per_subject=args.tickets_per_subject)
    files = demo.write_landing(landing(), tables, subjects_per_file=args.subjects_per_file or None)
    return {k: len(v) for k, v in tables.items()}, files, tables["subjects"]["subject_id"].tolist()


def erase_in_a_fresh_process(subject_ids: list[str]) -> list[float]:
    """Seconds from request to certificate of each subject, one after another, in this process: one started for
    them (``spawn``), which built nothing, as a run worker under the daemon is (its first erasure also pays the
    imports and the stores' opening)."""
    from erasure_pipeline.app.cli.common import quiet_dagster
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.app.runner import get_instance
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.erasure.intake import erase

    quiet_dagster()
    defs, instance, out = build_definitions(load_policy()), get_instance(), []
    for sid in subject_ids:
        t0 = time.perf_counter()
        rid, _ = erase(sid, reason="benchmark")
        result = drain(defs, instance)
        out.append(time.perf_counter() - t0)
        assert ledger().requests.get(rid)["status"] == "completed" and not result.failed_runs
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    landing_arguments(ap)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--keep", default=None, help="keep the project home here (default: a temporary directory)")
    ap.add_argument("--executor", default="in_process", help="in_process, or multiprocess:N (ERASURE_PIPELINE_EXECUTOR)")
    ap.add_argument("--fresh", type=int, default=5,
                    help="then erase this many more subjects one at a time in a process that built nothing (after one more that warms it)")
    args = ap.parse_args(argv)

    policy_text = DEMO_POLICY.read_text().replace("shards: 16 ", f"shards: {args.shards} ")
    with project_home(policy_text, args.keep):
        os.environ["ERASURE_PIPELINE_EXECUTOR"] = args.executor
        from erasure_pipeline.app.cli.common import quiet_dagster as _quiet_dagster
        from erasure_pipeline.app.process import drain
        from erasure_pipeline.app.runner import env_of, get_instance, materialize_all
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.erasure.intake import erase, erase_many

        _quiet_dagster()
        policy = load_policy()
        # In a child process: the generator's frames (1,644 MiB at 200 000 subjects) are not the pipeline's memory.
        with Timer() as gen, ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as child:
            sizes, files, subjects = child.submit(write_synthetic_landing, args).result()
        print(f"landing: {sizes} in {len(files)} files, written in {gen.seconds:.1f} s", flush=True)
        defs = build_definitions(policy)
        instance = get_instance()
        landing_floor = landing_read_write(landing())
        with Timer() as full:
            built = materialize_all(defs, instance, progress=lambda m: print("  " + m, flush=True))
        assert built.success, "the full build failed"
        print(f"full build: {full.seconds:.1f} s", flush=True)
        env = env_of(defs)
        floors = {"full rebuild": rebuild_floor(env, landing_floor)}
        print(f"rebuild floor: {floors['full rebuild'].total:.1f} s", flush=True)

        rng = random.Random(args.seed)
        one = rng.choice(subjects)
        batch = rng.sample([s for s in subjects if s != one], args.batch)
        fresh = rng.sample(sorted(set(subjects) - {one, *batch}), args.fresh + 1) if args.fresh else []
        del subjects
        floors["1 subject"] = erasure_floor(env, [env.keyer.key(one)])
        floors[f"{args.batch} subjects"] = erasure_floor(env, env.keyer.keys(batch))
        t0 = time.perf_counter()
        rid, _ = erase(one, reason="benchmark")
        res1 = drain(defs, instance)
        one_s = time.perf_counter() - t0
        assert ledger().requests.get(rid)["status"] == "completed" and not res1.failed_runs
        print(f"one subject: {one_s:.1f} s in {len(res1.runs)} run(s)", flush=True)

        t0 = time.perf_counter()
        rids = [r for r, _ in erase_many(batch, reason="benchmark")]
        resn = drain(defs, instance)
        batch_s = time.perf_counter() - t0
        book = ledger()
        assert all(book.requests.get(r)["status"] == "completed" for r in rids) and not resn.failed_runs
        print(f"{args.batch} subjects: {batch_s:.1f} s in {len(resn.runs)} run(s)", flush=True)
        parts = {"full rebuild": breakdown(instance, [built.run_id]), "1 subject": breakdown(instance, res1.runs),
                 f"{args.batch} subjects": breakdown(instance, resn.runs)}
        fresh_s: list[float] = []
        if fresh:  # the same home and settings (the child inherits this environment), a process of its own
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                fresh_s = child.submit(erase_in_a_fresh_process, fresh).result()[1:]
            print(f"{len(fresh_s)} subjects in a fresh process: median {statistics.median(fresh_s):.2f} s", flush=True)

    print()
    print(f"Machine: {machine()}")
    print(f"Data: {sizes['subjects']:,} subjects, {sizes['events']:,} events, {sizes['tickets']:,} tickets; "
          f"S = {policy.shards}, {policy.lake.buckets} buckets per shard; estimator {', '.join(m.estimator for m in policy.models.values())}; executor {args.executor}; "
          f"embedded back-ends (Qdrant Edge); landing: {len(files)} files "
          f"({args.subjects_per_file or 'all'} subjects per file and table)")
    print()
    walls = {"full rebuild": full.seconds, "1 subject": one_s, f"{args.batch} subjects": batch_s}
    print(table(
        ["operation", "runs", "merge materialisations", "wall time (s)", "floor (s)", "ratio to floor", "ratio to full rebuild"],
        [[label, runs, merges, walls[k], floors[k].total, walls[k] / floors[k].total, walls[k] / full.seconds]
               for k, label, runs, merges in [
                   ("full rebuild", "full rebuild of every asset (all partitions + merges)", 1, parts["full rebuild"][2]),
                   ("1 subject", "erase 1 subject (request -> certificate)", len(res1.runs), parts["1 subject"][2]),
                   (f"{args.batch} subjects", f"erase {args.batch} subjects in one tick (request -> certificates)", len(resn.runs),
                    parts[f"{args.batch} subjects"][2])]],
    ))
    if fresh_s:
        print()
        print(table(["one subject in a process that built nothing (as a run worker under the daemon)", "subjects", "median (s)",
                     "min (s)", "max (s)", "median / in-process figure"],
                    [["erase 1 subject, one after another (the first, which warms the process, left out)", len(fresh_s),
                      statistics.median(fresh_s), min(fresh_s), max(fresh_s), statistics.median(fresh_s) / one_s]]))
    print()
    print(table(["floor (s)", "read + write once", "fits (one per shard estimator)", "merges", "total"],
                [[k, f.read_write, f.fits, f.merges, f.total] for k, f in floors.items()]))
    inline = args.executor == "in_process"
    print(f"\npeak RSS of the benchmark process: {peak_rss_mib():,.0f} MiB ("
          + ("the pipeline's builds and erasures, in process" if inline else "the runs' own process; their steps ran in child processes")
          + f"); largest child process: {child_peak_rss_mib():,.0f} MiB (the landing generator{'' if inline else ', or a step process'})\n")
    step_names = sorted({s for _, (steps, _, _) in parts.items() for s in steps})
    print(table(["step (seconds, summed over shards)", *parts], [[s, *(parts[p][0].get(s, 0.0) for p in parts)] for s in step_names]))
    print()
    node_names = [n for n in ("raw_subjects", "raw_events", "raw_tickets", "cohort_partials", "training_shards", "shard_models",
                              "vector_index", *MERGES) if any(n in parts[p][1] for p in parts)]
    print(table(["node (compute seconds, summed over partitions)", *parts], [[n, *(parts[p][1].get(n, 0.0) for p in parts)] for n in node_names]))


if __name__ == "__main__":
    main()

"""What sealing the declared personal fields costs: the same data, the same runs, with and without ``personal``.

    python -m benchmarks.sealing_cost --subjects 200000

For each variant (the demo's declaration without ``personal`` and without ``landing.keep_days``, then with
``personal`` as the demo declares it), in a fresh project home: a full build of every asset from landing
(one ingest_job run), then ``--erasures`` one-subject erasures one after another (request -> certificate,
the sensor's code path), each timed. ``--repeats`` pairs (plain then sealed, back to back), each in fresh
homes: one build of each varies by ±10 % between runs on a shared VM, a pair's two builds less. Each variant runs
in a fresh process, as each Dagster run does: run one after another in one process, a later build carries the
earlier ones' process-wide caches (sealing lookups, ciphers, keyed skeletons). Whether those slowed it was not
settled: in one process three sealed builds took 49, 66 and 63 s, in fresh processes right after 63, 49 and 53 s
(2026-12-06). Prints the
ratio sealed / plain of the median builds, each pair's, and of the median erasure, then the builds by step and
node (medians: where sealing's time goes), then what sealing alone costs per cell (seal and open, measured on
the raw tables in memory), and what the key store holds.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time

from benchmarks._common import RESULT, Timer, child_result, landing, ledger, machine, peak_rss_mib, project_home, table
from benchmarks.erasure_cost import breakdown, landing_arguments
from erasure_pipeline.app.demo import DEMO_POLICY


def _variant(sealed: bool) -> str:
    text = re.sub(r"\nlanding:\n  keep_days: [^\n]*\n", "\n", DEMO_POLICY.read_text())
    if not sealed:
        text = re.sub(r", personal: \[[^\]]*\]", "", text)
    assert ("personal:" in text) == sealed
    return text


def _run(sealed: bool, args) -> dict:
    with project_home(_variant(sealed)):
        from erasure_pipeline.app import demo
        from erasure_pipeline.app.cli.common import quiet_dagster
        from erasure_pipeline.app.process import drain
        from erasure_pipeline.app.runner import env_of, get_instance, materialize_all
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions
        from erasure_pipeline.erasure.intake import erase

        quiet_dagster()
        policy = load_policy()
        tables = demo.generate(args.subjects, args.seed, events_per_subject=args.events_per_subject,
                               tickets_per_subject=args.tickets_per_subject)
        demo.write_landing(landing(), tables, subjects_per_file=args.subjects_per_file or None)
        sizes = {k: len(v) for k, v in tables.items()}
        defs = build_definitions(policy)
        instance = get_instance()
        with Timer() as build:
            built = materialize_all(defs, instance)
        assert built.success, "the full build failed"
        steps, nodes, _ = breakdown(instance, [built.run_id])
        print(f"{'sealed' if sealed else 'plain'}: full build {build.seconds:.1f} s", flush=True)
        rng = random.Random(args.seed)
        erasures = []
        for sid in rng.sample(tables["subjects"]["subject_id"].tolist(), args.erasures):
            t0 = time.perf_counter()
            rid, _ = erase(sid, reason="benchmark")
            res = drain(defs, instance)
            erasures.append(time.perf_counter() - t0)
            assert ledger().requests.get(rid)["status"] == "completed" and not res.failed_runs
        print(f"  erasures: {', '.join(f'{s:.2f}' for s in erasures)} s", flush=True)
        out = {"build": build.seconds, "erasures": erasures, "sizes": sizes, "shards": policy.shards, "parts": {**steps, **nodes}}
        if sealed:
            out["cells"] = _cell_costs(env_of(defs), tables)
            out["keys"] = env_of(defs).keys.status()
        return out


def _cell_costs(env, tables) -> dict:
    """Seal and open every declared cell of the three raw tables once, in memory (no I/O)."""
    import pyarrow as pa

    from erasure_pipeline.core import crypto
    from erasure_pipeline.core.contracts import contracts_for

    contracts = contracts_for(env.policy)
    keyer = env.keyer
    cells = seal_s = open_s = 0.0
    for name, df in tables.items():
        sealed = contracts[name].sealed
        if not sealed:
            continue
        frame = df.assign(subject_key=keyer.keys(df[contracts[name].subject_column].astype(str).tolist()))
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        t0 = time.perf_counter()
        done = crypto.seal_table(arrow, sealed, env.keys)
        t1 = time.perf_counter()
        crypto.open_table(done, env.keys)
        t2 = time.perf_counter()
        cells += sum(arrow.column(c).length() - arrow.column(c).null_count for c in sealed)
        seal_s, open_s = seal_s + t1 - t0, open_s + t2 - t1
    return {"cells": int(cells), "seal_s": seal_s, "open_s": open_s}


def _medians(runs: list[dict]) -> dict:
    """One variant's runs as one: the median build and median of each step and node, every erasure, the last run's
    key store and per-cell costs."""
    parts = {k for r in runs for k in r["parts"]}
    return {**runs[-1], "build": statistics.median(r["build"] for r in runs),
            "erasures": [e for r in runs for e in r["erasures"]],
            "parts": {k: statistics.median(r["parts"].get(k, 0.0) for r in runs) for k in parts}}


def _fresh(sealed: bool, argv: list[str]) -> dict:
    """``_run`` in a child process of its own (``--variant``): its result, and its peak RSS."""
    variant = "sealed" if sealed else "plain"
    return child_result(["-m", "benchmarks.sealing_cost", *argv, "--variant", variant], f"the {variant} variant", echo=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    landing_arguments(ap)
    ap.add_argument("--erasures", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of builds, plain then sealed (default 2)")
    ap.add_argument("--variant", choices=("plain", "sealed"), help=argparse.SUPPRESS)  # one variant, in this process (a child's)
    args = ap.parse_args(argv)
    if args.variant:
        out = _run(args.variant == "sealed", args)
        print(RESULT + json.dumps({**out, "peak_rss_mib": peak_rss_mib()}, default=str), flush=True)
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    pairs = [(_fresh(False, argv), _fresh(True, argv)) for _ in range(max(1, args.repeats))]
    plain, sealed = _medians([p for p, _ in pairs]), _medians([s for _, s in pairs])
    p_med, s_med = statistics.median(plain["erasures"]), statistics.median(sealed["erasures"])
    print()
    print(f"Machine: {machine()}")
    sizes = plain["sizes"]
    print(f"Data: {sizes['subjects']:,} subjects, {sizes['events']:,} events, {sizes['tickets']:,} tickets; S = {plain['shards']}; "
          "the demo's declaration (sealed: subjects.subject_id, full_name, phone; events.subject_id; tickets.subject_id, text); "
          "embedded back-ends, local key file")
    print()
    spread = lambda xs: f"{min(xs):.2f}–{max(xs):.2f}"
    seconds = lambda runs: ", ".join(f"{r['build']:.1f}" for r in runs)
    builds = f"median of {len(pairs)} (plain {seconds(p for p, _ in pairs)}; sealed {seconds(s for _, s in pairs)})"
    print(table(["operation", "plain (s)", "sealed (s)", "sealed / plain"], [
        [f"full build of every asset from landing, {builds}", plain["build"], sealed["build"], sealed["build"] / plain["build"]],
        *[[f"pair {n} (back to back)", p["build"], s["build"], s["build"] / p["build"]] for n, (p, s) in enumerate(pairs, 1)],
        [f"erase 1 subject, median of {len(plain['erasures'])} (range plain {spread(plain['erasures'])}, sealed {spread(sealed['erasures'])})",
         p_med, s_med, s_med / p_med],
    ]))
    print()
    parts = list(dict.fromkeys([*plain["parts"], *sealed["parts"]]))
    print(table(["the builds by step and node (seconds; nodes: compute summed over partitions)", "plain", "sealed", "sealed - plain"],
                [[k, plain["parts"].get(k, 0.0), sealed["parts"].get(k, 0.0), sealed["parts"].get(k, 0.0) - plain["parts"].get(k, 0.0)]
                 for k in sorted(parts, key=lambda k: -(sealed["parts"].get(k, 0.0) - plain["parts"].get(k, 0.0)))]))
    c = sealed["cells"]
    print()
    print(table(["sealing alone (in memory)", "cells", "seconds", "µs per cell"], [
        ["seal (AES-256-GCM, one per distinct subject and value)", c["cells"], c["seal_s"], c["seal_s"] / c["cells"] * 1e6],
        ["open", c["cells"], c["open_s"], c["open_s"] / c["cells"] * 1e6],
    ]))
    k = sealed["keys"]
    print(f"\nkey store after the run: {k['data_keys']:,} data keys held, {k['keys_destroyed']} destroyed, "
          f"{len(k['versions'])} KEK versions ({sum(v['state'] == 'destroyed' for v in k['versions'])} destroyed)")
    print(f"peak RSS of a variant's process: plain {max(p['peak_rss_mib'] for p, _ in pairs):,.0f} MiB, "
          f"sealed {max(s['peak_rss_mib'] for _, s in pairs):,.0f} MiB")


if __name__ == "__main__":
    main()

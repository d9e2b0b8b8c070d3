"""One full build of the demo by two versions of the code, in pairs back to back: is a change faster?

    python -m benchmarks.build_pairs --base HEAD~4 --subjects 200000 --pairs 4

A build on a shared 2-core VM drifts by tens of percent within an hour (four builds of one commit here took
81.8–106.7 s in one evening), so one build before and one after a change says nothing. This checks ``--base``
out into a temporary git worktree and builds the same landing set (``--seed``, written by each version's own
generator) with the base and with this checkout, alternately (the order swapped every pair, so a drift in one
direction favours neither), each build in a fresh process and a fresh project home: landing written, then every
asset materialised from it in one run (``runner.materialize_all``, the embedded default, in process). Prints each pair's two builds and their ratio,
the median ratio, and the median seconds of each step and node (the runs' own event logs, ``erasure_cost.
breakdown``). ``--base`` must be a commit whose benchmarks have ``erasure_cost.breakdown`` and ``landing_arguments``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import REPO, base_worktree, child_result, machine, short_rev, table

# Run in a child with only ``code`` on the path before the installed package: that checkout's pipeline and benchmarks.
_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import argparse
from benchmarks._common import project_home
from benchmarks.erasure_cost import breakdown, landing_arguments, write_synthetic_landing
from erasure_pipeline.app.demo import DEMO_POLICY
ap = argparse.ArgumentParser()
landing_arguments(ap)
args = ap.parse_args(sys.argv[2:])
with project_home(DEMO_POLICY.read_text()):
    from erasure_pipeline.app.cli.common import quiet_dagster
    from erasure_pipeline.app.runner import get_instance, materialize_all
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    import erasure_pipeline
    assert erasure_pipeline.__file__.startswith(sys.argv[1]), erasure_pipeline.__file__
    quiet_dagster()
    write_synthetic_landing(args)
    defs, instance = build_definitions(load_policy()), get_instance()
    t0 = time.perf_counter()
    built = materialize_all(defs, instance)
    seconds = time.perf_counter() - t0
    assert built.success, "the build failed"
    steps, nodes, _ = breakdown(instance, [built.run_id])
print("RESULT " + json.dumps({"build": seconds, "parts": {**steps, **nodes}}))
"""


def _build(code: Path, landing_args: list[str]) -> dict:
    return child_result(["-c", _CHILD, str(code), *landing_args], f"a build in {code}")


def main(argv: list[str] | None = None) -> None:
    from benchmarks.erasure_cost import landing_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    landing_arguments(ap)
    ap.add_argument("--base", required=True, help="the commit to compare this checkout with (any git revision)")
    ap.add_argument("--pairs", type=int, default=4)
    args = ap.parse_args(argv)
    landing_args = ["--subjects", str(args.subjects), "--seed", str(args.seed), "--events-per-subject", str(args.events_per_subject),
                    "--tickets-per-subject", str(args.tickets_per_subject), "--subjects-per-file", str(args.subjects_per_file)]
    base_rev, head_rev = short_rev(args.base), short_rev("HEAD")
    with tempfile.TemporaryDirectory(prefix="build-pairs-") as tmp, base_worktree(args.base, Path(tmp) / "base") as base:
        pairs = []
        for n in range(max(1, args.pairs)):
            order = [("base", base), ("this", REPO)] if n % 2 == 0 else [("this", REPO), ("base", base)]
            pair = {label: _build(code, landing_args) for label, code in order}
            pairs.append(pair)
            print(f"pair {n + 1}: base {pair['base']['build']:.1f} s, this {pair['this']['build']:.1f} s", flush=True)
    ratios = [p["this"]["build"] / p["base"]["build"] for p in pairs]
    print()
    print(f"Machine: {machine()}")
    print(f"Base {base_rev}, this checkout {head_rev} (with any uncommitted change); {args.subjects:,} subjects, "
          f"{args.subjects_per_file or 'all'} subjects per landing file; the demo's declaration; in process")
    print()
    print(table(["build", "base (s)", "this (s)", "this / base"],
                [*([f"pair {n} ({'base first' if n % 2 else 'this first'})", p["base"]["build"], p["this"]["build"], r]
                   for n, (p, r) in enumerate(zip(pairs, ratios, strict=True), 1)),
                 [f"median of {len(pairs)} pairs", statistics.median(p["base"]["build"] for p in pairs),
                  statistics.median(p["this"]["build"] for p in pairs), statistics.median(ratios)]]))
    print()
    parts = list(dict.fromkeys(k for p in pairs for v in p.values() for k in v["parts"]))
    med = {side: {k: statistics.median(p[side]["parts"].get(k, 0.0) for p in pairs) for k in parts} for side in ("base", "this")}
    print(table(["step or node (median seconds; nodes: compute summed over partitions)", "base", "this", "this - base"],
                [[k, med["base"][k], med["this"][k], med["this"][k] - med["base"][k]]
                 for k in sorted(parts, key=lambda k: med["this"][k] - med["base"][k])]))


if __name__ == "__main__":
    main()

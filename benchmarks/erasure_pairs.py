"""Erasures by two versions of the code on copies of one home, in pairs back to back: is a change faster?

    python -m benchmarks.erasure_pairs --base HEAD~3 --keep /path/to/home --pairs 4

``build_pairs`` does this for a build; this is its counterpart for the erasure path. Needs a home that
``erasure_cost`` built and kept (``--keep DIR``; or builds one at ``--subjects`` itself, with this checkout). Each pair
copies the home twice and erases the same subjects on both copies, one with ``--base`` (checked out into a temporary
git worktree) and one with this checkout (with any uncommitted change), each in a process started for it: one
erasure warms the process, then ``-n`` subjects are erased one at a time, then ``--batch`` subjects in one tick. The
order is swapped every pair, so the VM's drift (tens of percent within an hour on a shared 2-core VM) favours neither.
One erasure of a run-to-run spread of ±10 % says nothing about a change of 5 %: read the medians of the pairs' ratios.
Both versions must read the home as it is stored (a change to the lake's layout or the ledger's schema needs its own
comparison).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import (
    PEPPER,
    REPO,
    base_worktree,
    child_result,
    copy_home,
    kept_home,
    kept_home_arguments,
    machine,
    short_rev,
    table,
)

# Run in a child with only ``code`` on the path before the installed package: that checkout's pipeline.
_CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
home = sys.argv[2]
singles, batch = json.load(sys.stdin)  # the subjects' ids on stdin, not in the process's command line
for k in [k for k in os.environ if k.startswith("ERASURE_PIPELINE_") or k == "DAGSTER_HOME"]:
    os.environ.pop(k)
os.environ.update({"ERASURE_PIPELINE_HOME": home, "ERASURE_PIPELINE_PEPPER": sys.argv[3],
                   "ERASURE_PIPELINE_POLICY": os.path.join(home, "policy.yaml")})
import erasure_pipeline
assert erasure_pipeline.__file__.startswith(sys.argv[1]), erasure_pipeline.__file__
from erasure_pipeline.app.cli.common import quiet_dagster
from erasure_pipeline.app.process import drain
from erasure_pipeline.app.runner import ensure_dagster_home, get_instance
from erasure_pipeline.core.policy import load_policy
from erasure_pipeline.defs.pipeline import build_definitions
from erasure_pipeline.erasure.intake import erase_many

ensure_dagster_home()
quiet_dagster()
defs, instance = build_definitions(load_policy()), get_instance()

def erase(ids):
    t0 = time.perf_counter()
    erase_many(ids, reason="benchmark")
    result = drain(defs, instance)
    assert not result.failed_runs, "an erasure run failed"
    return time.perf_counter() - t0

singles_s = [erase([s]) for s in singles]
batch_s = erase(batch) if batch else None
print("RESULT " + json.dumps({"singles": singles_s, "batch": batch_s}))
"""


def _erase(code: Path, home: Path, singles: list[str], batch: list[str]) -> dict:
    return child_result(["-c", _CHILD, str(code), str(home), PEPPER], f"the erasures with {code}", stdin=json.dumps([singles, batch]))


def _pairs(args: argparse.Namespace, home: Path, scratch: Path, base: Path, ids: list[str]) -> list[dict]:
    """Each pair: the same subjects erased on two copies of ``home``, by the base and by this checkout (the order
    swapped every pair); per side, the median of its singles (the warming one left out) and the batch."""
    pairs = []
    for n in range(max(1, args.pairs)):
        chosen = random.Random(2000 + n).sample(ids, 1 + args.n + args.batch)
        singles, batch = chosen[:1 + args.n], chosen[1 + args.n:]
        pair = {}
        for label, code in ([("base", base), ("this", REPO)] if n % 2 == 0 else [("this", REPO), ("base", base)]):
            copy = scratch / f"pair{n}-{label}"
            copy_home(home, copy)
            got = _erase(code, copy, singles, batch)
            shutil.rmtree(copy, ignore_errors=True)
            (scratch / f"{copy.name}.kek.json").unlink(missing_ok=True)
            pair[label] = {"one": statistics.median(got["singles"][1:]), "batch": got["batch"]}
        pairs.append(pair)
        print(f"pair {n + 1}: one subject base {pair['base']['one']:.3f} s, this {pair['this']['one']:.3f} s", flush=True)
    return pairs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare this checkout with (any git revision)")
    kept_home_arguments(ap)
    ap.add_argument("--pairs", type=int, default=4)
    args = ap.parse_args(argv)

    from erasure_pipeline.app.demo import subject_ids

    base_rev, head_rev = short_rev(args.base), short_rev("HEAD")
    scratch = Path(tempfile.mkdtemp(prefix="erasure-bench-pairs-"))
    try:
        home = kept_home(args, scratch)
        with base_worktree(args.base, scratch / "base") as base:
            pairs = _pairs(args, home, scratch, base, subject_ids(args.subjects, args.seed))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"Machine: {machine()}")
    print(f"Base {base_rev}, this checkout {head_rev} (with any uncommitted change); home of {args.subjects:,} subjects "
          f"({'kept at ' + args.keep if args.keep else 'built here'}); each copy in a process started for it: one erasure "
          f"that warms it, {args.n} single erasures, then one tick of {args.batch}")
    print()
    rows = []
    for what, key in ([("one subject, median of the copy's singles", "one")] + ([(f"{args.batch} subjects in one tick", "batch")] if args.batch else [])):
        ratios = [p["this"][key] / p["base"][key] for p in pairs]
        rows += [[f"{what}: pair {n} ({'base first' if n % 2 else 'this first'})", p["base"][key], p["this"][key], r]
                 for n, (p, r) in enumerate(zip(pairs, ratios, strict=True), 1)]
        rows.append([f"{what}: median of {len(pairs)} pairs", statistics.median(p["base"][key] for p in pairs),
                     statistics.median(p["this"][key] for p in pairs), statistics.median(ratios)])
    print(table(["erasure", "base (s)", "this (s)", "this / base"], rows))


if __name__ == "__main__":
    main()

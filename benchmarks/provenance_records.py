"""The ledger's provenance alone, by two versions of the code: a build's records, lookups by subject, a migration.

    python -m benchmarks.provenance_records --base HEAD~1 --subjects 200000 --pairs 2

Each version (``--base`` in a temporary git worktree, and this checkout) records, in a process of its own and a
fresh SQLite ledger, the provenance a build of the demo writes (the claim's skeletons of every subject, where the
version has ``NodeRecords.keep_skeletons``; then ``NodeRecords.record``, one transaction per node partition:
raw_subjects, raw_events and training_shards hold every subject, raw_tickets and vector_index 30 % of them, over
``--shards`` partitions; the raw nodes with each subject's skeleton, a hash in no order of the subject keys), then
re-records one vector shard without one subject (what an erasure's vector step does), looks subjects up
(``provenance_for``: 1, 100, 500 of them) and forgets one. The order is swapped every pair. Then this checkout opens a copy of the base's last ledger (``Ledger.migrate``), as a deployment's
first start under the new code does. No Dagster, no stores: the ledger's share of a build, measured apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import REPO, base_worktree, child_result, machine, short_rev, table

ASSETS = {"raw_subjects": 1.0, "raw_events": 1.0, "raw_tickets": 0.3, "training_shards": 1.0, "vector_index": 0.3}

_CHILD = """
import hashlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
import erasure_pipeline
from erasure_pipeline.ledger import Ledger
assert erasure_pipeline.__file__.startswith(sys.argv[1]), erasure_pipeline.__file__
n, shards, path, assets = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
book = Ledger("sqlite:///" + path)
out = {}
if n == 0:  # open a ledger another version wrote
    t0 = time.perf_counter(); out["version"] = book.migrate(); out["migrate"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out)); sys.exit(0)
book.migrate()
keys = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(n))
skeleton = {k: hashlib.sha256(k.encode()).hexdigest() for k in keys}  # in no order of the keys', as a keyed hash of the id is
by_shard = {}
for k in keys:
    by_shard.setdefault(int(k[:8], 16) % shards, []).append(k)
t0 = time.perf_counter()
if hasattr(book.nodes, "keep_skeletons"):  # the ingest's claim stores the staged subjects' skeletons first (since 2026-12-07)
    book.nodes.keep_skeletons(skeleton)
for asset, share in assets.items():
    for shard, held in sorted(by_shard.items()):
        rows = {k: 3 for k in held if int(k[8:12], 16) < share * 65536}
        book.nodes.record(asset, f"shard_{shard:02d}", data_version="d" * 64, code_version="c" * 16, inputs={}, run_id="r" * 36,
                          provenance=rows, skeletons={k: skeleton[k] for k in rows} if asset.startswith("raw_") else None)
out["build"] = time.perf_counter() - t0
vectors = {k: 3 for k in by_shard[0] if int(k[8:12], 16) < assets["vector_index"] * 65536}
gone = next(iter(vectors))
t0 = time.perf_counter()
book.nodes.record("vector_index", "shard_00", data_version="e" * 64, code_version="c" * 16, inputs={}, run_id="s" * 36,
                  provenance={k: v for k, v in vectors.items() if k != gone})
out["rerecord"] = time.perf_counter() - t0
for m in (1, 100, 500):
    t0 = time.perf_counter(); found = book.nodes.provenance_for(keys[1000:1000 + m]); out[f"lookup{m}"] = time.perf_counter() - t0
    assert found, m
t0 = time.perf_counter(); book.nodes.forget_provenance(keys[5000:5001]); out["forget"] = time.perf_counter() - t0
assert book.nodes.provenance_for(keys[5000:5001]) == []
book.dispose()
out["mib"] = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s)) / 2**20
print("RESULT " + json.dumps(out))
"""

ROWS = [("build", "a build's provenance recorded (s)", 1), ("rerecord", "one vector shard re-recorded without one subject (ms)", 1000),
        ("lookup1", "provenance_for 1 subject (ms)", 1000), ("lookup100", "provenance_for 100 subjects (ms)", 1000),
        ("lookup500", "provenance_for 500 subjects (ms)", 1000), ("forget", "forget_provenance of 1 subject (ms)", 1000),
        ("mib", "ledger file after them (MiB)", 1)]


def _run(code: Path, n: int, shards: int, path: Path) -> dict:
    return child_result(["-c", _CHILD, str(code), str(n), str(shards), str(path), json.dumps(ASSETS)], f"the ledger's records in {code}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare this checkout with (any git revision)")
    ap.add_argument("--subjects", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args(argv)
    rev = {"base": short_rev(args.base), "this": short_rev("HEAD")}
    with tempfile.TemporaryDirectory(prefix="provenance-records-") as tmp, base_worktree(args.base, Path(tmp) / "base") as base:
        pairs = []
        for n in range(max(1, args.pairs)):
            order = [("base", base), ("this", REPO)] if n % 2 == 0 else [("this", REPO), ("base", base)]
            pair = {}
            for side, code in order:
                ledger = Path(tmp) / f"{side}.sqlite"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{ledger}{suffix}").unlink(missing_ok=True)
                pair[side] = _run(code, args.subjects, args.shards, ledger)
            pairs.append(pair)
            print(f"pair {n + 1}: base {pair['base']['build']:.1f} s, this {pair['this']['build']:.1f} s", flush=True)
        copy = Path(tmp) / "migrated.sqlite"
        shutil.copy(Path(tmp) / "base.sqlite", copy)
        migrated = _run(REPO, 0, args.shards, copy)
    med = {side: {k: statistics.median(p[side][k] for p in pairs) * scale for k, _, scale in ROWS} for side in ("base", "this")}
    print()
    print(f"Machine: {machine()}")
    print(f"Base {rev['base']}, this checkout {rev['this']} (with any uncommitted change); {args.subjects:,} subjects over "
          f"{args.shards} partitions; SQLite; medians of {len(pairs)} pairs, each version in a process of its own")
    print()
    print(table(["ledger operation", "base", "this", "this / base"],
                [[label, med["base"][k], med["this"][k], med["this"][k] / med["base"][k] if med["base"][k] else float("nan")]
                 for k, label, _ in ROWS]))
    print()
    print(f"The base's ledger opened by this checkout (ledger version {migrated['version']}): {migrated['migrate']:.2f} s")


if __name__ == "__main__":
    main()

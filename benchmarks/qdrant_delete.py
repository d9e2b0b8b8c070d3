"""Qdrant delete-by-filter of one subject, embedded (local) mode, at the pipeline's collection sizes.

    python -m benchmarks.qdrant_delete --sizes 1000 5000 20000

One collection per shard (the embedded layout). Each size: N points of 256 dimensions, three per
subject, payload ``subject_key``/``ticket_id``/``shard``/``text``. Times ``VectorStore.delete_subjects``
for one subject — count by ``subject_key`` filter, delete by the same filter, count again (must be
0), then VACUUM of the local store's SQLite file so deleted payload bytes leave the disk — and,
separately, the VACUUM alone. The 200,000-subject erasure_cost run holds ~3,700-6,000 points per
shard; local mode warns above 20,000 points per collection.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import Timer, machine, table
from erasure_pipeline.storage.vectors import VectorStore
from erasure_pipeline.vectors.embed import point_id


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--dimensions", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = VectorStore(root=Path(tmp))
            ids = [point_id(f"t{i}", 0, f"text {i}") for i in range(n)]
            vectors = rng.normal(size=(n, args.dimensions)).astype("float32")
            payloads = [{"subject_key": f"{i // 3:064x}", "ticket_id": f"t{i}", "shard": 0, "text": f"ticket text {i} " * 20}
                        for i in range(n)]
            with Timer() as load:
                store.sync(0, ids, vectors, payloads)
            deletes, vacuums = [], []
            for r in range(args.repeats):
                victim = f"{(r * 7919) % (n // 3):064x}"
                with Timer() as t:
                    deleted, left = store.delete_subjects(0, [victim])
                assert deleted == 3 and left == 0
                deletes.append(t.seconds)
                with Timer() as v:
                    store.compact(0)
                vacuums.append(v.seconds)
            size_mb = (Path(tmp) / "shard_00" / "collection" / "tickets" / "storage.sqlite").stat().st_size / 1e6
            rows.append([n, size_mb, load.seconds, 1000 * float(np.median(deletes)), 1000 * float(np.median(vacuums))])
    print(f"Machine: {machine()}")
    print(f"qdrant-client local mode, {args.dimensions} dimensions, median of {args.repeats} deletes\n")
    print(table(
        ["points in the shard's collection", "store size (MB)", "load (s)", "delete 1 subject incl. counts + VACUUM (ms)", "VACUUM alone (ms)"],
        rows,
    ))


if __name__ == "__main__":
    main()

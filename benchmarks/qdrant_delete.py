"""Deleting one subject from a shard's vectors: Qdrant Edge (the embedded default) vs qdrant-client's local mode.

    python -m benchmarks.qdrant_delete --sizes 5000 20000 60000

Each size: N points of 256 dimensions, three per subject, payload ``subject_key``/``group``/``text``,
in one shard, through the pipeline's own ``VectorStore`` classes. For each store it times the load
(upsert of all N points), the delete of one subject by ``subject_key`` filter (the logical delete,
flushed) and the step that makes the delete physical (Edge: ``optimize()``, which rewrites the
segment holding the deleted points; local mode: SQLite ``VACUUM``), and then byte-scans the store's
directory for the deleted subject's key (must be 0) and a kept subject's key (must be found).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import Timer, machine, table
from erasure_pipeline.ml.embed import point_id
from erasure_pipeline.stores.qdrant import ClientStore
from erasure_pipeline.stores.vectors import EdgeStore, PointData


def _bytes_hold(root: Path, needle: bytes) -> int:
    return sum(p.read_bytes().count(needle) for p in root.rglob("*") if p.is_file())


def _points(n: int, dimensions: int, rng: np.random.Generator) -> list[PointData]:
    vectors = rng.normal(size=(n, dimensions)).astype("float32")
    return [PointData(point_id(f"tickets\x00text\x00t{i}", 0, f"text {i}"), vectors[i],
                      {"subject_key": f"{i // 3:064x}", "group": f"tickets/b_{i % 16:03d}", "text": f"ticket text {i} " * 20})
            for i in range(n)]


def _edge_delete(store: EdgeStore, key: str) -> tuple[float, float]:
    """(logical delete + flush, optimize + flush) in seconds, on the open shard."""
    import qdrant_edge as q

    with store.shard(0) as shard:
        flt = store._filter("subject_key", [key])
        with Timer() as delete:
            shard.update(q.UpdateOperation.delete_points_by_filter(flt))
            shard.flush()
        with Timer() as vacuum:
            store._vacuum(shard)
        assert shard.count(q.CountRequest(filter=flt, exact=True)) == 0
    return delete.seconds, vacuum.seconds


def _client_delete(store: ClientStore, key: str) -> tuple[float, float]:
    from qdrant_client import models

    flt = models.Filter(must=[models.FieldCondition(key="subject_key", match=models.MatchValue(value=key))])
    with store.client(0) as client:
        with Timer() as delete:
            client.delete(store.collection, points_selector=models.FilterSelector(filter=flt), wait=True)
        assert client.count(store.collection, count_filter=flt, exact=True).count == 0
    with Timer() as vacuum:
        store.compact(0)
    return delete.seconds, vacuum.seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 60000])
    ap.add_argument("--dimensions", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stores", nargs="+", default=["edge", "local"], choices=["edge", "local"])
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        points = _points(n, args.dimensions, np.random.default_rng(0))
        for kind in args.stores:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                store = EdgeStore(root) if kind == "edge" else ClientStore(root=root)
                with Timer() as load, store.session(0, args.dimensions):
                    store.apply(0, [], points, args.dimensions)
                deletes, vacuums, victims = [], [], []
                for r in range(args.repeats):
                    victim = f"{(r * 7919) % (n // 3):064x}"
                    victims.append(victim)
                    d, v = (_edge_delete if kind == "edge" else _client_delete)(store, victim)
                    deletes.append(d)
                    vacuums.append(v)
                left = sum(_bytes_hold(root, v.encode()) for v in victims)
                kept = _bytes_hold(root, f"{(n // 3) - 1:064x}".encode())
                size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
                rows.append([
                    "qdrant edge" if kind == "edge" else "qdrant-client local", n, round(size_mb, 1),
                    round(load.seconds, 2), round(n / load.seconds), round(1000 * float(np.median(deletes)), 1),
                    round(1000 * float(np.median(vacuums)), 1), left, "found" if kept else "MISSING",
                ])
    print(f"Machine: {machine()}")
    print(f"{args.dimensions} dimensions, three points per subject, median of {args.repeats} one-subject deletes\n")
    print(table(
        ["store", "points in the shard", "on disk (MB)", "load (s)", "points/s", "delete 1 subject + flush (ms)",
         "make it physical (ms)", "erased keys' bytes left", "a kept key's bytes"],
        rows,
    ))


if __name__ == "__main__":
    main()

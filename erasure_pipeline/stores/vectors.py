"""The vector store: chunks of the declared text columns in Qdrant, one shard at a time.

Two back-ends behind one interface (``VectorStore``), both Qdrant:

- ``EdgeStore`` (the embedded default): Qdrant Edge (``qdrant-edge-py``, Qdrant's own storage engine
  in-process, the server's segment format), one Edge shard per data shard under ``<home>/qdrant``.
  Created without a write-ahead log (every write is flushed before the node records it) and with a
  vacuum that rewrites a segment as soon as it holds one deleted point, so after an erasure the
  subject's payload and vector bytes are gone from disk, which a byte scan of the directory proves.
- ``ClientStore`` (``stores.qdrant``): ``qdrant-client`` against a server (``url``); all shards share one collection
  whose ``shard`` payload field is indexed, and every operation is filtered by it. The same class in
  qdrant-client's local mode (``root``) is how the server's code path is tested here, where no
  server runs; local mode keeps payloads in SQLite and is VACUUMed after a delete.

Point ids are ``uuid5`` of (dataset, column, record id, chunk index, chunk text hash): content-
addressed, so rebuilding is a sync (delete what is gone, upsert only what is new), and a shard's
content hash is the hash of its sorted ids. Each point's ``group`` (``dataset/b_NNN``, the raw bucket
it came from) lets a node sync just the buckets that changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from erasure_pipeline.core.errors import StorageUnavailable

COLLECTION = "tickets"
"""The collection name, from the demo's first shape: renaming it would orphan existing points outside every erasure."""
_BATCH = 256
VECTOR = "text"


@dataclass(frozen=True)
class PointData:
    id: str
    vector: np.ndarray
    payload: dict


class VectorStore(Protocol):
    def session(self, shard: int, dimensions: int | None = None) -> contextlib.AbstractContextManager[None]: ...
    def group_ids(self, shard: int, group: str | None = None) -> set[str]: ...
    def apply(self, shard: int, delete: list[str], upsert: list[PointData], dimensions: int) -> None: ...
    def delete_subjects(self, shard: int, keys: list[str]) -> tuple[int, int]: ...
    def count_subjects(self, shard: int, keys: list[str]) -> int: ...
    def point_ids(self, shard: int) -> set[str]: ...
    def search(self, vector: np.ndarray, shards: list[int], limit: int = 5) -> list[tuple[float, dict]]: ...
    def payloads(self, shard: int) -> list[dict]: ...
    def describe(self) -> str: ...
    def stored_keys(self, shard: int, wanted: Collection[str] | None = None) -> set[str] | None: ...


KEY_BYTES = re.compile(rb"[0-9a-f]{64}")
MIB = 1 << 20


def keys_in_files(root: Path, wanted: Collection[str] | None = None) -> set[str]:
    """Every subject key (64 hex digits) whose bytes are anywhere in the files under ``root``: what a byte scan
    of the store finds, whatever its format says is live (a deleted point's payload stays in its segment file
    until the segment is rewritten; measured: docs/ARCHITECTURE.md). ``wanted``: which of these keys are there
    (the same bytes read, searched for those keys alone: 7 ms a shard at 200 000 subjects, where matching every
    key took 119 ms)."""
    needles = None if wanted is None else {k.encode() for k in wanted}
    found: set[bytes] = set()
    for path in sorted(root.rglob("*")) if root.exists() else ():
        if path.is_file():
            with contextlib.suppress(OSError):
                for chunk in data_of(path):
                    found.update(KEY_BYTES.findall(chunk) if needles is None else [n for n in needles - found if n in chunk])
    return {k.decode() for k in found}


def data_of(path: Path, block: int = 8 * MIB) -> Iterator[bytes]:
    """The bytes of a file that hold data, skipping the holes of a sparse file (Edge preallocates 32 MiB files of
    which a few KiB are written: reading the holes made a scan of a 16-shard store read a gigabyte of zeros).
    Blocks overlap by 63 bytes so no key is cut in two."""
    with open(path, "rb") as f:
        if not hasattr(os, "SEEK_DATA"):  # no sparse-file support on this platform: every byte
            yield f.read()
            return
        fd, size, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset
                    return
                f.seek(offset)  # a filesystem that cannot tell holes: read the rest
                yield f.read()
                return
            while start < end:
                n = min(block, end - start)
                f.seek(start)
                yield f.read(n + 63)
                start += n
            offset = end


def ensure_room(path: Path, what: str, factor: float = 1.0, floor: int = 16 * MIB) -> None:
    """Refuse before writing where the disk cannot take it: an embedded store that runs out of space while it
    grows a memory-mapped file dies of SIGBUS, with no message (measured), so check first and say so."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        raise StorageUnavailable(f"{what} {path}: the folder is gone; restore it (or its mount) and the erasure resumes by itself")
    used = blocks_used(path) if path.exists() else 0
    need, free = max(floor, int(used * factor)), shutil.disk_usage(existing).free
    if free < need:
        raise StorageUnavailable(f"{what} {path}: disk full ({free / MIB:.1f} MiB free, writing and compacting it needs about "
                                 f"{need / MIB:.0f} MiB); free space there and the erasure resumes by itself")


def blocks_used(path: Path) -> int:
    """Bytes in use below ``path``: blocks, not sizes (Edge's memory-mapped files are sparse: 80 MiB apparent, a
    few KiB used). Other processes write and compact shards beside it (a multiprocess run's steps; Edge makes and
    removes folders as it goes): a file or folder gone during the walk is not counted, never an error (a
    ``Path.rglob`` here failed a multiprocess build with FileNotFoundError)."""
    used = 0
    for folder, _dirs, files in os.walk(path):  # a folder that cannot be listed (gone) is skipped
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                used += os.stat(os.path.join(folder, name)).st_blocks * 512
    return used


def hash_ids(ids: set[str] | list[str]) -> str:
    """A shard's content hash: its sorted point ids (content-addressed, so equal ids mean equal points)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _edge():
    import qdrant_edge

    return qdrant_edge


@dataclass
class EdgeStore:
    """Qdrant Edge, embedded: one Edge shard per data shard under ``root``."""

    root: Path
    _open: dict = field(default_factory=dict, repr=False)

    def _path(self, shard: int) -> Path:
        return self.root / f"shard_{shard:02d}"

    @contextlib.contextmanager
    def session(self, shard: int, dimensions: int | None = None) -> Iterator[None]:
        """Keep the shard's Edge store open across several calls (loading one costs ~20 ms)."""
        if shard in self._open:
            yield
            return
        with self.shard(shard, dimensions) as store:
            if store is None:
                yield
                return
            self._open[shard] = store
            try:
                yield
            finally:
                self._open.pop(shard, None)

    def describe(self) -> str:
        return f"qdrant edge {self.root}"

    def stored_keys(self, shard: int, wanted: Collection[str] | None = None) -> set[str]:
        return keys_in_files(self._path(shard), wanted)

    @staticmethod
    def _config(dimensions: int):
        q = _edge()
        # No HNSW index (a shard's points are few: exact search is milliseconds), a vacuum as soon as a
        # segment holds one deleted point, no write-ahead log (it would keep deleted payloads).
        optimizers = q.EdgeOptimizersConfig(deleted_threshold=0.0, vacuum_min_vector_number=0, indexing_threshold=0)
        return q.EdgeConfig(vectors={VECTOR: q.EdgeVectorParams(size=dimensions, distance=q.Distance.Cosine)},
                            wal_enabled=False, optimizers=optimizers)

    @contextlib.contextmanager
    def shard(self, shard: int, dimensions: int | None = None) -> Iterator[object | None]:
        """The shard's Edge store, open for the duration (created when ``dimensions`` is given); None when
        it does not exist and is not to be created."""
        q = _edge()
        if shard in self._open:  # inside a session
            yield self._open[shard]
            return
        path = self._path(shard)
        # Even loading a shard maps its files: on a full disk that is a SIGBUS, not an error. Check first.
        ensure_room(path if path.exists() else self.root, "vector store")
        if (path / "edge_config.json").exists():
            store = q.EdgeShard.load(str(path))
        elif dimensions is None:
            yield None
            return
        else:
            store = q.EdgeShard.create(str(path), self._config(dimensions))
            for field in ("subject_key", "group"):
                store.update(q.UpdateOperation.create_field_index(field, q.PayloadSchemaType.Keyword))
        try:
            yield store
        finally:
            store.close()

    @staticmethod
    def _filter(field: str, values: list[str]):
        q = _edge()
        match = q.MatchValue(value=values[0]) if len(values) == 1 else q.MatchAny(any=values)
        return q.Filter(must=[q.FieldCondition(key=field, match=match)])

    @staticmethod
    def _scroll_ids(store, flt=None) -> set[str]:
        q = _edge()
        ids: set[str] = set()
        offset = None
        while True:
            records, offset = store.scroll(q.ScrollRequest(limit=4096, offset=offset, filter=flt, with_payload=False, with_vector=False))
            ids.update(str(r.id) for r in records)
            if offset is None:
                return ids

    def payloads(self, shard: int) -> list[dict]:
        """Every point's payload in the shard (as stored: sealed fields stay sealed)."""
        q = _edge()
        out: list[dict] = []
        with self.shard(shard) as store:
            offset = None
            while store is not None:
                records, offset = store.scroll(q.ScrollRequest(limit=4096, offset=offset, with_payload=True, with_vector=False))
                out += [dict(r.payload or {}) for r in records]
                if offset is None:
                    break
        return out

    def group_ids(self, shard: int, group: str | None = None) -> set[str]:
        with self.shard(shard) as store:
            return set() if store is None else self._scroll_ids(store, self._filter("group", [group]) if group else None)

    def point_ids(self, shard: int) -> set[str]:
        return self.group_ids(shard)

    def _vacuum(self, store) -> None:
        """Rewrite the segments that hold deleted points: their bytes leave the disk (no WAL keeps them)."""
        try:
            store.optimize()
            store.flush()
        except Exception as exc:  # Edge raises a bare Exception ("Service runtime error: Not enough space ...")
            if "space" in str(exc).lower():
                raise StorageUnavailable(f"vector store {self.root}: disk full while compacting ({str(exc)[:160]}); the points "
                                         "are deleted but their bytes are not yet gone: free space and the erasure resumes "
                                         "by itself") from None
            raise

    def apply(self, shard: int, delete: list[str], upsert: list[PointData], dimensions: int) -> None:
        q = _edge()
        if not delete and not upsert:
            return
        with self.shard(shard, dimensions) as store:
            if delete:
                store.update(q.UpdateOperation.delete_points(list(delete)))
            for start in range(0, len(upsert), 1024):
                store.update(q.UpdateOperation.upsert_points([
                    q.Point(id=p.id, vector={VECTOR: p.vector.tolist()}, payload=p.payload) for p in upsert[start : start + 1024]]))
            store.flush()
            if delete:
                self._vacuum(store)

    def count_subjects(self, shard: int, keys: list[str]) -> int:
        if not keys:
            return 0
        q = _edge()
        with self.shard(shard) as store:
            return 0 if store is None else store.count(q.CountRequest(filter=self._filter("subject_key", list(keys)), exact=True))

    def delete_subjects(self, shard: int, keys: list[str]) -> tuple[int, int]:
        """Delete every point of these subjects by ``subject_key`` filter, then vacuum; (deleted, left).

        The vacuum runs even when no point is left to delete: a delete that succeeded before a vacuum that did
        not (a full disk) leaves the subject's bytes in a segment file while the count says 0 ("deleted, not
        yet gone"); this is the retry that makes them gone, and the proof's byte scan says whether it did."""
        if not keys:
            return 0, 0
        q = _edge()
        flt = self._filter("subject_key", list(keys))
        with self.shard(shard) as store:
            if store is None:
                return 0, 0
            before = store.count(q.CountRequest(filter=flt, exact=True))
            if before:
                store.update(q.UpdateOperation.delete_points_by_filter(flt))
                store.flush()
            self._vacuum(store)
            return before, store.count(q.CountRequest(filter=flt, exact=True))

    def search(self, vector: np.ndarray, shards: list[int], limit: int = 5) -> list[tuple[float, dict]]:
        q = _edge()
        hits: list[tuple[float, dict]] = []
        for shard in shards:
            with self.shard(shard) as store:
                if store is None:
                    continue
                res = store.query(q.QueryRequest(limit=limit, query=q.Query.Nearest(vector.tolist(), using=VECTOR), with_payload=True))
                hits += [(p.score, dict(p.payload or {})) for p in res]
        hits.sort(key=lambda h: -h[0])
        return hits[:limit]

"""The vector store: chunks of the declared text columns in Qdrant, one shard at a time.

Layout. In embedded (local) mode every shard has its own storage path with one collection
(``COLLECTION``, still named ``tickets`` from the demo's first shape: renaming it would orphan the
points of existing stores outside every erasure): local mode allows one client per path, keeps every point in memory, warns above
20 000 points per collection and persists with one SQLite transaction per point, so per-shard
paths keep collections small and let shard steps run in separate processes. Against a server
(``url``) all shards share one collection whose ``shard`` payload field is indexed, and every
operation is filtered by it (see docs/ARCHITECTURE.md for why not custom sharding). The shared
layout also runs in local mode (``shared=True``, one path) so the server's code path is tested
here, where no Qdrant server can be installed.

Point ids are ``uuid5`` of (dataset, column, record id, chunk index, chunk text hash): content-addressed, so
rebuilding a shard is a sync (delete what is gone, upsert what is new) and a shard's content
hash is the hash of its sorted ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

COLLECTION = "tickets"
_BATCH = 256


@dataclass(frozen=True)
class SyncResult:
    added: int
    removed: int
    points: int
    content_hash: str


@dataclass
class VectorStore:
    """Qdrant, embedded under ``root`` (default) or a server at ``url``."""

    root: Path | None = None
    url: str | None = None
    api_key: str | None = None
    collection: str = COLLECTION
    shared: bool | None = None  # one collection for every shard; default: with a server, not locally

    @property
    def is_local(self) -> bool:
        return self.url is None

    @property
    def shared_collection(self) -> bool:
        return (not self.is_local) if self.shared is None else self.shared

    def _local_path(self, shard: int) -> Path:
        assert self.root is not None
        return self.root / ("shared" if self.shared_collection else f"shard_{shard:02d}")

    @contextlib.contextmanager
    def client(self, shard: int) -> Iterator[QdrantClient]:
        client = (
            QdrantClient(path=str(self._local_path(shard)))
            if self.is_local
            else QdrantClient(url=self.url, api_key=self.api_key)
        )
        try:
            yield client
        finally:
            client.close()

    def _shard_filter(self, shard: int, *conditions: models.Condition) -> models.Filter | None:
        must = list(conditions)
        if self.shared_collection:
            must.append(models.FieldCondition(key="shard", match=models.MatchValue(value=shard)))
        return models.Filter(must=must) if must else None

    def _ensure(self, client: QdrantClient, dimensions: int) -> None:
        if client.collection_exists(self.collection):
            return
        client.create_collection(
            self.collection, vectors_config=models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
        )
        # Local mode ignores payload indexes; a server needs them for fast filtered deletes.
        if not self.is_local:
            for field, schema in (("subject_key", models.PayloadSchemaType.KEYWORD), ("shard", models.PayloadSchemaType.INTEGER)):
                client.create_payload_index(self.collection, field_name=field, field_schema=schema)

    def _ids(self, client: QdrantClient, shard: int) -> set[str]:
        if not client.collection_exists(self.collection):
            return set()
        ids: set[str] = set()
        offset = None
        while True:
            points, offset = client.scroll(
                self.collection, scroll_filter=self._shard_filter(shard), limit=2048, offset=offset,
                with_payload=False, with_vectors=False,
            )
            ids.update(str(p.id) for p in points)
            if offset is None:
                return ids

    @staticmethod
    def hash_ids(ids: set[str] | list[str]) -> str:
        return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()

    def sync(self, shard: int, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> SyncResult:
        """Make the shard hold exactly these points: delete the others, upsert the missing."""
        dimensions = vectors.shape[1]
        with self.client(shard) as client:
            self._ensure(client, dimensions)
            existing = self._ids(client, shard)
            wanted = set(ids)
            stale = sorted(existing - wanted)
            for i in range(0, len(stale), _BATCH):
                client.delete(self.collection, points_selector=models.PointIdsList(points=stale[i : i + _BATCH]), wait=True)
            new = [i for i, pid in enumerate(ids) if pid not in existing]
            for start in range(0, len(new), _BATCH):
                batch = new[start : start + _BATCH]
                client.upsert(
                    self.collection,
                    points=[models.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i]) for i in batch],
                    wait=True,
                )
            total = len(self._ids(client, shard))
        if stale and self.is_local:
            self.compact(shard)
        return SyncResult(added=len(new), removed=len(stale), points=total, content_hash=self.hash_ids(wanted))

    def count_subjects(self, shard: int, keys: list[str]) -> int:
        if not keys:
            return 0
        with self.client(shard) as client:
            if not client.collection_exists(self.collection):
                return 0
            cond = models.FieldCondition(key="subject_key", match=models.MatchAny(any=list(keys)))
            return client.count(self.collection, count_filter=self._shard_filter(shard, cond), exact=True).count

    def delete_subjects(self, shard: int, keys: list[str]) -> tuple[int, int]:
        """Delete every point of these subjects by ``subject_key`` filter; returns (deleted, left)."""
        if not keys:
            return 0, 0
        cond = models.FieldCondition(key="subject_key", match=models.MatchAny(any=list(keys)))
        with self.client(shard) as client:
            if not client.collection_exists(self.collection):
                return 0, 0
            flt = self._shard_filter(shard, cond)
            before = client.count(self.collection, count_filter=flt, exact=True).count
            if before:
                client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)
            left = client.count(self.collection, count_filter=flt, exact=True).count
        if before and self.is_local:
            self.compact(shard)
        return before, left

    def compact(self, shard: int) -> None:
        """Local mode keeps payloads pickled in SQLite; deleted rows stay in free pages until VACUUM."""
        path = self._local_path(shard) / "collection" / self.collection / "storage.sqlite"
        if path.exists():
            conn = sqlite3.connect(str(path))
            try:
                conn.execute("VACUUM")
            finally:
                conn.close()

    def point_ids(self, shard: int) -> set[str]:
        with self.client(shard) as client:
            return self._ids(client, shard)

    def search(self, vector: np.ndarray, shards: list[int], limit: int = 5) -> list[tuple[float, dict]]:
        hits: list[tuple[float, dict]] = []
        for shard in shards:
            if self.is_local and not self._local_path(shard).exists():
                continue
            with self.client(shard) as client:
                if not client.collection_exists(self.collection):
                    continue
                res = client.query_points(
                    self.collection, query=vector.tolist(), query_filter=self._shard_filter(shard), limit=limit, with_payload=True
                )
                hits += [(p.score, dict(p.payload or {})) for p in res.points]
        hits.sort(key=lambda h: -h[0])
        return hits[:limit]

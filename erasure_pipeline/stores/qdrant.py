"""Qdrant through qdrant-client: a server (``url``), or qdrant-client's local mode (``root``) where the
server's code path is tested (no server runs here). See ``stores.vectors`` for the interface."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from erasure_pipeline.stores.vectors import _BATCH, COLLECTION, PointData, keys_in_files


@dataclass
class ClientStore:
    """Qdrant through qdrant-client: a server at ``url``, or local mode under ``root`` (the tests of that path)."""

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
            for field, schema in (("subject_key", models.PayloadSchemaType.KEYWORD), ("shard", models.PayloadSchemaType.INTEGER),
                                  ("group", models.PayloadSchemaType.KEYWORD)):
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

    def describe(self) -> str:
        return f"qdrant {self.url}" if self.url else f"qdrant local mode {self.root}"

    @contextlib.contextmanager
    def session(self, shard: int, dimensions: int | None = None) -> Iterator[None]:
        yield  # a client per call: nothing to keep open

    def payloads(self, shard: int) -> list[dict]:
        """Every point's payload in the shard (as stored: sealed fields stay sealed)."""
        out: list[dict] = []
        with self.client(shard) as client:
            if not client.collection_exists(self.collection):
                return out
            offset = None
            while True:
                points, offset = client.scroll(self.collection, scroll_filter=self._shard_filter(shard), limit=2048, offset=offset,
                                               with_payload=True, with_vectors=False)
                out += [dict(p.payload or {}) for p in points]
                if offset is None:
                    return out

    def group_ids(self, shard: int, group: str | None = None) -> set[str]:
        with self.client(shard) as client:
            if group is None:
                return self._ids(client, shard)
            if not client.collection_exists(self.collection):
                return set()
            flt = self._shard_filter(shard, models.FieldCondition(key="group", match=models.MatchValue(value=group)))
            ids: set[str] = set()
            offset = None
            while True:
                points, offset = client.scroll(self.collection, scroll_filter=flt, limit=2048, offset=offset,
                                               with_payload=False, with_vectors=False)
                ids.update(str(p.id) for p in points)
                if offset is None:
                    return ids

    def apply(self, shard: int, delete: list[str], upsert: list[PointData], dimensions: int) -> None:
        """Delete these points, upsert those (local mode is VACUUMed after a delete)."""
        if not delete and not upsert:
            return
        with self.client(shard) as client:
            self._ensure(client, dimensions)
            for i in range(0, len(delete), _BATCH):
                client.delete(self.collection, points_selector=models.PointIdsList(points=delete[i : i + _BATCH]), wait=True)
            for start in range(0, len(upsert), _BATCH):
                client.upsert(self.collection, wait=True, points=[
                    models.PointStruct(id=p.id, vector=p.vector.tolist(), payload=p.payload) for p in upsert[start : start + _BATCH]])
        if delete and self.is_local:
            self.compact(shard)

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
        if self.is_local:  # also when nothing was left to delete: a compaction an earlier attempt could not finish
            self.compact(shard)
        return before, left

    def stored_keys(self, shard: int, wanted: Collection[str] | None = None) -> set[str] | None:
        """Local mode: the keys (of ``wanted``) whose bytes are in its files. A server's disk is not ours to scan (None)."""
        return keys_in_files(self._local_path(shard), wanted) if self.is_local else None

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



"""The floor of each operation: the work no implementation can skip on this machine, timed on the same data.

- **rebuild**: read every landing file once and write the same rows as Parquet once (pyarrow, nothing
  else: no validation, no keyed hash, no sharding), plus one fit of each shard's estimator on that shard's
  training rows as the pipeline built them;
- **erasure of some subjects**: rewrite, without them, the lake files that hold them (their raw buckets and
  their shards' training sets: read, filter with pyarrow compute, write), plus one refit of each touched
  shard's estimator, plus the merges (read every shard model and write the ensemble; read every cohort
  partial and write the union).

The rebuild's read and write of landing is timed before the build (an ingest may remove the landing files
it took); everything else after the pipeline built the lake, so the floors read what the pipeline wrote.
Each writes into a scratch directory of its own, never into the project's stores.
"""

from __future__ import annotations

import io
import pickle
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from erasure_pipeline.core import identity
from erasure_pipeline.kinds.training import node_name
from erasure_pipeline.ml.shard_training import train_shard_model
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk


@dataclass
class Floor:
    read_write: float = 0.0
    """Reading and writing the data once (landing -> Parquet, or the files that hold the subjects)."""
    fits: float = 0.0
    """One fit of each shard estimator involved."""
    merges: float = 0.0

    @property
    def total(self) -> float:
        return self.read_write + self.fits + self.merges


def _landing_table(data: bytes, name: str) -> pa.Table:
    if name.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data))
    return pcsv.read_csv(io.BytesIO(data))


def _fit_seconds(env, partitions: Iterable[str]) -> float:
    """One fit of each declared model's estimator on each partition's training rows (the read not counted)."""

    seconds = 0.0
    for p in partitions:
        for model in env.policy.models:
            rows = lk.read_table(env.lake, node_name(model), p)
            if rows is None or rows.empty:
                continue
            t0 = time.perf_counter()
            train_shard_model(env.policy, model, rows, identity.shard_from_partition(p))
            seconds += time.perf_counter() - t0
    return seconds


def landing_read_write(landing) -> float:
    """Seconds to read every landing file once and write its rows as Parquet once. Timed before the build:
    a declaration with ``landing.keep_days: 0`` (the demo's) has the ingest remove the files it took."""
    with tempfile.TemporaryDirectory() as scratch:
        t0 = time.perf_counter()
        for i, name in enumerate(sorted(landing.list())):
            table = _landing_table(landing.read_bytes(name), name)
            pq.write_table(table, Path(scratch) / f"{i}.parquet")
        return time.perf_counter() - t0


def rebuild_floor(env, read_write: float) -> Floor:
    """``read_write``: ``landing_read_write`` of the landing files the build read."""
    return Floor(read_write=read_write, fits=_fit_seconds(env, env.graph.partitions))


def _holding(env, keys: list[str]) -> dict[str, list[str]]:
    """Lake object -> the subject keys it holds rows of: each subject's raw buckets and shard training set."""

    out: dict[str, list[str]] = {}
    for key in keys:
        p = identity.partition_key(identity.shard_of(key, env.policy.shards))
        for node in env.graph.raw_nodes:
            manifest = bk.read_manifest(env.lake, node.name, p)
            if manifest is not None:
                b = manifest.bucket_of(key, bk.bucket_of(key, env.policy.lake.buckets))
                out.setdefault(bk.object_name(node.name, p, b), []).append(key)
        for model in env.policy.models:
            out.setdefault(lk.table_name(node_name(model), p), []).append(key)
    return out


def erasure_floor(env, keys: list[str]) -> Floor:

    out = Floor()
    with tempfile.TemporaryDirectory() as scratch:
        t0 = time.perf_counter()
        for i, (name, held) in enumerate(sorted(_holding(env, keys).items())):
            data = env.lake.read_bytes(name)
            if data is None:
                continue
            table = pq.read_table(io.BytesIO(data))
            if "subject_key" in table.column_names:
                table = table.filter(pc.invert(pc.is_in(table["subject_key"], value_set=pa.array(held))))
            pq.write_table(table, Path(scratch) / f"{i}.parquet")
        out.read_write = time.perf_counter() - t0
        out.fits = _fit_seconds(env, sorted({identity.partition_key(identity.shard_of(k, env.policy.shards)) for k in keys}))
        t0 = time.perf_counter()
        for node in env.graph.merge_nodes:
            parents = [env.graph.node(p) for p in node.parents if env.graph.node(p).partitioned]
            blobs = [env.lake.read_bytes(env.kind_of(p.name).object_name(p, part)) for p in parents for part in env.graph.partitions]
            blobs = [b for b in blobs if b is not None]
            if any(b[:4] == b"PAR1" for b in blobs):
                merged = pa.concat_tables([pq.read_table(io.BytesIO(b)) for b in blobs if b[:4] == b"PAR1"], promote_options="default")
                pq.write_table(merged, Path(scratch) / f"{node.name}.parquet")
            else:
                (Path(scratch) / f"{node.name}.pkl").write_bytes(pickle.dumps([lk.loads_model(b) for b in blobs]))
        out.merges = time.perf_counter() - t0
    return out

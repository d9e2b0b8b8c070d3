"""Which landing files hold a subject (their rows, or their id inside a text), without reading landing.

Written by the one-pass staging of an ingest (``landing.stage``), one small object per batch, shard
and bucket of the *indexed* subject::

    _landing_index/<batch>/shard_03/b_007.npz   key prefixes (uint64), file numbers, kind (rows | mention)
    _landing_batches/<batch>.json               the batch's landing files, by number, and its layout (S, buckets)

So an erasure reads, per batch, the one object of the subject's bucket and rewrites only the landing
files it names; files no batch has indexed yet are read in full. No Dagster import.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from erasure_pipeline.core.identity import hex_digits
from erasure_pipeline.stores.buckets import bucket_of, buckets_of
from erasure_pipeline.stores.lake import Lake

ROOT = "_landing_index"
BATCHES = "_landing_batches"
ROWS, MENTION = 0, 1


def prefix(key: str) -> int:
    return int(key[:16], 16)


def _name(batch: str, shard: int, bucket: int) -> str:
    return f"{ROOT}/{batch}/shard_{shard:02d}/b_{bucket:03d}.npz"


@dataclass(frozen=True)
class Batch:
    """One indexed batch: its landing files by number and the layout its index was written with (a
    later change of shards or lake.buckets does not move a subject's entries)."""

    files: list[str]
    shards: int | None = None
    buckets: int | None = None

    def object_of(self, name: str, key: str, shards: int, buckets: int) -> str:
        s, b = self.shards or shards, self.buckets or buckets
        return _name(name, int(key[:8], 16) % s, bucket_of(key, b))


@dataclass
class IndexBuilder:
    """Entries of one batch, gathered file by file, written once at the end."""

    batch: str
    shards: int
    buckets: int

    def __post_init__(self) -> None:
        self.files: list[str] = []
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, file: str, keys: Iterable[str], kind: int) -> None:
        """Entries (key, file, kind) for each distinct key in ``keys``."""
        if file not in self.files:
            self.files.append(file)
        # Distinct in Arrow, read by hex_digits from Arrow's buffers: as Python strings (pd.unique of an object Series)
        # this took 2.1 s of a 200 000-subject build's claim, on the thread that folds the staged files in.
        distinct = pc.unique(keys if isinstance(keys, pa.Array | pa.ChunkedArray) else pa.array(
            keys.array if isinstance(keys, pd.Series) else list(keys), type=pa.string()))
        if not len(distinct):
            return
        number = self.files.index(file)
        self.parts.append((
            hex_digits(distinct, 0, 16), np.full(len(distinct), number, dtype=np.uint32), np.full(len(distinct), kind, dtype=np.uint8),
            (hex_digits(distinct, 0, 8) % np.uint64(self.shards)).astype(np.int32), buckets_of(distinct, self.buckets).astype(np.int32),
        ))

    def write(self, lake: Lake) -> int:
        """Write the batch's objects; returns how many entries."""
        lake.write_bytes(f"{BATCHES}/{self.batch}.json",
                         json.dumps({"files": self.files, "shards": self.shards, "buckets": self.buckets}).encode())
        if not self.parts:
            return 0
        keys, files, kinds, shards, buckets = (np.concatenate(a) for a in zip(*self.parts, strict=True))
        group = shards.astype(np.int64) * 4096 + buckets
        order = np.lexsort((files, keys, group))
        keys, files, kinds, group = keys[order], files[order], kinds[order], group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(group)], strict=True):
            g = int(group[s])
            lake.write_bytes(_name(self.batch, g // 4096, g % 4096), _pack(keys[s:e], files[s:e], kinds[s:e]))
        return len(keys)


def _pack(keys: np.ndarray, files: np.ndarray, kinds: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, keys=keys, files=files, kinds=kinds)
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data)) as z:
        return z["keys"], z["files"], z["kinds"]


def batches(lake: Lake) -> dict[str, Batch]:
    """Every batch that wrote an index, with its landing files by number and its layout."""
    out = {}
    for n in lake.list(f"{BATCHES}/"):
        if n.endswith(".json"):
            doc = json.loads(lake.read_bytes(n) or b"[]")
            out[n.removeprefix(f"{BATCHES}/").removesuffix(".json")] = \
                Batch(doc) if isinstance(doc, list) else Batch(doc["files"], doc.get("shards"), doc.get("buckets"))
    return out


def indexed_files(lake: Lake, known: dict[str, Batch] | None = None) -> set[str]:
    return {f for b in (known if known is not None else batches(lake)).values() for f in b.files}


def files_holding(lake: Lake, keys: Iterable[str], shards: int, buckets: int,
                  known: dict[str, Batch] | None = None) -> dict[str, set[str]]:
    """Landing file -> the given keys it holds (rows, or an id in a text), from every batch's index
    (``shards``/``buckets``: the layout of batches that did not record theirs)."""
    out: dict[str, set[str]] = {}
    wanted = list(dict.fromkeys(keys))
    for batch, info in (known if known is not None else batches(lake)).items():
        names = info.files
        for key in wanted:
            data = lake.read_bytes(info.object_of(batch, key, shards, buckets))
            if data is None:
                continue
            ks, fs, _kinds = _unpack(data)
            lo, hi = np.searchsorted(ks, prefix(key), "left"), np.searchsorted(ks, prefix(key), "right")
            for f in fs[lo:hi]:
                out.setdefault(names[int(f)], set()).add(key)
    return out


def forget(lake: Lake, keys: Iterable[str], files: set[str], shards: int, buckets: int,
           known: dict[str, Batch] | None = None) -> None:
    """Drop the entries of ``keys`` in ``files`` (after those files were rewritten without them)."""
    for batch, info in (known if known is not None else batches(lake)).items():
        numbers = np.array([i for i, n in enumerate(info.files) if n in files], dtype=np.uint32)
        if not len(numbers):
            continue
        for key in dict.fromkeys(keys):
            name = info.object_of(batch, key, shards, buckets)
            data = lake.read_bytes(name)
            if data is None:
                continue
            ks, fs, kinds = _unpack(data)
            drop = (ks == np.uint64(prefix(key))) & np.isin(fs, numbers)
            if drop.any():
                lake.write_bytes(name, _pack(ks[~drop], fs[~drop], kinds[~drop]))
                lake.purge_noncurrent(name)


def delete_batch(lake: Lake, batch: str) -> None:
    for name in [*lake.list(f"{ROOT}/{batch}/"), f"{BATCHES}/{batch}.json"]:
        lake.delete(name)
        lake.purge_noncurrent(name)

"""Bucketed partitions: a shard partition of a subject-level table as a few files, so an erasure
rewrites only the files that hold the subject. No Dagster import.

Layout of one partition (``raw_events`` shard 3, 32 buckets)::

    raw_events/shard_03/b_007.parquet     rows of the subjects whose key falls in bucket 7
    raw_events/shard_03/manifest.json     every bucket's content hash, rows, oldest timestamp, mentions

A subject's bucket is a function of its key (``bucket_of``), like its shard, so the file that holds
them is known without reading anything. The manifest is written after the bucket files and is what
a reader trusts: the partition's data version is the hash of its buckets' hashes, and a bucket file
that is not in the manifest (left by a crash) is not part of the partition. Each bucket file is
deterministic Parquet (``lake.table_to_bytes``), rows sorted by the table's id column.

The manifest also lists, per bucket, the keyed hashes (16-hex prefixes) of the e-mail-like ids its
text columns mention, so the erasure of a subject named in someone else's text finds the file to
redact without scanning every text.

Measured against Delta Lake (``deltalake`` 1.6.6) before choosing this (docs/ARCHITECTURE.md): both
rewrite one small file per erasure; Delta's transaction log keeps per-file min/max statistics of every
column, the raw id column included, so an erased id can live on in ``_delta_log`` after ``vacuum``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from erasure_pipeline.core.crypto import KeySource, Sealing
from erasure_pipeline.core.errors import DamagedObject
from erasure_pipeline.core.identity import hex_digits
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.lake import Lake

MANIFEST = "manifest.json"
PREFIX_CHARS = 16
BUCKET_FILE = re.compile(r"b_\d{3}\.parquet")


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a subject key within its shard (key digits independent of the shard's)."""
    return int(key[16:24], 16) % buckets


def buckets_of(keys: pd.Series | Iterable[str], buckets: int) -> np.ndarray:
    return (hex_digits(keys, 16, 24) % np.uint64(buckets)).astype(np.int64)


def split_by_bucket(frame: pd.DataFrame, in_bucket: np.ndarray, wanted: Iterable[int]) -> dict[int, pd.DataFrame]:
    """``frame``'s rows of each ``wanted`` bucket (``in_bucket``: each row's), in the frame's order (empty: none).
    One take groups the rows by bucket, then each bucket is a slice: a take per bucket cost 0.96 s of a 200 000-subject
    build in pyarrow's per-call overhead."""
    order = np.argsort(in_bucket, kind="stable")
    grouped = frame.take(order).reset_index(drop=True) if len(frame) else frame
    ordered = in_bucket[order]
    out = {}
    for b in wanted:
        lo, hi = np.searchsorted(ordered, [b, b + 1])
        out[b] = grouped.iloc[lo:hi].reset_index(drop=True)
    return out


def bucket_name(bucket: int) -> str:
    return f"b_{bucket:03d}"


def object_name(asset: str, partition: str, bucket: int) -> str:
    return f"{asset}/{partition}/{bucket_name(bucket)}.parquet"


def manifest_name(asset: str, partition: str) -> str:
    return f"{asset}/{partition}/{MANIFEST}"


@dataclass(frozen=True)
class BucketInfo:
    hash: str
    rows: int
    subjects: int = 0
    oldest: str | None = None
    """ISO timestamp of the oldest row (tables with a timestamp), for retention."""
    mentions: tuple[str, ...] = ()
    """Sorted key prefixes of the ids the bucket's text columns mention."""


@dataclass(frozen=True)
class Manifest:
    buckets: Mapping[int, BucketInfo] = field(default_factory=dict)
    of: int = 0
    """The bucket count the partition was laid out with (0: not recorded)."""

    @property
    def version(self) -> str:
        """The partition's data version: a hash of its buckets' names and content hashes."""
        blob = json.dumps({bucket_name(b): i.hash for b, i in sorted(self.buckets.items())}, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def rows(self) -> int:
        return sum(i.rows for i in self.buckets.values())

    @property
    def subjects(self) -> int:
        return sum(i.subjects for i in self.buckets.values())

    @property
    def oldest(self) -> str | None:
        stamps = [i.oldest for i in self.buckets.values() if i.oldest]
        return min(stamps) if stamps else None

    def bucket_of(self, key: str, default: int) -> int:
        """The bucket that holds ``key`` in this layout (``default``: the policy's count, if not recorded)."""
        return bucket_of(key, self.of or default)

    def mentioning(self, key: str) -> list[int]:
        """Buckets whose text mentions ``key``."""
        prefix = key[:PREFIX_CHARS]
        return [b for b, i in sorted(self.buckets.items()) if prefix in i.mentions]

    def to_bytes(self) -> bytes:
        body = {bucket_name(b): {"hash": i.hash, "rows": i.rows, "subjects": i.subjects, "oldest": i.oldest, "mentions": list(i.mentions)}
                for b, i in sorted(self.buckets.items())}
        return json.dumps({"buckets": body, "of": self.of}, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        return cls({int(name[2:]): BucketInfo(v["hash"], int(v["rows"]), int(v.get("subjects", 0)), v.get("oldest"),
                                              tuple(v.get("mentions") or ()))
                    for name, v in doc["buckets"].items()}, int(doc.get("of", 0)))


def read_manifest(store: Lake, asset: str, partition: str) -> Manifest | None:
    data = store.read_bytes(manifest_name(asset, partition))
    if data is None:
        return None
    try:
        return Manifest.from_bytes(data)
    except (ValueError, KeyError, TypeError):
        raise DamagedObject(f"{manifest_name(asset, partition)}: cannot be read as a manifest (damaged)") from None


def read_buckets(store: Lake, asset: str, partition: str, buckets: Iterable[int] | None = None,
                 manifest: Manifest | None = None, columns: list[str] | None = None, *, cache: bool = False,
                 keys: KeySource | None = None, only: Collection[str] | None = None, carry: Collection[str] = ()) -> pd.DataFrame | None:
    """The rows of a partition's buckets (all in the manifest when ``buckets`` is None), in bucket order.
    None when the partition was never written. ``cache``: keep and reuse it in this process, by manifest
    version (for computations reading one partition several times; never for proofs, which read what is
    stored now). Sealed personal fields are opened with ``keys`` (in memory only); ``attrs["unreadable"]``
    counts, by subject key, the cells that did not open because the subject's key is destroyed. ``only``: the
    sealed columns to open (the others are left out of the frame: a reader that does not need them). ``carry``:
    sealed columns left in it sealed (``attrs["carried"]`` names them) when every bucket stores them alike."""
    manifest = manifest or read_manifest(store, asset, partition)
    if manifest is None:
        return None
    wanted = sorted(manifest.buckets if buckets is None else set(buckets) & set(manifest.buckets))
    key = (store.describe(), asset, partition, manifest.version, tuple(wanted), tuple(columns or ()),
           None if only is None else tuple(sorted(only)), tuple(sorted(carry)))
    if cache and key in _RECENT:
        return _RECENT[key].copy()
    tables, carried = [], []
    unreadable: dict[str, int] = {}
    for b in wanted:
        name = object_name(asset, partition, b)
        opened = lk.read_parquet(listed_bytes(store, name), columns, name, keys, only, carry)
        tables.append(opened.table)
        carried.append(opened.carried)
        for k, n in opened.unreadable.items():
            unreadable[k] = unreadable.get(k, 0) + n
    if any(c != carried[0] for c in carried):  # buckets written under different declarations: open them all
        return read_buckets(store, asset, partition, wanted, manifest, columns, keys=keys, only=only)
    if not tables:
        return pd.DataFrame(columns=columns) if columns else pd.DataFrame({"subject_key": pd.Series(dtype=str)})
    # One conversion to pandas for all buckets: most of a small file's read is that conversion. Buckets
    # written from different landing files may type a column differently (bool here, 0/1 there): then
    # pandas combines them as it would have combined the rows in one file.
    try:
        df = pa.concat_tables(tables, promote_options="permissive").to_pandas() if len(tables) > 1 else tables[0].to_pandas()
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    df.attrs["unreadable"] = unreadable
    df.attrs["carried"] = carried[0]
    if cache and len(df) <= 500_000 and not unreadable:
        _remember(key, df)
    return df


def read_stored(store: Lake, asset: str, partition: str, buckets: Iterable[int], manifest: Manifest) -> dict[int, pa.Table]:
    """The given buckets as stored, sealed cells left sealed (for a rewrite that only removes rows)."""
    out = {}
    for b in sorted(set(buckets) & set(manifest.buckets)):
        name = object_name(asset, partition, b)
        data = listed_bytes(store, name)
        try:
            out[b] = pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError, ValueError):
            raise DamagedObject(f"{name}: cannot be read as Parquet (damaged or not what was written)") from None
    return out


def listed_bytes(store: Lake, name: str) -> bytes:
    """A bucket file the manifest lists: its bytes, or ``DamagedObject`` when it is not in the lake."""
    data = store.read_bytes(name)
    if data is None:
        raise DamagedObject(f"{name}: listed in its partition's manifest, but not in the lake")
    return data


_RECENT: dict[tuple, pd.DataFrame] = {}


def _remember(key: tuple, df: pd.DataFrame) -> None:
    """Keep the last few partitions read (content is fixed by the manifest's version in the key): the
    training sets of several models read the same raw partitions in one step."""
    if len(_RECENT) >= 6:
        _RECENT.pop(next(iter(_RECENT)))
    _RECENT[key] = df.copy()


def write_buckets(store: Lake, asset: str, partition: str, frames: Mapping[int, pd.DataFrame | pa.Table], previous: Manifest | None,
                  *, of: int, timestamp: str | None = None, mentions: Mapping[int, Iterable[str]] | None = None,
                  replace_all: bool = False, sealing: Sealing | None = None) -> tuple[Manifest, list[int]]:
    """Write the given buckets (an empty frame deletes the bucket), then the manifest, for a layout of
    ``of`` buckets.

    A bucket whose bytes are what is stored already is not rewritten (no new object version).
    ``replace_all``: buckets not in ``frames`` are deleted (a rebuild). ``sealing``: the personal columns
    are written sealed per subject. An Arrow table (``read_stored``, rows removed) is written as it is, its
    sealed cells as they were stored. Returns the new manifest and the buckets whose content changed.
    """
    current = dict(previous.buckets) if previous is not None else {}
    changed = []
    if replace_all:
        for b in set(current) - set(frames):
            store.delete(object_name(asset, partition, b))
            current.pop(b)
            changed.append(b)
    for b, df in sorted(frames.items()):
        if len(df) == 0:
            if b in current:
                store.delete(object_name(asset, partition, b))
                current.pop(b)
                changed.append(b)
            continue
        if isinstance(df, pa.Table):
            data, keys = lk.arrow_to_bytes(df), df.column("subject_key")
            stamps = df.column(timestamp).to_pandas() if timestamp and timestamp in df.column_names else None
        else:
            data, keys = lk.table_to_bytes(df, sealing=sealing), df["subject_key"]
            stamps = df[timestamp] if timestamp and timestamp in df else None
        digest = lk.content_hash(data)
        oldest = pd.to_datetime(stamps, utc=True).min().isoformat() if stamps is not None else None
        subjects = pc.count_distinct(keys).as_py() if isinstance(keys, pa.ChunkedArray) else int(keys.nunique())
        info = BucketInfo(digest, len(df), subjects, oldest, tuple(sorted(set((mentions or {}).get(b, ())))))
        if current.get(b) == info:
            continue
        if b not in current or current[b].hash != digest:
            store.write_bytes(object_name(asset, partition, b), data)
            changed.append(b)
        current[b] = info
    manifest = Manifest(current, of)
    if previous is None or manifest.to_bytes() != previous.to_bytes():
        store.write_bytes(manifest_name(asset, partition), manifest.to_bytes())
    return manifest, sorted(changed)


def stored_version(store: Lake, asset: str, partition: str) -> str | None:
    """The partition's version as stored: every bucket file's bytes hashed and checked against the
    manifest (a file edited or swapped in place shows as a different version). None: never written."""
    manifest = read_manifest(store, asset, partition)
    if manifest is None:
        return None
    actual = {}
    for b in manifest.buckets:
        data = store.read_bytes(object_name(asset, partition, b))
        actual[b] = BucketInfo(lk.content_hash(data) if data is not None else "missing", 0)  # version reads hashes only
    return Manifest(actual).version


def unlisted(store: Lake, asset: str, partition: str, manifest: Manifest | None = None) -> list[str]:
    """Bucket files stored in the partition that its manifest does not list: left by a crash between a bucket
    write and its manifest, or restored from a backup. They are no part of the partition (nothing reads them)
    and may hold anyone, so ``verify`` looks at them and a write of the partition removes them."""
    manifest = manifest if manifest is not None else read_manifest(store, asset, partition)
    listed = {f"{bucket_name(b)}.parquet" for b in (manifest.buckets if manifest is not None else ())}
    return [n for n in store.list(f"{asset}/{partition}/")
            if BUCKET_FILE.fullmatch(leaf := n.rsplit("/", 1)[-1]) and leaf not in listed]


def remove_unlisted(store: Lake, asset: str, partition: str, manifest: Manifest | None = None) -> list[str]:
    """Delete the partition's unlisted bucket files, and every old version of them; returns their names."""
    names = unlisted(store, asset, partition, manifest)
    for name in names:
        store.delete(name)
        store.purge_noncurrent(name)
    return names


def unlisted_holding(store: Lake, names: Iterable[str], subject_key: str) -> tuple[list[str], list[str]]:
    """(unlisted files holding rows of ``subject_key``, unlisted files that cannot be read as Parquet)."""
    holding, unreadable = [], []
    for name in names:
        data = store.read_bytes(name)
        if data is None:
            continue
        try:
            keys = pq.read_table(io.BytesIO(data), columns=["subject_key"]).column("subject_key").to_pylist()
        except (pa.ArrowException, OSError, ValueError, KeyError):
            unreadable.append(name)
            continue
        if subject_key in keys:
            holding.append(name)
    return holding, unreadable


"""An id sent again under another subject: the older rows it supersedes, wherever they are. No Dagster import.

"Later files win on id" within a shard is the raw step's upsert (staged rows of one shard, then the buckets
it rewrites). An id can also move to another subject (a corrected attribution): the new row lands in the new
subject's shard and bucket, and the old row sits under the old subject, in another bucket, often another
shard. Left there, the record would be held twice, and erasing its true subject would leave the old copy.

At claim time, after staging, each dataset's ids are resolved across the whole batch (files in batch order)
and against the raw lake (the id and subject columns of every bucket of the dataset, read at each ingest
into an existing lake): each (id, subject) pair other than the id's latest is a retraction, written to the staging area of
the old row's shard (``<table>/<partition>/retracted.parquet``: the subject key and a keyed hash of the id,
never the id). That shard's raw step then runs, rewrites the buckets of the retracted subjects and drops
those rows. Retractions are staged files like the others: an erasure scrubs them, ``verify`` reads them,
the batch's end deletes them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from erasure_pipeline.core import identity
from erasure_pipeline.core.contracts import TableContract
from erasure_pipeline.core.crypto import KeySource
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.lake import Lake

RETRACTED = "retracted.parquet"
Held = Callable[[], pa.Table | None]
"""The lake's rows of a dataset: ``id``, ``subject_key`` (strings) and ``shard`` (int64); None: no partition yet."""


def movable(contract: TableContract) -> bool:
    """Can a row of this dataset change subject? Not a lookup's, not one whose id is the subject's own id."""
    return not contract.is_lookup and not contract.id_is_subject


def retracted_name(staging: str, batch: str, table: str, shard: int) -> str:
    return f"{staging}/{batch}/{table}/{identity.partition_key(shard)}/{RETRACTED}"


def id_hashes(keyer: identity.Keyer, ids) -> list[str]:
    """A keyed hash of each id (the staging area never holds an id a declaration may seal)."""
    mac = hmac.new(keyer.pepper, b"superseded-id\x00", hashlib.sha256)
    out = []
    for i in ids:
        m = mac.copy()
        m.update(str(i).encode())
        out.append(m.hexdigest()[:32])
    return out


@dataclass(frozen=True)
class Sighting:
    """One staged file's ids, subject keys and shards, row for row (``number``: its place in the batch). Kept for
    every file of a batch until the claim resolves it, so kept compact: the keys dictionary-encoded (a file has
    each subject's key on many rows; as Python strings they were 1.7 GiB of a 1 000 000-subject build's claim)."""

    number: int
    ids: pa.Array
    keys: pa.DictionaryArray
    shards: np.ndarray

    @classmethod
    def of(cls, number: int, df: pd.DataFrame, contract: TableContract) -> Sighting:
        return cls(number, _strings(df[contract.id_column]), _strings(df["subject_key"]).dictionary_encode(),
                   df["shard"].to_numpy().astype(np.int32))


def _strings(values: pd.Series) -> pa.Array:
    """One Arrow string array (``pa.array`` gives a ChunkedArray when pandas holds Arrow strings)."""
    out = pa.array(values.astype(str), type=pa.string())
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def lake_rows(lake: Lake, asset: str, partitions: Iterable[str], id_column: str, keys: KeySource | None) -> Held:
    """``Held`` over a raw node's partitions: the id and subject key of every bucket, read as Arrow (a sealed id
    opened with ``keys``)."""
    def held() -> pa.Table | None:
        tables = []
        for p in partitions:
            manifest = bk.read_manifest(lake, asset, p)
            for b in sorted(manifest.buckets) if manifest is not None else ():
                name = bk.object_name(asset, p, b)
                t = lk.read_parquet(bk.listed_bytes(lake, name), [id_column, "subject_key"], name, keys).table
                tables.append(pa.table({"id": pc.cast(t.column(id_column), pa.string()), "subject_key": pc.cast(t.column("subject_key"), pa.string()),
                                        "shard": pa.array(np.full(t.num_rows, identity.shard_from_partition(p), dtype=np.int64))}))
        return pa.concat_tables(tables) if tables else None
    return held


def resolve(lake: Lake, staging: str, batch: str, contract: TableContract, seen: list[Sighting], keyer: identity.Keyer,
            held: Held | None) -> set[int]:
    """Write the retractions of one dataset's batch (``seen``, any order) into its shards' staging areas; returns
    those shards. ``held``: the dataset's rows in the lake (None: the lake is not the record, e.g. a rebuild)."""
    if not seen or not movable(contract):
        return set()
    seen = sorted(seen, key=lambda s: s.number)
    ids = pa.chunked_array([s.ids for s in seen], type=pa.string())  # one array only past the check (a copy of them all)
    in_lake = held() if held is not None else None
    if (in_lake is None or not in_lake.num_rows) and _all_distinct(ids):
        return set()  # no id sent twice, nothing in the lake: nothing superseded
    ids = ids.combine_chunks()
    sent = pa.table({"id": ids, "subject_key": pa.concat_arrays([s.keys.dictionary.take(s.keys.indices) for s in seen]),
                     "shard": pa.array(np.concatenate([s.shards for s in seen]).astype(np.int64))})  # in batch order
    rows = sent if in_lake is None else pa.concat_tables([sent, in_lake.select(sent.column_names).cast(sent.schema)])
    # Each row's id looked up in the batch's ids last first: the position of the id's last row, whose subject is its latest.
    last = sent.num_rows - 1
    at = pc.index_in(rows.column("id"), value_set=sent.column("id").take(pa.array(np.arange(last, -1, -1))))
    hit = pc.is_valid(at)
    rows = rows.filter(hit)
    latest = sent.column("subject_key").take(pc.subtract(last, at.filter(hit)))
    stale = rows.filter(pc.not_equal(rows.column("subject_key"), latest)).to_pandas()
    stale = stale.drop_duplicates(["id", "subject_key"])
    shards = set()
    for shard, group in stale.groupby("shard"):
        out = pd.DataFrame({"subject_key": group["subject_key"].astype(str).to_numpy(), "id_hash": id_hashes(keyer, group["id"])})
        lake.write_bytes(retracted_name(staging, batch, contract.name, int(shard)), lk.table_to_bytes(out.sort_values(["subject_key", "id_hash"])))
        shards.add(int(shard))
    return shards


def _all_distinct(ids: pa.ChunkedArray) -> bool:
    """Whether no id occurs twice. Checked a part at a time, the ids grouped by their last two bytes (equal ids
    always fall in one group): ``pc.unique`` over all 14.7 M ids of a 1 000 000-subject build held a hash table of
    all of them at once (~0.5 GiB more at the claim's peak, measured; ``unique`` is a third of ``count_distinct``'s
    time), in groups the largest group's (3.0 s against 3.3 s)."""
    if len(ids) < 1_000_000:
        return len(pc.unique(ids)) == len(ids)
    groups = pc.binary_slice(ids.cast(pa.binary()), -2).combine_chunks().dictionary_encode()
    codes = groups.indices.fill_null(0).to_numpy(zero_copy_only=False)  # a null id: in the first group, as a value
    sizes = np.bincount(codes, minlength=len(groups.dictionary))
    grouped = ids.take(pa.array(np.argsort(codes, kind="stable").astype(np.int32 if len(ids) < 2**31 else np.int64)))
    del groups, codes
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return all(len(pc.unique(grouped.slice(int(a), int(n)))) == n for a, n in zip(starts, sizes, strict=True))


def read(lake: Lake, staging: str, batch: str, table: str, shard: int) -> pd.DataFrame | None:
    """A shard's retractions of one dataset in a batch (None: none)."""
    data = lake.read_bytes(retracted_name(staging, batch, table, shard))
    return None if data is None else lk.table_from_bytes(data, name=retracted_name(staging, batch, table, shard))


def drop(frame: pd.DataFrame | None, retracted: pd.DataFrame | None, id_column: str, keyer: identity.Keyer) -> tuple[pd.DataFrame | None, int]:
    """``frame`` without the retracted rows (their subject and id hash both match); how many went."""
    if frame is None or retracted is None or frame.empty or retracted.empty:
        return frame, 0
    maybe = frame["subject_key"].isin(set(retracted["subject_key"])).to_numpy()
    if not maybe.any():
        return frame, 0
    pairs = set(zip(retracted["subject_key"], retracted["id_hash"], strict=True))
    rows = np.flatnonzero(maybe)
    keys = frame["subject_key"].to_numpy()[rows]
    gone = rows[[(k, h) in pairs for k, h in zip(keys, id_hashes(keyer, frame[id_column].to_numpy()[rows]), strict=True)]]
    if not len(gone):
        return frame, 0
    keep = np.ones(len(frame), dtype=bool)
    keep[gone] = False
    out = frame[keep].reset_index(drop=True)
    out.attrs.update(frame.attrs)
    return out, len(gone)

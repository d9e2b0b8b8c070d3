"""The lake: where partitions are written, one object per asset partition, and how objects are encoded.

One interface (``Lake``), two back-ends (``stores.lake_backends``: a local directory, the default, and an S3
bucket). Tables are Parquet (the ingest's staging area: Arrow IPC), sealed columns opened on read; models are
pickles; content hashes are SHA-256 of the stored bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import pickle
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import ipc

from erasure_pipeline.core import crypto
from erasure_pipeline.core.crypto import KeySource, Sealing
from erasure_pipeline.core.errors import DamagedObject, PipelineError


@dataclass(frozen=True)
class ObjectVersion:
    """One noncurrent version of a lake object (a versioned bucket keeps these on overwrite)."""

    version_id: str
    last_modified: dt.datetime
    delete_marker: bool = False


class Lake(Protocol):
    def read_bytes(self, name: str) -> bytes | None: ...
    def write_bytes(self, name: str, data: bytes) -> None: ...
    def delete(self, name: str) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def stamps(self, prefix: str = "") -> dict[str, str]: ...
    def purge_noncurrent(self, name: str) -> list[str]: ...
    def noncurrent_versions(self, name: str) -> list[ObjectVersion]: ...
    def read_version(self, name: str, version_id: str) -> bytes: ...
    def describe(self) -> str: ...
    def locate(self, name: str) -> str: ...


def table_name(asset: str, partition: str) -> str:
    return f"{asset}/{partition}.parquet"


INPUTS_KEY = b"erasure_pipeline.inputs"


def table_to_bytes(df: pd.DataFrame, inputs: dict[str, str] | None = None, sealing: Sealing | None = None,
                   split: int | None = None) -> bytes:
    """Deterministic Parquet bytes: the same frame (and ``inputs``) always gives the same bytes and hash.

    ``inputs`` (name -> fingerprint of what the table was computed from) is kept in the file's schema
    metadata, so a merge carries the proof of what it was built from (``verify`` re-derives it).
    ``sealing``: its columns are written sealed under each row's subject's data key (``core.crypto``).
    ``split``: the rows from this one on go in a row group of their own (``read_flagged``).
    """
    return arrow_to_bytes(to_arrow(df, sealing), inputs, split)


def to_arrow(df: pd.DataFrame, sealing: Sealing | None = None) -> pa.Table:
    """A frame as the Arrow table a lake object stores: ``sealing``'s columns sealed."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if sealing is not None and sealing.columns:
        table = crypto.seal_table(table, sealing.columns, sealing.keys, withhold=sealing.withhold, carried=sealing.carried,
                                   remember=sealing.remember)
    return table


def arrow_to_bytes(table: pa.Table, inputs: dict[str, str] | None = None, split: int | None = None) -> bytes:
    """Deterministic Parquet bytes of an Arrow table (``to_arrow``): only the project's own metadata kept. ``split``:
    rows before it and rows from it on in row groups of their own (each side that has rows)."""
    meta = {INPUTS_KEY: json.dumps(inputs, sort_keys=True).encode()} if inputs is not None else {}
    meta.update({k: v for k, v in (table.schema.metadata or {}).items() if k == crypto.SEALED_META})
    table = table.replace_schema_metadata(meta or None)
    buf = io.BytesIO()
    # Key-value metadata is only written with the Arrow schema; both are deterministic for one schema.
    if split is None or split <= 0 or split >= table.num_rows:
        pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=bool(meta))
    else:
        with pq.ParquetWriter(buf, table.schema, compression="zstd", write_statistics=True, store_schema=bool(meta)) as writer:
            writer.write_table(table.slice(0, split))
            writer.write_table(table.slice(split))
    return buf.getvalue()


def _damaged(name: str) -> DamagedObject:
    return DamagedObject(f"{name}: cannot be read as Parquet (damaged or not what was written)")


def _no_column(name: str, absent: list[str]) -> PipelineError:
    """A column asked for and not stored: named (declared column names, never values), not called damage."""
    return PipelineError(f"{name}: has no column {', '.join(absent)} (written under an earlier declaration? materialise it again)")


def read_flagged(data: bytes, columns: list[str], flag: str, name: str = "a lake object") -> pa.Table:
    """``columns`` of the rows of a Parquet object whose boolean ``flag`` column is true, reading only the row groups
    whose statistics say they may hold such rows: a table written with those rows last (``split``) reads them
    alone (a training set's holdout: a fifth of the bytes decoded). Unsealed columns (the lake's derived tables)."""
    try:
        f = pq.ParquetFile(io.BytesIO(data))
        absent = [c for c in (*columns, flag) if c not in f.schema_arrow.names]
    except (pa.ArrowException, OSError, ValueError):
        raise _damaged(name) from None
    if absent:
        raise _no_column(name, absent)
    try:
        at, groups, pure = f.schema_arrow.get_field_index(flag), [], True
        for g in range(f.num_row_groups):
            stats = f.metadata.row_group(g).column(at).statistics
            known = stats is not None and stats.has_min_max and stats.null_count == 0
            if known and not stats.max:
                continue  # no flagged row in it
            groups.append(g)
            pure = pure and known and bool(stats.min)
        wanted = list(dict.fromkeys([*columns, flag]))
        table = f.read_row_groups(groups, columns=wanted) if groups else f.schema_arrow.empty_table().select(wanted)
    except (pa.ArrowException, OSError, ValueError):
        raise _damaged(name) from None
    if set(crypto.sealed_columns(table.schema)) & set(wanted):
        raise PipelineError(f"{name}: {', '.join(sorted(set(crypto.sealed_columns(table.schema)) & set(wanted)))} sealed: read with read_parquet")
    if not pure:
        table = table.filter(pc.fill_null(table[flag].cast(pa.bool_()), False))
    return table.select(columns)


ARROW_MAGIC = b"ARROW1"


def arrow_to_ipc_bytes(table: pa.Table) -> bytes:
    """An Arrow table as Arrow IPC file bytes (zstd), for what the pipeline writes and reads back itself within a run
    (the ingest's staging area): 1.4–2.1 × faster to write and 2.2–4.3 × faster to read than Parquet, an events file
    1.3 × the bytes (``benchmarks/staging_format.py``, RESULTS.md). Deterministic like ``arrow_to_bytes``; only the
    sealing metadata kept. ``read_parquet`` reads either format."""
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k == crypto.SEALED_META}
    table = table.replace_schema_metadata(meta or None)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _open(data: bytes) -> tuple[pa.Schema, Callable[[list[str] | None], pa.Table]]:
    """(schema, a reader of the columns asked for (None: all)) of Parquet or Arrow IPC file bytes."""
    if data[: len(ARROW_MAGIC)] == ARROW_MAGIC:
        reader = ipc.open_file(pa.BufferReader(data))
        return reader.schema, lambda columns: reader.read_all() if columns is None else reader.read_all().select(columns)
    return pq.read_schema(io.BytesIO(data)), lambda columns: pq.read_table(io.BytesIO(data), columns=columns)


def stored_table(data: bytes, name: str = "a lake object") -> pa.Table:
    """A lake object as stored (sealed columns left sealed), Parquet or Arrow IPC."""
    try:
        return _open(data)[1](None)
    except (pa.ArrowException, OSError, ValueError):
        raise DamagedObject(f"{name}: cannot be read as Parquet or Arrow (damaged or not what was written)") from None


def read_parquet(data: bytes, columns: list[str] | None = None, name: str = "a lake object",
                 keys: KeySource | None = None, only: Collection[str] | None = None, carry: Collection[str] = ()) -> crypto.Opened:
    """A Parquet (or Arrow IPC: ``arrow_to_ipc_bytes``) object as Arrow, sealed columns opened with ``keys`` (their
    subject_key read with them); ``only``: the sealed columns to open, the others left out (but ``carry``'s: left
    sealed). A column asked for and not stored is a ``PipelineError`` naming it (not damage: the object was written
    under an earlier declaration)."""
    try:
        schema, read = _open(data)
        absent = [c for c in columns or () if c not in schema.names]
        sealed = crypto.sealed_columns(schema)
        left_out = set(sealed) - set(only) - set(carry) if columns is None and only is not None else set()
        if left_out:  # not read at all (a training set's read of raw_subjects decoded the sealed names and phones to drop them)
            columns = [c for c in schema.names if c not in left_out]
        extra = ["subject_key"] if columns is not None and sealed and set(columns) & set(sealed) and "subject_key" not in columns else []
        table = None if absent else read([*columns, *extra] if columns is not None else None)
    except (pa.ArrowException, OSError, ValueError):
        raise _damaged(name) from None
    if absent:
        raise _no_column(name, absent)
    opened = crypto.open_table(table, keys, name, only=only, carry=carry)
    if extra:
        opened.table = opened.table.drop_columns(extra)
    return opened


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_table(lake: Lake, asset: str, partition: str, df: pd.DataFrame, inputs: dict[str, str] | None = None,
                split: int | None = None) -> str:
    data = table_to_bytes(df, inputs, split=split)
    lake.write_bytes(table_name(asset, partition), data)
    return content_hash(data)


def object_hash(lake: Lake, name: str) -> str | None:
    """Content hash of a lake object as stored (None when absent)."""
    data = lake.read_bytes(name)
    return None if data is None else content_hash(data)


def table_inputs(lake: Lake, asset: str, partition: str, data: bytes | None = None) -> dict[str, str] | None:
    """The ``inputs`` a table was written with (None when absent or written without); ``data``: its bytes, if read."""
    data = data if data is not None else lake.read_bytes(table_name(asset, partition))
    if data is None:
        return None
    meta = pq.read_schema(io.BytesIO(data)).metadata or {}
    return json.loads(meta[INPUTS_KEY]) if INPUTS_KEY in meta else None


def table_from_bytes(data: bytes, columns: list[str] | None = None, name: str = "a lake object",
                     keys: KeySource | None = None, carry: Collection[str] = ()) -> pd.DataFrame:
    """A Parquet object as a frame, sealed columns opened with ``keys``; ``attrs["unreadable"]``: subject key -> cells
    that did not open (key destroyed); ``attrs["carried"]``: those left sealed (``carry``) -> their original fields."""
    opened = read_parquet(data, columns, name, keys, carry=carry)
    df = opened.table.to_pandas()
    df.attrs.update(unreadable=opened.unreadable, carried=opened.carried)
    return df


def read_table(lake: Lake, asset: str, partition: str) -> pd.DataFrame | None:
    """A table partition stored as one object (None: never written). Bucketed partitions: ``buckets.read_buckets``."""
    data = lake.read_bytes(table_name(asset, partition))
    return None if data is None else table_from_bytes(data, name=table_name(asset, partition))


def not_materialised(lake: Lake, asset: str, partition: str | None) -> FileNotFoundError:
    """The error for a node partition a step needs that was never written."""
    return FileNotFoundError(f"{asset}[{partition}] has not been materialised in {lake.describe()}" if partition
                             else f"{asset} has not been materialised in {lake.describe()}")


def require_table(lake: Lake, asset: str, partition: str) -> pd.DataFrame:
    df = read_table(lake, asset, partition)
    if df is None:
        raise not_materialised(lake, asset, partition)
    return df


def model_name(asset: str, partition: str | None = None) -> str:
    return f"{asset}/{partition or 'all'}.pkl"


def dumps_model(obj) -> bytes:
    return pickle.dumps(obj, protocol=5)


def loads_model(data: bytes, name: str = "a model"):
    try:
        return pickle.loads(data)  # only objects this pipeline wrote to its own lake
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError):
        raise DamagedObject(f"{name}: cannot be read as a model (damaged or not what was written)") from None


def model_fingerprint(obj) -> str:
    """A content hash of a fitted model's state, independent of how pickle memoises objects.

    Pickle bytes of two equal models can differ (shared vs. copied sub-objects), so data
    versions of models hash their state instead: arrays by dtype, shape and bytes; mappings by
    sorted key; objects by class name and ``__dict__`` (extension objects by what pickle rebuilds
    them from); never a ``repr``, which may carry a memory address.
    """
    h = hashlib.sha256()

    def walk(x) -> None:
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                h.update(b"O" + repr(x.shape).encode())
                for item in x.ravel():
                    walk(item)
            else:
                h.update(b"A" + str(x.dtype).encode() + repr(x.shape).encode() + np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(b"D%d" % len(x))
            for k in sorted(x, key=repr):
                walk(k)
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"L%d" % len(x))
            for item in x:
                walk(item)
        elif isinstance(x, (str, bytes, int, float, bool, type(None), np.generic)):
            h.update(b"S" + repr(x).encode())
        elif isinstance(x, type) or callable(x) and hasattr(x, "__qualname__") and not hasattr(x, "get_params"):
            # A class or function (e.g. DictVectorizer's dtype=np.float64): its name, never its
            # __dict__, whose reprs carry memory addresses that differ from process to process.
            h.update(b"T" + f"{getattr(x, '__module__', '')}.{x.__qualname__}".encode())
        elif hasattr(x, "__dict__"):
            h.update(b"C" + type(x).__qualname__.encode())
            walk({k: v for k, v in vars(x).items() if k != "_sklearn_version"})
        else:
            # An extension object (a fitted tree's ``Tree``): what pickle would rebuild it from.
            reduced = x.__reduce_ex__(4)
            if not isinstance(reduced, tuple):
                raise TypeError(f"cannot fingerprint a {type(x).__qualname__}")
            h.update(b"X" + type(x).__qualname__.encode())
            walk(list(reduced[1:3]))

    walk(obj)
    return h.hexdigest()

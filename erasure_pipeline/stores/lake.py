"""The lake: where partitions are written, one object per asset partition.

One interface, two back-ends: a local directory (default) and an S3 bucket (boto3). Object
names are built from asset names and partition keys only (never from data). Writes are
atomic per object. On a versioned bucket, :meth:`Lake.purge_noncurrent` removes the old
versions an erasure rewrite leaves behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def _check_name(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid lake object name: {name!r}")
    return name


@dataclass
class LocalLake:
    root: Path

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def read_bytes(self, name: str) -> bytes | None:
        with contextlib.suppress(FileNotFoundError):  # not exists()-then-read: deleted in between is "not there"
            return self._path(name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        names = []
        # Walk only below the prefix's folder, not the whole lake.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / _check_name(folder) if folder else self.root
        if not base.exists():
            return []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                rel = p.relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    names.append(rel)
        return sorted(names)

    def stamps(self, prefix: str = "") -> dict[str, str]:
        """Name -> size and modification time: what changes when a file is written again, without reading it."""
        out = {}
        for name in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):
                st = self._path(name).stat()
                out[name] = f"{st.st_size}-{st.st_mtime_ns}"
        return out

    def purge_noncurrent(self, name: str) -> list[str]:
        return []  # a local file has one version; os.replace leaves no old copy behind

    def noncurrent_versions(self, name: str) -> list[ObjectVersion]:
        return []

    def read_version(self, name: str, version_id: str) -> bytes:
        raise FileNotFoundError(f"a local lake keeps no old versions ({name})")

    def describe(self) -> str:
        return f"local:{self.root}"

    def locate(self, name: str) -> str:
        """Where an object is, for a person or a link: its absolute path."""
        return str(self._path(name).resolve())


QUOTE = '"'


@dataclass
class S3Lake:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None
    _client: object = field(default=None, repr=False)

    @property
    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region_name)
        return self._client

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self.prefix.strip('/')}/{name}" if self.prefix.strip("/") else name

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one, never a part.
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def list(self, prefix: str = "") -> list[str]:
        root = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        if prefix:
            _check_name(prefix.rstrip("/"))
        base = root + prefix
        strip = len(self.prefix.strip("/")) + 1 if self.prefix.strip("/") else 0
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            names += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(names)

    def stamps(self, prefix: str = "") -> dict[str, str]:
        """Name -> ETag and size, from the listing itself (a PUT of other bytes changes the ETag)."""
        root = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        strip = len(root)
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
            out.update({o["Key"][strip:]: f"{o['Size']}-{o['ETag'].strip(QUOTE)}" for o in page.get("Contents", [])})
        return out

    def _versions(self, name: str) -> list[dict]:
        key = self._key(name)
        out = []
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] == key:
                    out.append(v)
        return out

    def noncurrent_versions(self, name: str) -> list[ObjectVersion]:
        return [
            ObjectVersion(v["VersionId"], v["LastModified"], "ETag" not in v)
            for v in self._versions(name)
            if not v.get("IsLatest")
        ]

    def read_version(self, name: str, version_id: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name), VersionId=version_id)["Body"].read()

    def purge_noncurrent(self, name: str) -> list[str]:
        """Delete every noncurrent version (and delete marker) of one object, by VersionId.

        On a bucket whose versioning was suspended the pre-versioning copy has VersionId
        ``"null"``, which S3 deletes by that literal id like any other.
        """
        key = self._key(name)
        purged = [v.version_id for v in self.noncurrent_versions(name)]
        for vid in purged:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=vid)
        return purged

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"

    def locate(self, name: str) -> str:
        """Where an object is, for a person or a link: its ``s3://`` URL."""
        return f"s3://{self.bucket}/{self._key(name)}"


def table_name(asset: str, partition: str) -> str:
    return f"{asset}/{partition}.parquet"


INPUTS_KEY = b"erasure_pipeline.inputs"


def table_to_bytes(df: pd.DataFrame, inputs: dict[str, str] | None = None, sealing: Sealing | None = None) -> bytes:
    """Deterministic Parquet bytes: the same frame (and ``inputs``) always gives the same bytes and hash.

    ``inputs`` (name -> fingerprint of what the table was computed from) is kept in the file's schema
    metadata, so a merge carries the proof of what it was built from (``verify`` re-derives it).
    ``sealing``: its columns are written sealed under each row's subject's data key (``core.crypto``).
    """
    return arrow_to_bytes(to_arrow(df, sealing), inputs)


def to_arrow(df: pd.DataFrame, sealing: Sealing | None = None) -> pa.Table:
    """A frame as the Arrow table a lake object stores: ``sealing``'s columns sealed."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if sealing is not None and sealing.columns:
        table = crypto.seal_table(table, sealing.columns, sealing.keys, withhold=sealing.withhold, carried=sealing.carried,
                                   remember=sealing.remember)
    return table


def arrow_to_bytes(table: pa.Table, inputs: dict[str, str] | None = None) -> bytes:
    """Deterministic Parquet bytes of an Arrow table (``to_arrow``): only the project's own metadata kept."""
    meta = {INPUTS_KEY: json.dumps(inputs, sort_keys=True).encode()} if inputs is not None else {}
    meta.update({k: v for k, v in (table.schema.metadata or {}).items() if k == crypto.SEALED_META})
    table = table.replace_schema_metadata(meta or None)
    buf = io.BytesIO()
    # Key-value metadata is only written with the Arrow schema; both are deterministic for one schema.
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=bool(meta))
    return buf.getvalue()


def read_parquet(data: bytes, columns: list[str] | None = None, name: str = "a lake object",
                 keys: KeySource | None = None, only: Collection[str] | None = None, carry: Collection[str] = ()) -> crypto.Opened:
    """A Parquet object as Arrow, sealed columns opened with ``keys`` (their subject_key read with them); ``only``:
    the sealed columns to open, the others left out (but ``carry``'s: left sealed). A column asked for and not stored
    is a ``PipelineError`` naming it (not damage: the object was written under an earlier declaration)."""
    try:
        schema = pq.read_schema(io.BytesIO(data))
        absent = [c for c in columns or () if c not in schema.names]
        sealed = crypto.sealed_columns(schema)
        extra = ["subject_key"] if columns is not None and sealed and set(columns) & set(sealed) and "subject_key" not in columns else []
        table = None if absent else pq.read_table(io.BytesIO(data), columns=[*columns, *extra] if columns is not None else None)
    except (pa.ArrowException, OSError, ValueError):
        raise DamagedObject(f"{name}: cannot be read as Parquet (damaged or not what was written)") from None
    if absent:  # declared column names, never values
        raise PipelineError(f"{name}: has no column {', '.join(absent)} (written under an earlier declaration? materialise it again)")
    opened = crypto.open_table(table, keys, name, only=only, carry=carry)
    if extra:
        opened.table = opened.table.drop_columns(extra)
    return opened


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_table(lake: Lake, asset: str, partition: str, df: pd.DataFrame, inputs: dict[str, str] | None = None) -> str:
    data = table_to_bytes(df, inputs)
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

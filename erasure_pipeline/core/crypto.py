"""Crypto-shredding: declared personal fields sealed under a key of their subject's own (no Dagster import).

Each subject has a data key of 64 random bytes (``ledger.keys`` keeps them, wrapped): the first 32 are an
AES-256-GCM key, the last 32 key a synthetic nonce, BLAKE2b of (column, subject key, value). One value of
one subject in one column so always seals to the same bytes (Parquet files stay deterministic and their
content hashes stable: an unchanged bucket is not rewritten), while two different values never share a
nonce under one key. The column name and the subject key are the associated data: a sealed cell moved to
another column or another subject's row does not open. Destroy the data key and every copy of every
sealed cell of that subject, in any backup, snapshot or replica, is noise.

A sealed Parquet table keeps each sealed column as binary (``VERSION || nonce || ciphertext || tag``) and
records, in its schema metadata, the column's original Arrow type, so opening gives back the table as
it was written. Nulls stay null. Cells whose subject has no data key any more (erased) open as null and
are counted (``Opened.unreadable``); a cell whose tag does not check is damage, never silently null.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from erasure_pipeline.core.errors import DamagedObject, PipelineError

DATA_KEY_BYTES = 64
VERSION = b"\x01"
NONCE_BYTES = 12
SEALED_META = b"erasure_pipeline.sealed"
"""Schema metadata of a sealed table: ``{column: base64 of its original Arrow field}``."""
PAYLOAD_PREFIX = "sealed:v1:"
"""A sealed JSON payload value (the vector store's): this prefix, then base64 of the sealed bytes."""


class KeySource(Protocol):
    """Where data keys come from (``ledger.keys.KeyRing``): by subject key, created on demand for writers."""

    def data_keys(self, subject_keys: Collection[str], *, create: bool) -> dict[str, bytes]:
        """The data key of each subject that has one (``create``: a new one for each that never had one;
        never for a subject whose key was destroyed)."""
        ...


@dataclass(frozen=True)
class Sealing:
    """How a writer seals a table: which columns, with which keys, and whose rows get no key (their cells
    are written null: tombstoned subjects, whose rows are on their way out and must not get a key again)."""

    columns: tuple[str, ...]
    keys: KeySource
    withhold: frozenset[str] = frozenset()


class SealedWithoutKeys(PipelineError):
    """A reader asked for sealed columns without a key source."""


class _Ciphers:
    """AES-GCM objects per subject for one call (building one costs as much as sealing a cell)."""

    def __init__(self, keys: Mapping[str, bytes]):
        self.keys = keys
        self._aead: dict[str, AESGCM] = {}

    def aead(self, subject_key: str) -> AESGCM | None:
        if subject_key not in self._aead:
            key = self.keys.get(subject_key)
            if key is None:
                return None
            self._aead[subject_key] = AESGCM(key[:32])
        return self._aead[subject_key]


def _aad(column: str, subject_key: str) -> bytes:
    return column.encode() + b"\x00" + subject_key.encode()


def seal_value(key: bytes, column: str, subject_key: str, plaintext: bytes, aead: AESGCM | None = None) -> bytes:
    """One cell sealed: deterministic for (key, column, subject, value), bound to column and subject."""
    aad = _aad(column, subject_key)
    nonce = hashlib.blake2b(aad + b"\x00" + plaintext, key=key[32:], digest_size=NONCE_BYTES).digest()
    return VERSION + nonce + (aead or AESGCM(key[:32])).encrypt(nonce, plaintext, aad)


def open_value(key: bytes, column: str, subject_key: str, sealed: bytes, aead: AESGCM | None = None) -> bytes:
    """The plaintext of one sealed cell; ``InvalidTag`` when it was not sealed so (damage, or moved)."""
    if sealed[:1] != VERSION:
        raise InvalidTag()
    return (aead or AESGCM(key[:32])).decrypt(sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:], _aad(column, subject_key))


# ---------------------------------------------------------------- tables
def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    if _temporal(column.type):  # its integer count of units: exact, and casts back to the same type
        return pc.cast(pc.cast(column, pa.int64()), pa.string())
    return pc.cast(column, pa.string())


def _temporal(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t) or pa.types.is_time64(t)


def _field_text(f: pa.Field) -> str:
    return base64.b64encode(pa.schema([f]).serialize().to_pybytes()).decode()


def _field_of(text: str) -> pa.Field:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))).field(0)


def sealed_columns(schema: pa.Schema) -> dict[str, pa.Field]:
    """The sealed columns of a table's schema and their original fields ({}: nothing sealed)."""
    meta = schema.metadata or {}
    if SEALED_META not in meta:
        return {}
    return {c: _field_of(t) for c, t in json.loads(meta[SEALED_META]).items()}


def seal_table(table: pa.Table, columns: Iterable[str], keys: KeySource, subject_column: str = "subject_key",
               withhold: Collection[str] = ()) -> pa.Table:
    """``table`` with each of ``columns`` (those it has) sealed per row under its subject's data key.

    Data keys are created for subjects that never had one. A subject whose key was destroyed (erased), or
    in ``withhold``, gets no key: their cells are written null."""
    wanted = [c for c in dict.fromkeys(columns) if c in table.column_names and c not in sealed_columns(table.schema)]
    if not wanted or table.num_rows == 0:
        return _with_meta(table, {c: table.schema.field(c) for c in wanted}) if wanted else table
    subjects = table.column(subject_column).to_numpy(zero_copy_only=False).astype(object)
    fields: dict[str, pa.Field] = {}
    present = set()
    texts = {}
    for c in wanted:
        fields[c] = table.schema.field(c)
        texts[c] = _as_text(table.column(c)).to_numpy(zero_copy_only=False)
        present.update(subjects[~_is_null(texts[c])].tolist())
    present -= set(withhold)
    ciphers = _Ciphers(keys.data_keys(sorted(present), create=True) if present else {})
    for c in wanted:
        values = texts[c]
        out = np.full(len(values), None, dtype=object)
        live = np.flatnonzero(~_is_null(values))
        if len(live):
            # Each (subject, value) pair sealed once: a subject's id repeats on every one of their rows.
            codes, _uniques = pd.factorize(pd.Series(subjects[live]).astype(str) + "\x00" + pd.Series(values[live]).astype(str))
            sealed = []
            for row in live[np.unique(codes, return_index=True)[1]].tolist():
                s = subjects[row]
                aead = ciphers.aead(s)
                sealed.append(None if aead is None else seal_value(ciphers.keys[s], c, s, str(values[row]).encode(), aead))
            out[live] = np.array(sealed, dtype=object)[codes]
        table = table.set_column(table.column_names.index(c), pa.field(c, pa.binary()), pa.array(out, type=pa.binary()))
    return _with_meta(table, fields)


def _is_null(values: np.ndarray) -> np.ndarray:
    return np.asarray(pd.isna(values), dtype=bool)


def _with_meta(table: pa.Table, fields: Mapping[str, pa.Field]) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    known = json.loads(meta[SEALED_META]) if SEALED_META in meta else {}
    meta[SEALED_META] = json.dumps({**known, **{c: _field_text(f) for c, f in fields.items()}}, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


@dataclass
class Opened:
    """A table opened: sealed columns back as written, and the subjects whose cells did not open (no key)."""

    table: pa.Table
    unreadable: dict[str, int] = field(default_factory=dict)
    """Subject key -> cells that opened as null because the subject has no data key (erased)."""


def open_table(table: pa.Table, keys: KeySource | None, name: str = "a lake object", subject_column: str = "subject_key") -> Opened:
    """``table`` with its sealed columns opened (those it has; the rest of its metadata kept)."""
    sealed = {c: f for c, f in sealed_columns(table.schema).items() if c in table.column_names}
    if not sealed:
        return Opened(_strip_meta(table))
    if keys is None:
        raise SealedWithoutKeys(f"{name}: holds sealed personal fields ({', '.join(sealed)}) and no key store was given to open them")
    if subject_column not in table.column_names:
        raise SealedWithoutKeys(f"{name}: sealed fields read without the {subject_column} column that names their keys")
    subjects = table.column(subject_column).to_numpy(zero_copy_only=False).astype(object)
    plan = {}
    needed: set[str] = set()
    for c in sealed:
        encoded = table.column(c).combine_chunks().dictionary_encode()
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(encoded.indices.is_null())
        firsts = np.unique(np.where(valid, indices, -1), return_index=True)
        rows = {int(code): int(row) for code, row in zip(*firsts, strict=True) if code >= 0}
        plan[c] = (encoded, rows)
        needed.update(subjects[r] for r in rows.values())
    ciphers = _Ciphers(keys.data_keys(sorted(needed), create=False) if needed else {})
    unreadable: dict[str, int] = {}
    for c, (encoded, rows) in plan.items():
        dictionary = encoded.dictionary.to_pylist()
        opened: list[str | None] = [None] * len(dictionary)
        lost = set()
        for code, row in rows.items():
            s = subjects[row]
            aead = ciphers.aead(s)
            if aead is None:
                lost.add(code)
                continue
            try:
                opened[code] = open_value(ciphers.keys[s], c, s, dictionary[code], aead).decode()
            except InvalidTag:
                raise DamagedObject(f"{name}: a sealed {c} cell does not open under its subject's key (damaged or moved)") from None
        if lost:
            idx = encoded.indices.to_numpy(zero_copy_only=False)
            for code in lost:
                for s in subjects[idx == code].tolist():
                    unreadable[s] = unreadable.get(s, 0) + 1
        text = pa.array(opened, type=pa.string()).take(encoded.indices)
        original = sealed[c]
        value = _from_text(text, original.type)
        table = table.set_column(table.column_names.index(c), original, value)
    return Opened(_strip_meta(table), unreadable)


def _from_text(text: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_string(target):
        return text
    if pa.types.is_large_string(target):
        return pc.cast(text, target)
    if _temporal(target):
        return pc.cast(pc.cast(text, pa.int64()), target)
    if pa.types.is_null(target):
        return pa.nulls(len(text))
    return pc.cast(text, target)


def _strip_meta(table: pa.Table) -> pa.Table:
    meta = table.schema.metadata
    if not meta or SEALED_META not in meta:
        return table
    return table.replace_schema_metadata({k: v for k, v in meta.items() if k != SEALED_META})


# ---------------------------------------------------------------- JSON payload values (the vector store's)
def seal_payload_value(key: bytes, field_name: str, subject_key: str, value: str) -> str:
    return PAYLOAD_PREFIX + base64.b64encode(seal_value(key, field_name, subject_key, value.encode())).decode()


def open_payload_value(key: bytes | None, field_name: str, subject_key: str, value):
    """A payload field as written: opened when sealed (None when the subject's key is gone)."""
    if not isinstance(value, str) or not value.startswith(PAYLOAD_PREFIX):
        return value
    if key is None:
        return None
    try:
        return open_value(key, field_name, subject_key, base64.b64decode(value[len(PAYLOAD_PREFIX):])).decode()
    except (InvalidTag, ValueError):
        raise DamagedObject(f"a sealed vector payload field ({field_name}) does not open under its subject's key") from None

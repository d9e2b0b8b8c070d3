"""The landing location: where source systems drop the declared datasets' files.

Reading a landing table hashes every subject id once into ``subject_key`` and ``shard``;
the parsed, validated frames are cached per process by (file, size, mtime) so a run that
ingests 16 shards in one process parses each file once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from erasure_pipeline import contracts, identity
from erasure_pipeline.contracts import TableContract
from erasure_pipeline.identity import Keyer
from erasure_pipeline.storage.lake import Lake
from erasure_pipeline.tombstones import Tombstones


@dataclass(frozen=True)
class LandingFile:
    name: str
    contract: TableContract

    @property
    def table(self) -> str:
        return self.contract.name


def landing_files(lake: Lake, tables: Mapping[str, TableContract], table: str | None = None) -> list[LandingFile]:
    """Files of the declared datasets (``contracts.contracts_for``), of one of them if ``table`` is given."""
    out = []
    for name in lake.list():
        t = contracts.table_of(name, tables)
        if t is not None and (table is None or t == table):
            out.append(LandingFile(name, tables[t]))
    return out


_CACHE: dict[tuple, pd.DataFrame] = {}
_CACHE_LIMIT = 12


def _cache_key(lake: Lake, name: str, data: bytes, keyer: Keyer) -> tuple:
    return (lake.describe(), name, hashlib.sha256(data).hexdigest(), keyer.fingerprint)


def _remember(key: tuple, df: pd.DataFrame) -> None:
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = df


def read_landing(lake: Lake, file: LandingFile, keyer: Keyer) -> pd.DataFrame:
    """One landing file, validated, with ``subject_key`` (of the normalised id) and ``shard`` columns added."""
    data = lake.read_bytes(file.name)
    if data is None:
        raise FileNotFoundError(f"landing file {file.name} disappeared while reading")
    key = _cache_key(lake, file.name, data, keyer)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    df = contracts.validate(contracts.read_landing_bytes(data, file.name, file.contract), file.contract, file.name)
    df["subject_key"] = keyer.keys(df[file.contract.subject_column].tolist())
    df["shard"] = identity.shards_of(df["subject_key"], keyer.shards)
    _remember(key, df)
    return df


def read_landing_table(
    lake: Lake, contract: TableContract, keyer: Keyer, names: list[str] | None = None,
    check: Callable[[pd.DataFrame, str], None] | None = None,
) -> pd.DataFrame:
    """All landing files of one table (or the named subset), concatenated; later files win on id.

    ``check(frame, file name)`` runs on each file before they are combined, so its errors can name the file.
    """
    files = [f for f in landing_files(lake, {contract.name: contract}) if names is None or f.name in names]
    frames = [read_landing(lake, f, keyer) for f in files]
    if check is not None:
        for f, frame in zip(files, frames, strict=True):
            check(frame, f.name)
    if not frames:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True)
    return both.drop_duplicates(subset=[contract.id_column], keep="last")


def scrub_landing(lake: Lake, contract: TableContract, tombstones: Tombstones, names: list[str] | None = None) -> list[str]:
    """Rewrite every landing file of ``table`` that holds a tombstoned subject, or a tombstoned id inside
    its text columns, without those rows and with those ids redacted.

    Landing copies are data the company holds too. Files are rewritten in their own format and, on a
    versioned bucket, their old versions are purged. Returns the rewritten names.
    """
    rewritten = []
    if not tombstones:
        return rewritten
    texts = contract.texts
    for f in landing_files(lake, {contract.name: contract}):
        if names is not None and f.name not in names:
            continue
        keyed = read_landing(lake, f, tombstones.keyer)
        drop = keyed["subject_key"].isin(tombstones.keys_in([keyed], contract.subject_column)).to_numpy()
        kept_keyed, redacted = tombstones.redact(keyed[~drop], texts)
        if not drop.any() and not redacted:
            continue
        data = lake.read_bytes(f.name)
        original = contracts.read_landing_bytes(data, f.name, contract)
        kept = original[~drop].copy()
        for col in texts:
            kept[col] = kept_keyed[col].to_numpy()
        if f.name.lower().endswith(".parquet"):
            from erasure_pipeline.storage.lake import table_to_bytes

            out = table_to_bytes(kept)
        else:
            out = kept.to_csv(index=False).encode()
        lake.write_bytes(f.name, out)
        lake.purge_noncurrent(f.name)
        # The kept rows are what a re-read of the new file would give: no second parse and hash.
        _remember(_cache_key(lake, f.name, out, tombstones.keyer), kept_keyed.reset_index(drop=True))
        rewritten.append(f.name)
    return rewritten

"""The landing location: where source systems drop the declared datasets' files.

Reading a landing file validates it and hashes each distinct subject id once into ``subject_key``
(with ``shard``). An ingest reads each landing file once (``stage``): it writes the file's rows of
each shard into the lake's staging area, where the shard steps read them, and records in the landing
index which subjects each file holds (``landing_index``), so an erasure rewrites only the landing
files that hold its subjects.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from erasure_pipeline.core import contracts, identity
from erasure_pipeline.core.contracts import TableContract
from erasure_pipeline.core.crypto import KeySource, SealedWithoutKeys, Sealing
from erasure_pipeline.core.identity import Keyer
from erasure_pipeline.core.tombstones import Tombstones, mentions_by_row
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores import landing_index, superseded
from erasure_pipeline.stores.lake import Lake

STAGING = "_staging"


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


def key_frame(df: pd.DataFrame, subject_column: str | None, keyer: Keyer) -> pd.DataFrame:
    """``df`` with ``subject_key`` (of the normalised id) and ``shard``: each distinct id hashed once. A row
    kept without a subject (an empty id, ``missing_subject: keep``) gets ``identity.NO_SUBJECT``."""
    if subject_column is None:  # a lookup table: no person's rows
        df["subject_key"], df["shard"] = identity.NO_SUBJECT, 0
        return df
    codes, uniques = pd.factorize(df[subject_column], sort=False)
    ids = uniques.tolist()  # a list, not the Arrow-backed array read item by item (~1 µs an id more, twice)
    keys = pd.Series([identity.NO_SUBJECT if not str(u).strip() else k for u, k in zip(ids, keyer.keys(ids), strict=True)], dtype=str)
    # Each distinct key made a string once and taken row by row by Arrow: a column of Python strings (one per row)
    # was converted to Arrow item by item when assigned (156 ms for an events file's 150 000 rows, against 9 ms).
    df["subject_key"] = keys.take(codes).array if len(codes) else pd.Series(dtype=str)
    df["shard"] = identity.shards_of(keys, keyer.shards)[codes] if len(codes) else pd.Series(dtype="int64")
    return df


def read_landing(lake: Lake, file: LandingFile, keyer: Keyer) -> pd.DataFrame:
    """One landing file, validated, with ``subject_key`` (of the normalised id) and ``shard`` columns added."""
    return _parse(lake, file, keyer)[2]


def _parse(lake: Lake, file: LandingFile, keyer: Keyer) -> tuple[bytes, pd.DataFrame, pd.DataFrame]:
    """(the file's bytes, its rows as written, its rows validated and keyed): one read, one parse."""
    data = lake.read_bytes(file.name)
    if data is None:
        raise FileNotFoundError(f"landing file {file.name} disappeared while reading")
    original = contracts.read_landing_bytes(data, file.name, file.contract)
    return data, original, key_frame(contracts.validate(original, file.contract, file.name), file.contract.subject_column, keyer)


def _without_tombstoned(file: LandingFile, original: pd.DataFrame, keyed: pd.DataFrame, tombstones: Tombstones,
                        gone: set[str] | None = None) -> bytes | None:
    """The file rewritten in its own format without tombstoned subjects' rows and with tombstoned ids in its
    texts redacted; None when it holds neither. ``gone``: ``tombstones.keys_in`` of ``keyed``, when known."""
    if gone is None:
        gone = tombstones.keys_in([keyed], file.contract.subject_column)
    drop = keyed["subject_key"].isin(gone).to_numpy()
    kept_keyed, redacted = tombstones.redact(keyed[~drop], file.contract.texts)
    if not drop.any() and not redacted:
        return None
    # ``keyed`` carries the file's row labels (rows a declaration drops for having no subject are absent from
    # it, and stay in the file): remove and redact by label.
    kept = original.drop(index=keyed.index[drop])
    for col in file.contract.texts:
        kept.loc[kept_keyed.index, col] = kept_keyed[col].to_numpy()
    return lk.table_to_bytes(kept) if file.name.lower().endswith(".parquet") else kept.to_csv(index=False).encode()


def _rewrite(lake: Lake, name: str, data: bytes) -> str:
    """Replace a landing file (its old versions purged: they hold the subjects); its new content hash."""
    lake.write_bytes(name, data)
    lake.purge_noncurrent(name)
    return lk.content_hash(data)


def read_landing_table(
    lake: Lake, contract: TableContract, keyer: Keyer, names: list[str] | None = None,
    check: Callable[[pd.DataFrame, str], None] | None = None,
) -> pd.DataFrame:
    """All landing files of one table (or the named subset), concatenated; later files win on id.

    ``check(frame, file name)`` runs on each file before they are combined, so its errors can name the file.
    """
    files = [f for f in landing_files(lake, {contract.name: contract}) if names is None or f.name in names]
    frames = []
    for f in files:
        frames.append(read_landing(lake, f, keyer))
        if check is not None:
            check(frames[-1], f.name)
    if not frames:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True)
    return both.drop_duplicates(subset=[contract.id_column], keep="last")


# ---------------------------------------------------------------- one pass: staging and the index
SKELETON = "_skeleton_key"
"""A staged file's column: the keyed skeleton (look-alike key) of a row's subject id, on each subject's last row in
the file (null on the others: a shard's piece of the file holds its subjects' last rows, which a later row's id
supersedes least: ``read_staged`` keeps the last row of an id). Made by the
staging pass, where the ids are in the clear, so no raw step opens a sealed id to make it (in any process: a step
process of the multiprocess executor too); the raw step keeps them and drops the column."""


def subject_rows(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Each subject's last row (``subject_key`` and ``column``) among the rows with a subject."""
    return df.loc[df["subject_key"] != identity.NO_SUBJECT, ["subject_key", column]].drop_duplicates("subject_key", keep="last")


def skeletons_of(rows: pd.DataFrame, column: str, keyer: Keyer) -> dict[str, str]:
    """``Keyer.skeletons_by_key`` of ``subject_rows``: pandas' nulls (NaN, ``pd.NA``) handed over as None."""
    ids = rows[column]
    return keyer.skeletons_by_key(rows["subject_key"].tolist(), ids.astype(object).where(ids.notna(), None).tolist())


def _skeleton_column(df: pd.DataFrame, column: str, keyer: Keyer) -> tuple[pd.Series, dict[str, str]]:
    """(``SKELETON`` of ``df``, its subjects' skeletons by subject key)."""
    lasts = subject_rows(df, column)
    made = skeletons_of(lasts, column, keyer)
    out = pd.Series(None, index=df.index, dtype=object)
    out.loc[lasts.index] = [made.get(k) for k in lasts["subject_key"]]
    return out, made


def staged_name(batch: str, table: str, shard: int, number: int) -> str:
    return f"{STAGING}/{batch}/{table}/{identity.partition_key(shard)}/{number:05d}.arrow"


@dataclass
class Staged:
    """What one pass over a batch's landing files wrote: which shards got rows of which table."""

    batch: str
    shards: dict[str, set[int]] = field(default_factory=dict)
    rows: int = 0
    index_entries: int = 0
    without_subject: dict[str, int] = field(default_factory=dict)
    """Rows whose subject column was empty, by dataset (dropped or kept, as each dataset declares)."""
    scrubbed: dict[str, str] = field(default_factory=dict)
    """Landing files rewritten without tombstoned subjects (a source sent them again): name -> new content hash."""
    sightings: dict[str, list[superseded.Sighting]] = field(default_factory=dict)
    """Each dataset's staged ids by file, for ``superseded.resolve`` (datasets whose rows can change subject)."""
    skeletons: dict[str, str] = field(default_factory=dict)
    """Subject key -> the keyed skeleton of their id, for every subject staged: what the claim stores for look-alikes
    (``NodeRecords.keep_skeletons``) before a raw step records their rows."""

    def add(self, done: _StagedFile, index: landing_index.IndexBuilder) -> None:
        """Fold in one staged file (in the batch's file order) and index it."""
        f = done.file
        if done.missing:
            self.without_subject[f.table] = self.without_subject.get(f.table, 0) + done.missing
        if done.scrubbed is not None:
            self.scrubbed[f.name] = done.scrubbed
        self.rows += done.rows
        self.shards.setdefault(f.table, set()).update(done.shards)
        index.add(f.name, done.keys, landing_index.ROWS)
        if done.mentions is not None:
            index.add(f.name, done.mentions, landing_index.MENTION)
        if done.sighting is not None:
            self.sightings.setdefault(f.table, []).append(done.sighting)
        self.skeletons.update(done.skeletons)


@dataclass
class _StagedFile:
    """What staging one landing file wrote and found, folded into ``Staged`` in the batch's file order."""

    file: LandingFile
    rows: int
    missing: int
    keys: pd.Series
    shards: set[int] = field(default_factory=set)
    scrubbed: str | None = None
    mentions: list[str] | None = None
    sighting: superseded.Sighting | None = None
    skeletons: dict[str, str] = field(default_factory=dict)


def stage(lake: Lake, landing: Lake, files: list[LandingFile], keyer: Keyer, batch: str, buckets: int,
          check: Callable[[pd.DataFrame, LandingFile], None] | None = None, tombstones: Tombstones | None = None,
          keys: KeySource | None = None, workers: int = 1, remember: frozenset[str] | None = None) -> Staged:
    """Read each landing file once: write its rows of each shard to the staging area, index which
    subjects (and which ids inside its texts) it holds, and rewrite it without ``tombstones``' subjects
    when a source sent them again (every ingest path stages, so every ingest path scrubs landing). Files
    are numbered in the batch's order, so a shard reading its staged files in name order sees later files
    last (later files win on id). The staged rows are as read: the raw step drops tombstoned subjects and
    keeps the provenance of those whose erasure is still to run. Declared personal fields are staged sealed
    (``keys``); tombstoned subjects get no key, their fields are staged empty. Each file's ids are kept in memory
    (``Staged.sightings``) for the claim to find ids sent again under another subject (``superseded.resolve``).
    ``remember``: the columns (by name, in any dataset) a later step opens (None: all), whose cells the process's
    sealing lookups keep (``Sealing.remember``)."""
    out = Staged(batch)
    drop_staging(lake, batch)  # an earlier attempt of this batch: staged and indexed afresh, not added to
    landing_index.delete_batch(lake, batch)
    index = landing_index.IndexBuilder(batch, keyer.shards, buckets)

    def one(number: int, f: LandingFile) -> _StagedFile | None:
        _data, original, df = _parse(landing, f, keyer)
        if f.contract.is_lookup:  # validated here like every file; its node reads landing itself
            return None
        done = _StagedFile(f, len(df), int(contracts.without_subject(original, f.contract).sum()), df["subject_key"])
        if check is not None:
            check(df, f)
        gone = tombstones.keys_in([df], f.contract.subject_column) if tombstones else set()
        scrubbed = _without_tombstoned(f, original, df, tombstones, gone) if tombstones else None
        if scrubbed is not None:
            done.scrubbed = _rewrite(landing, f.name, scrubbed)
        if f.contract.subject_column is not None:
            df[SKELETON], made = _skeleton_column(df, f.contract.subject_column, keyer)
            done.skeletons = {k: v for k, v in made.items() if k not in gone} if gone else made  # no skeleton for the erased
        # Sealed once for the whole file (one key lookup, each subject's values once), then split by shard.
        shards = df["shard"].to_numpy()
        table = lk.to_arrow(df.drop(columns=["shard"]), _sealing(f.contract, keys, tombstones, remember))
        for shard in np.unique(shards).tolist():
            rows = table.filter(pa.array(shards == shard))
            lake.write_bytes(staged_name(batch, f.table, int(shard), number), lk.arrow_to_ipc_bytes(rows))
            done.shards.add(int(shard))
        if f.contract.texts:
            done.mentions = [k for ks in mentions_by_row(df, f.contract.texts, keyer) for k in ks]
        if superseded.movable(f.contract):
            done.sighting = superseded.Sighting.of(number, df, f.contract)
        return done

    # ``workers`` files at once (threads: parsing and Parquet release the GIL, the per-cell sealing does not;
    # 14.7 -> 12.4 s for 60 files of 200 000 subjects with 2 on 2 cores, no gain from 3). The first file is staged
    # before the pool starts, so each store's client and the key store are opened by one thread. Folded in the
    # batch's file order.
    first = [one(0, files[0])] if files else []
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        for done in itertools.chain(first, pool.map(one, range(1, len(files)), files[1:])):
            if done is not None:
                out.add(done, index)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a file failed: the files not started are not staged
    out.index_entries = index.write(lake)
    return out


def _sealing(contract: TableContract, keys: KeySource | None, tombstones: Tombstones | None,
             remember: frozenset[str] | None = None) -> Sealing | None:
    if not contract.sealed:
        return None
    if keys is None:
        raise SealedWithoutKeys(f"datasets.{contract.name}.personal is declared but no key store is open to seal it")
    return Sealing(tuple(contract.sealed), keys, frozenset(tombstones.current) if tombstones else frozenset(), remember=remember)


def read_staged(lake: Lake, batch: str, contract: TableContract, shard: int, keys: KeySource | None = None,
                carry: Collection[str] = ()) -> pd.DataFrame | None:
    """A shard's rows of one table from a batch's staging area, later files winning on id (None: no rows).
    ``carry``: sealed columns left sealed (``attrs["carried"]``) when every file stores them alike, as
    ``buckets.read_buckets`` does."""
    names = [n for n in lake.list(f"{STAGING}/{batch}/{contract.name}/{identity.partition_key(shard)}/") if not n.endswith(superseded.RETRACTED)]
    if not names:
        return None
    frames = [lk.table_from_bytes(lake.read_bytes(n), name=n, keys=keys, carry=carry) for n in names]
    carried = frames[0].attrs["carried"]
    if any(f.attrs["carried"] != carried for f in frames):  # staged under different declarations: open them all
        return read_staged(lake, batch, contract, shard, keys)
    both = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out = both.drop_duplicates(subset=[contract.id_column], keep="last")
    out.attrs["carried"] = carried
    return out


def drop_staging(lake: Lake, batch: str) -> None:
    """Delete a finished batch's staging area, old object versions included (they hold subjects' rows)."""
    for name in lake.list(f"{STAGING}/{batch}/"):
        lake.delete(name)
        lake.purge_noncurrent(name)


def staged_files(lake: Lake, table: str | None = None, shard: int | None = None) -> list[str]:
    """Staged files (of one table and shard) of every batch whose staging area is still there."""
    part = None if shard is None else identity.partition_key(shard)
    return [n for n in lake.list(f"{STAGING}/")
            if (table is None or n.split("/")[2] == table) and (part is None or n.split("/")[3] == part)]


def scrub_staging(lake: Lake, keys: set[str], table: str | None = None, shard: int | None = None) -> int:
    """Rewrite staged files of a batch still running (or interrupted) without ``keys``; returns how many.
    Rows are filtered as stored: sealed fields stay sealed, byte for byte."""
    rewritten = 0
    for name in staged_files(lake, table, shard):
        stored = lk.stored_table(lake.read_bytes(name) or b"", name)
        hit = pc.is_in(stored.column("subject_key"), value_set=pa.array(sorted(keys), type=stored.schema.field("subject_key").type))
        if pc.any(hit).as_py():
            kept = stored.filter(pc.invert(hit))
            lake.write_bytes(name, lk.arrow_to_ipc_bytes(kept) if name.endswith(".arrow") else lk.arrow_to_bytes(kept))
            lake.purge_noncurrent(name)
            rewritten += 1
    return rewritten


# ---------------------------------------------------------------- landing copies of erased subjects
def scrub_landing(lake: Lake, contract: TableContract, tombstones: Tombstones, names: Iterable[str] | None = None) -> dict[str, str]:
    """Rewrite the landing files of ``contract``'s table (those ``names``, else every one) that hold a
    tombstoned subject, or a tombstoned id inside their text columns, without those rows and with those
    ids redacted.

    Landing copies are data the company holds too. Files are rewritten in their own format and, on a
    versioned bucket, their old versions are purged. Returns the rewritten names and their new content hashes.
    """
    if not tombstones:
        return {}
    wanted = None if names is None else set(names)
    rewritten = {}
    for f in landing_files(lake, {contract.name: contract}):
        if wanted is not None and f.name not in wanted:
            continue
        try:
            _data, original, keyed = _parse(lake, f, tombstones.keyer)
        except FileNotFoundError:
            continue  # gone since it was listed: nothing left to scrub
        scrubbed = _without_tombstoned(f, original, keyed, tombstones)
        if scrubbed is not None:
            rewritten[f.name] = _rewrite(lake, f.name, scrubbed)
    return rewritten


def scrub_subjects(store: Lake, landing: Lake, tables: Mapping[str, TableContract], tombstones: Tombstones, keys: Iterable[str],
                   buckets: int) -> dict[str, str]:
    """Erase ``keys`` from landing, each file rewritten at most once: only the files the landing index says
    hold them (rows, or an id in a text), and every file no ingest has indexed yet. Their index entries go
    too. Returns the rewritten names and their new content hashes."""
    keys = list(keys)
    if not keys:
        return {}
    batches = landing_index.batches(store)
    holding = landing_index.files_holding(store, keys, tombstones.keyer.shards, buckets, batches)
    indexed = landing_index.indexed_files(store, batches)
    rewritten: dict[str, str] = {}
    present: set[str] = set()
    for name, contract in tables.items():
        if contract.is_lookup:
            continue
        ours = {f.name for f in landing_files(landing, {name: contract})}
        present |= ours
        names = {n for n in holding if n in ours} | (ours - indexed)
        rewritten |= scrub_landing(landing, contract, tombstones, sorted(names)) if names else {}
    landing_index.forget(store, keys, set(holding) & present, tombstones.keyer.shards, buckets, batches)
    return rewritten

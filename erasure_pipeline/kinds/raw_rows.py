"""Raw rows: the pure steps of a raw partition's rewrite, and where a rebuild's rows come from.

``rewrite_partition`` upserts and drops tombstoned subjects (``without_keys`` drops them from a bucket as
stored, when ``carriable`` says that is all an erasure does), ``apply_retention`` drops rows past the
cutoff, ``consent_changes`` finds consent that flipped; ``lake_held`` is what the lake holds of a shard
when landing files expire (``landing.keep_days``); ``check_opened`` stops a rewrite that would lose a kept
subject's sealed fields; ``incoming_rows`` reads a step's new rows; ``key_counts`` counts rows per subject; ``declared_reads``, ``awaiting_erasure`` and ``unlisted_finding`` serve
the raw step's readers, provenance and proof.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from erasure_pipeline.core import contracts, crypto
from erasure_pipeline.core.crypto import as_sealed, sealed_columns
from erasure_pipeline.core.graph import Node
from erasure_pipeline.core.identity import NO_SUBJECT
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.core.tombstones import Tombstones
from erasure_pipeline.kinds.base import Env, Finding, KeysLost, NodeRun
from erasure_pipeline.ml.features import consenting
from erasure_pipeline.ml.labels import check_labels
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores.landing import SKELETON, key_frame, read_landing_table, read_staged, skeletons_of, subject_rows


def is_features_dataset(policy: Policy, dataset: str) -> bool:
    return policy.features is not None and policy.features.dataset == dataset


def incoming_rows(run: NodeRun, contract, carry: frozenset[str]) -> pd.DataFrame | None:
    """This shard's new rows: from the batch's staging area (``carry``: sealed columns left sealed), else landing."""
    if run.mode == "erasure":
        return None
    policy = run.env.policy
    check = (lambda frame, name: check_labels(frame, name, policy)) if is_features_dataset(policy, contract.name) else None
    if run.staged is not None:
        rows = read_staged(run.env.lake, run.staged, contract, run.shard, run.env.keys, carry)
        if rows is not None and SKELETON in rows:  # made by the staging pass, where the ids were in the clear
            # On one row per subject and file; read as lists (iterating the Arrow-backed columns was 1.0 s of a
            # 200 000-subject build under cProfile, their dropna and drop_duplicates 0.4 s). A subject's skeletons are alike.
            has = rows[SKELETON].notna().to_numpy()
            run.env.keyer.keep_skeletons(dict(zip(rows["subject_key"][has].tolist(), rows[SKELETON][has].astype(str).tolist(), strict=True)))
            rows = rows.drop(columns=[SKELETON])
        return rows
    rows = read_landing_table(run.env.landing, contract, run.env.keyer, run.landing_files if run.mode == "ingest" else None, check=check)
    return None if rows.empty else rows[rows["shard"] == run.shard].drop(columns=["shard"])


def retention_cutoff(policy: Policy, book, as_of: dt.datetime | None) -> dt.datetime | None:
    """The latest of this run's cutoff and every earlier cycle's (cutoffs only move forward); None without retention."""
    if policy.retention_days is None:
        return None
    times = [b["as_of"] for b in book.runs.landing_batches() if b["kind"] == "cycle"]
    if as_of:
        times.append(as_of)
    if not times:
        return None
    latest = max(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in times)
    return latest - dt.timedelta(days=policy.retention_days)


def apply_retention(df: pd.DataFrame, contract: contracts.TableContract, cutoff: dt.datetime | None) -> tuple[pd.DataFrame, int]:
    """Drop rows whose timestamp is older than ``cutoff`` (datasets without a timestamp are kept)."""
    cols = contract.timestamps
    if cutoff is None or not cols or df.empty or cols[0] not in df:
        return df, 0
    old = (pd.to_datetime(df[cols[0]], utc=True) < pd.Timestamp(cutoff)).to_numpy()
    if not old.any():  # nothing past retention: the frame as it is, not a copy of every column
        return df, 0
    return df[~old].reset_index(drop=True), int(old.sum())


def consent_changes(existing: pd.DataFrame | None, written: pd.DataFrame, policy: Policy) -> dict[str, bool]:
    """Subjects whose training consent flipped between the old and the new rows."""
    if existing is None or existing.empty or written.empty or policy.consent is None or policy.consent.column not in written:
        return {}
    before = pd.Series(consenting(existing, policy).to_numpy(), index=existing["subject_key"].to_numpy())
    after = pd.Series(consenting(written, policy).to_numpy(), index=written["subject_key"].to_numpy())
    both = before.index.intersection(after.index)
    flipped = both[before.loc[both].to_numpy() != after.loc[both].to_numpy()]
    return {k: bool(after.loc[k]) for k in flipped}


def row_key(contract: contracts.TableContract) -> list[str]:
    """The columns a raw step matches rows on (an upsert: a later row with them wins) and orders them by: the id; for
    a dataset whose id is its subject column, the subject key first. Such an id is one subject key's, so matching on
    both matches on the id alone; and within one subject key each id has one sealed form (sealing is deterministic
    under the subject's one data key), so the step matches and orders on it sealed as well as in plaintext, and
    carries it sealed (``carried_in_step``)."""
    return ["subject_key", contract.id_column] if contract.id_is_subject else [contract.id_column]


def rewrite_partition(existing: pd.DataFrame | None, incoming: pd.DataFrame | None, by: list[str], tombstoned: set[str]) -> tuple[pd.DataFrame, int]:
    """Upsert ``incoming`` into ``existing`` on ``by`` (``row_key``), drop tombstoned subjects, sort by ``by``."""
    frames = [f for f in (existing, incoming) if f is not None and not f.empty]
    if not frames:
        return (existing if existing is not None else pd.DataFrame()), 0
    both = pd.concat(frames, ignore_index=True).drop_duplicates(subset=by, keep="last") if len(frames) > 1 else frames[0]
    keep = ~both["subject_key"].isin(tombstoned)
    kept = both if bool(keep.all()) else both[keep]  # a copy of every column only when a row goes
    out = kept.sort_values(by, kind="stable").reset_index(drop=True)
    return out, int((~keep).sum())


def carriable(contract: contracts.TableContract, stones: Tombstones) -> bool:
    """An erasure that only removes rows can carry the others as stored (sealed cells never opened, never
    sealed again): no text column (an id inside a text is redacted in plaintext), every tombstone filed under
    the current identity rule (an earlier rule's match needs the plaintext id), a timestamp not sealed (the
    manifest keeps each bucket's oldest)."""
    ts = contract.timestamps[0] if contract.timestamps else None
    return not contract.texts and not any(stones.legacy.values()) and (ts is None or ts not in contract.sealed)


def sealed_as_declared(table: pa.Table, contract: contracts.TableContract) -> bool:
    """A stored bucket whose sealed columns are the declared ones (not written before a column was declared
    personal, or after one stopped being): carried as it is, nothing to seal or open anew."""
    return set(sealed_columns(table.schema)) == {c for c in contract.sealed if c in table.column_names}


def carried_in_step(contract: contracts.TableContract, stones: Tombstones) -> frozenset[str]:
    """The sealed columns a raw step carries with their rows, never opened nor sealed again (sealing is
    deterministic: what it would write is what is stored): all but the id (upserts match on it; unless it is the
    subject column, ``row_key``), texts (ids inside are redacted), the timestamp (retention) and each column the
    declaration names for a reader (the consent rule's). Empty while a tombstone filed under an earlier identity
    rule matches on the plaintext id."""
    if stones.legacy:
        return frozenset()
    named = {c for c, by in contract.named_by.items() if not by.endswith(".personal")}
    matched = set() if contract.id_is_subject else {contract.id_column}
    return frozenset(contract.sealed) - {*matched, *contract.texts, *contract.timestamps, *named}


def carried_alike(frames: list[pd.DataFrame | None], keys, where: str) -> tuple[list[pd.DataFrame | None], dict[str, str]]:
    """(``frames``, the sealed columns they all carry): read with ``carry`` from places written under different
    declarations (or one read in plaintext, from landing), they are opened wherever they differ."""
    held = [f.attrs.get("carried") or {} for f in frames if f is not None and len(f)]
    if all(h == held[0] for h in held[1:]):
        return frames, dict(held[0]) if held else {}
    return [open_carried(f, keys, where) for f in frames], {}


def open_carried(df: pd.DataFrame | None, keys, where: str) -> pd.DataFrame | None:
    """``df`` with the sealed columns it carries (``attrs["carried"]``) opened, their unreadable cells counted."""
    carried = (df.attrs.get("carried") or {}) if df is not None else {}
    if not carried:
        return df
    opened = crypto.open_table(as_sealed(pa.Table.from_pandas(df[["subject_key", *carried]], preserve_index=False), carried), keys, where)
    out = df.assign(**{c: opened.table.column(c).to_pandas().set_axis(df.index) for c in carried})
    unreadable = dict(df.attrs.get("unreadable") or {})
    for k, n in opened.unreadable.items():
        unreadable[k] = unreadable.get(k, 0) + n
    out.attrs.update(carried={}, unreadable=unreadable)
    return out


def skeletons(new: pd.DataFrame | None, contract: contracts.TableContract, keyer, keys, carried: Mapping[str, str]) -> dict[str, str]:
    """The keyed skeleton (look-alike key) of each subject that arrived in a raw step, by subject key: made where
    the id was in the clear (the staging pass: ``incoming_rows`` keeps them) or met before in this process
    (``Keyer.known_skeletons``); the subject id opened, when it is carried sealed, only for the others (rows
    materialised from landing by hand, or from a staging area an earlier version wrote)."""
    if new is None or new.empty or contract.subject_column not in new:
        return {}
    pairs = subject_rows(new, contract.subject_column)
    known = keyer.known_skeletons()
    arrived = pairs["subject_key"].tolist()
    met = [known.get(k) for k in arrived]
    out = {k: v for k, v in zip(arrived, met, strict=True) if v is not None}
    if out:  # a mask from the lookups (Series.isin of the met keys took 1.1 s of a 200 000-subject build)
        pairs = pairs[np.fromiter((v is None for v in met), dtype=bool, count=len(met))]
    if pairs.empty:
        return out
    if contract.subject_column in carried:
        pairs.attrs["carried"] = {contract.subject_column: carried[contract.subject_column]}
        pairs = open_carried(pairs, keys, f"raw_{contract.name}")
    return out | skeletons_of(pairs, contract.subject_column, keyer)


def without_keys(table: pa.Table, keys: Collection[str]) -> tuple[pa.Table, int]:
    """``table`` as stored without the rows of ``keys`` (by ``subject_key``); how many rows went."""
    hit = pc.is_in(table.column("subject_key").cast(pa.string()), value_set=pa.array(sorted(keys), type=pa.string()))
    removed = pc.sum(hit).as_py() or 0
    return (table.filter(pc.invert(hit)) if removed else table), removed


def check_opened(rows: pd.DataFrame | None, tombstoned: set[str] | frozenset[str], where: str) -> None:
    """Cells that did not open belong to erased subjects (their key is destroyed, their rows go now); a kept
    subject's unreadable cell means the key store lost a key: stop before writing anything."""
    unreadable = (rows.attrs.get("unreadable") or {}) if rows is not None else {}
    lost = set(unreadable) - set(tombstoned)
    if lost:
        raise KeysLost(f"{where}: the personal fields of {len(lost)} kept subjects do not open: their data keys are missing "
                       "from the key store (restored from an older copy?); nothing was written")


def lake_held(run: NodeRun, contract) -> pd.DataFrame | None:
    """What the lake holds of this shard, for a rebuild when landing files expire: this partition's rows and,
    after a reshard or a new identity rule, every partition's rows keyed anew and kept when they fall here."""
    env, name = run.env, run.node.name
    own = bk.read_buckets(env.lake, name, run.partition, keys=env.keys)
    if own is not None and own.attrs.get("unreadable"):  # erased: nothing of them to carry over
        own = own[~own["subject_key"].isin(set(own.attrs["unreadable"]))].reset_index(drop=True)
        own.attrs["unreadable"] = {}
    keyer = env.keyer
    others = sorted({n.split("/")[1] for n in env.lake.list(f"{name}/") if n.endswith(bk.MANIFEST)} - {run.partition})
    moved = bool(set(others) - set(env.partitions))
    if own is not None and len(own) and contract.subject_column in own:
        rekeyed = key_frame(own.drop(columns=["subject_key"]), contract.subject_column, keyer)
        moved = moved or bool((rekeyed["subject_key"] != own["subject_key"]).any() or (rekeyed["shard"] != run.shard).any())
    if not moved:
        return own
    frames = [bk.read_buckets(env.lake, name, p, keys=env.keys) for p in [run.partition, *others]]
    rows = [f for f in frames if f is not None and len(f)]
    if not rows:
        return None
    both = pd.concat(rows, ignore_index=True)
    unreadable = {k: n for f in rows for k, n in (f.attrs.get("unreadable") or {}).items()}
    both = both[~both["subject_key"].isin(set(unreadable))]  # erased: nothing of them to carry over
    keyed = key_frame(both.drop(columns=["subject_key"]), contract.subject_column, keyer)
    out = keyed[keyed["shard"] == run.shard].drop(columns=["shard"]).reset_index(drop=True)
    out.attrs["unreadable"] = {}
    return out


def declared_reads(policy: Policy, contract) -> set[str] | None:
    """The sealed columns a node below the raw one may read: those the declaration names (features, labels,
    cohorts, texts, the id and timestamp); None (all) when a feature function reads the dataset, since its
    columns are not declared."""
    if not contract.sealed or (policy.features is not None and any(contract.name in f.datasets for f in policy.features.functions)):
        return None
    read = {c for c, field in contract.named_by.items() if not field.endswith(".personal")}
    return {*read, *contract.texts, contract.id_column, *contract.timestamps}


def ordered_by(contract) -> frozenset[str]:
    """Sealed columns the nodes below raw read only to order rows, read as stored (``read_buckets``'s ``carry``): the
    id, sealed and named by no declaration field (a feature, label, join or cohort column is opened). The training
    set orders a subject's rows by it (``ml.features.training_rows``); within one subject key each value has one
    sealed form, so the order stays deterministic and differs from the plaintext one only between rows of one key.
    The demo's 200 000 subject ids were opened again by every training step for that alone."""
    named = {c for c, by in contract.named_by.items() if not by.endswith(".personal")}
    return frozenset({contract.id_column} & set(contract.sealed) - named)


def read_below(policy: Policy, contract) -> tuple[set[str] | None, frozenset[str]]:
    """What a node below raw reading every column gets of its sealed ones: (those opened, None: all; those carried
    as stored, ``ordered_by``)."""
    only = declared_reads(policy, contract)
    carry = ordered_by(contract) if only is not None else frozenset()
    return (None if only is None else only - carry), carry


def awaiting_erasure(book, existing: pd.DataFrame | None, incoming: pd.DataFrame | None, tombstoned: set[str]) -> dict[str, int]:
    """Subjects an ingest dropped because their erasure request is still live.

    Their provenance is kept, so the erasure run still visits this partition (and scrubs the
    landing copies, retrains, certifies what it did) instead of finding "no data".
    """
    frames = [f[["subject_key"]] for f in (existing, incoming) if f is not None and not f.empty]
    if not frames or not tombstoned:
        return {}
    counts = pd.concat(frames)["subject_key"].value_counts()
    counts = counts[counts.index.isin(tombstoned)]
    return {k: int(n) for k, n in counts.items() if book.requests.live_for(k) is not None}


def unlisted_finding(env: Env, node: Node, partition: str, manifest: bk.Manifest | None, subject_key: str, cache: dict) -> Finding:
    """What the lake stores, not what the manifest lists: no bucket file outside the manifest holds the subject
    (the partition listed once per proof batch)."""
    if ("unlisted", node.name, partition) not in cache:
        cache[("unlisted", node.name, partition)] = bk.unlisted(env.lake, node.name, partition, manifest)
    names = cache[("unlisted", node.name, partition)]
    holding, unreadable = bk.unlisted_holding(env.lake, names, subject_key)
    bad = holding + unreadable
    detail = (f"{', '.join(bad[:3])}: {'holds the subject' if holding else 'cannot be read'}, outside the manifest (restored or "
              "left by a crash); `erasure-pipeline housekeeping --lake` removes it, as does the next write of the partition"
              if bad else f"{len(names)} unlisted files, none holding the subject")
    return Finding("no object outside the partition's manifest holds the subject", f"{node.name}[{partition}]", not bad, detail)


def proof_manifest(env: Env, name: str, partition: str, cache: dict) -> bk.Manifest | None:
    """A raw partition's bucket manifest as a proof batch reads it: once per batch (every subject's proof asks)."""
    if ("manifest", name, partition) not in cache:
        cache[("manifest", name, partition)] = bk.read_manifest(env.lake, name, partition)
    return cache[("manifest", name, partition)]


def key_counts(keys: pd.Series | pa.ChunkedArray) -> dict[str, int]:
    """Rows per subject key, rows without a subject left out: counted by Arrow (pandas' count, read back item by item,
    took 3.8 × as long for 13 000 Arrow-backed keys, 1.3 × for Python strings). An Arrow-backed Series converts to a
    ChunkedArray already: wrapping that in ``pa.chunked_array([...])`` read it back item by item (47 ms for 64 000
    keys against 1.4 ms for the count)."""
    if not isinstance(keys, pa.ChunkedArray):
        keys = pa.array(keys, from_pandas=True)
        keys = keys if isinstance(keys, pa.ChunkedArray) else pa.chunked_array([keys])
    if pa.types.is_dictionary(keys.type):
        keys = keys.cast(keys.type.value_type)
    counted = pc.value_counts(keys)
    out = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))
    out.pop(None, None)
    out.pop(NO_SUBJECT, None)
    return out

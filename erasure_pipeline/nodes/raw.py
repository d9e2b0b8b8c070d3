"""Raw lake partitions: one landing table's rows of one shard, keyed by ``subject_key``.

Ingest: the existing partition, upserted with this shard's rows from landing, minus tombstoned
subjects. Erasure: the existing partition minus tombstoned subjects, and nothing new (an erasure
never mixes in fresh data). Rebuild: the partition made afresh from every landing file. Either way
the written partition is read back, checked, and its per-subject footprint written to provenance.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from erasure_pipeline import contracts
from erasure_pipeline.nodes import NodeResult, NodeRun, finish, tombstone_check
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.storage.landing import read_landing_table, scrub_landing
from erasure_pipeline.tombstones import Tombstones, mentioned_keys


def retention_cutoff(policy: Policy, book, as_of: dt.datetime | None) -> dt.datetime | None:
    """The latest of this run's cutoff and every earlier cycle's (cutoffs only move forward)."""
    times = [b["as_of"] for b in book.landing_batches() if b["kind"] == "cycle"]
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
    return df[~old].reset_index(drop=True), int(old.sum())


def oldest(df: pd.DataFrame, contract: contracts.TableContract) -> dt.datetime | None:
    cols = contract.timestamps
    if not cols or df.empty or cols[0] not in df:
        return None
    return pd.to_datetime(df[cols[0]], utc=True).min().to_pydatetime()


def _awaiting_erasure(book, existing: pd.DataFrame | None, incoming: pd.DataFrame | None, tombstoned: set[str]) -> dict[str, int]:
    """Subjects an ingest dropped because their erasure request is still live.

    Their provenance is kept, so the erasure run still visits this partition (and scrubs the
    landing copies, retrains, certifies what it did) instead of finding "no data".
    """
    frames = [f[["subject_key"]] for f in (existing, incoming) if f is not None and not f.empty]
    if not frames or not tombstoned:
        return {}
    counts = pd.concat(frames)["subject_key"].value_counts()
    counts = counts[counts.index.isin(tombstoned)]
    return {k: int(n) for k, n in counts.items() if book.live_request_for(k) is not None}


def consent_changes(existing: pd.DataFrame | None, written: pd.DataFrame, policy: Policy) -> dict[str, bool]:
    """Subjects whose training consent flipped between the old and the new partition."""
    from erasure_pipeline.ml.features import consenting

    if existing is None or existing.empty or written.empty or policy.consent.column is None or policy.consent.column not in written:
        return {}
    before = pd.Series(consenting(existing, policy).to_numpy(), index=existing["subject_key"].to_numpy())
    after = pd.Series(consenting(written, policy).to_numpy(), index=written["subject_key"].to_numpy())
    both = before.index.intersection(after.index)
    flipped = both[before.loc[both].to_numpy() != after.loc[both].to_numpy()]
    return {k: bool(after.loc[k]) for k in flipped}


def rewrite_partition(existing: pd.DataFrame | None, incoming: pd.DataFrame | None, id_column: str, tombstoned: set[str]) -> tuple[pd.DataFrame, int]:
    """Upsert ``incoming`` into ``existing`` by id, drop tombstoned subjects, sort by id."""
    frames = [f for f in (existing, incoming) if f is not None and not f.empty]
    if not frames:
        return (existing if existing is not None else pd.DataFrame()), 0
    both = pd.concat(frames, ignore_index=True).drop_duplicates(subset=[id_column], keep="last")
    keep = ~both["subject_key"].isin(tombstoned)
    out = both[keep].sort_values(id_column, kind="stable").reset_index(drop=True)
    return out, int((~keep).sum())


def _write(run: NodeRun, df: pd.DataFrame, previous: str | None) -> str:
    """Write the partition unless it is byte for byte what is stored (no new object version)."""
    data = lk.table_to_bytes(df)
    digest = lk.content_hash(data)
    if digest != previous:
        run.env.lake.write_bytes(lk.table_name(run.node.name, run.partition), data)
    return digest


def compute_raw(run: NodeRun) -> NodeResult:
    env, node, partition, shard = run.env, run.node, run.partition, run.shard
    table = node.table
    store, book, policy = env.lake, env.ledger, env.policy
    contract = contracts.contracts_for(policy)[table]
    features_dataset = table == policy.features.dataset
    # Tombstones are read at materialisation time, after any intake that committed before: of this
    # shard under the current identity rule, and of any shard under an earlier rule.
    stones = Tombstones.load(book, env.keyer, shard)
    existing, before_hash = lk.read_table_and_hash(store, node.name, partition)
    base = None if run.mode == "rebuild" else existing
    incoming = None
    if run.mode in ("ingest", "rebuild"):
        check = (lambda frame, name: contracts.check_labels(frame, name, policy)) if features_dataset else None
        files = run.landing_files if run.mode == "ingest" else None
        rows = read_landing_table(env.landing, contract, env.keyer, files, check=check)
        if not rows.empty:
            incoming = rows[rows["shard"] == shard].drop(columns=["shard"])
    tombstoned = stones.keys_in([base, incoming], contract.subject_column)
    result, dropped = rewrite_partition(base, incoming, contract.id_column, tombstoned)
    # Another subject's text may quote an erased subject's id: redact it (ids of every shard).
    result, redacted = Tombstones.load(book, env.keyer).redact(result, contract.texts)
    cutoff = retention_cutoff(policy, book, run.as_of) if run.mode != "erasure" else None
    result, expired = apply_retention(result, contract, cutoff)
    if result.empty and not result.columns.size:
        result = pd.DataFrame({"subject_key": pd.Series(dtype=str), contract.id_column: pd.Series(dtype=str)})
    after_hash = _write(run, result, before_hash)
    # A request filed while this step ran: its tombstone committed after we read the list.
    # Re-read after the write and rewrite until no late tombstone is in the partition.
    for _ in range(5):
        late = Tombstones.load(book, env.keyer, shard).keys_in([result], contract.subject_column) - tombstoned
        tombstoned |= late
        if not late or not result["subject_key"].isin(late).any():
            break
        result, more = rewrite_partition(result, None, contract.id_column, tombstoned)
        dropped += more
        after_hash = _write(run, result, after_hash)
    purged, scrubbed = [], []
    if run.purges_versions or expired:
        purged = store.purge_noncurrent(lk.table_name(node.name, partition))
    if run.mode == "erasure":
        scrubbed = scrub_landing(env.landing, contract, Tombstones.load(book, env.keyer))
    elif (incoming is not None and incoming["subject_key"].isin(tombstoned).any()) or redacted:
        # A source sent an erased subject (or their id in a text) again: the landing copy loses them too.
        scrubbed = scrub_landing(env.landing, contract, Tombstones.load(book, env.keyer), run.landing_files)
    written = lk.require_table(store, node.name, partition)
    footprint = written["subject_key"].value_counts().to_dict()
    # Someone else's text that names a subject (their e-mail) holds that subject's data too: the
    # erasure run visits this partition for them and redacts it, even when they live in another shard.
    for key, n in mentioned_keys(written, contract.texts, env.keyer).items():
        footprint.setdefault(key, n)
    if run.mode != "erasure":
        footprint.update(_awaiting_erasure(book, existing, incoming, tombstoned))
    consent = consent_changes(existing, written, policy) if features_dataset else {}
    finish(run, after_hash, provenance=footprint, stats=(len(written), oldest(written, contract)), consent=(shard, consent),
           retention={"rows": expired, "cutoff": cutoff.isoformat(), "noncurrent_versions_purged": len(purged)} if expired else None)
    run.log(f"{node.name}[{partition}] {run.mode}: {len(written)} rows, {dropped} tombstoned rows dropped, "
            f"{expired} rows past retention, {len(consent)} consent changes")
    return NodeResult(
        data_version=after_hash,
        previous=None,
        metadata={
            "mode": run.mode,
            "rows": len(written),
            "subjects": int(written["subject_key"].nunique()),
            "rows_added": 0 if incoming is None else len(incoming),
            "tombstoned_rows_dropped": dropped,
            "tombstoned_ids_redacted_in_text": redacted,
            "rows_past_retention": expired,
            "retention_cutoff": cutoff.isoformat() if cutoff else "",
            "consent_changes": len(consent),
            "noncurrent_versions_purged": len(purged),
            "landing_files_scrubbed": len(scrubbed),
            "content_hash": after_hash,
            "previous_content_hash": before_hash or "",
            "lake": store.describe(),
        },
        checks=(tombstone_check(written["subject_key"], tombstoned),),
    )


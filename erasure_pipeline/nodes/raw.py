"""Raw lake partitions: one dataset's rows of one shard, keyed by ``subject_key``, in bucket files.

Ingest: the buckets that receive rows (from the batch's staging area, or landing when materialised
by hand) are upserted, minus tombstoned subjects; buckets holding rows past retention lose them.
Erasure: only the buckets holding the erased subjects (and, for text, the buckets whose text names
them) are rewritten without them, and nothing new comes in. Rebuild: every bucket made afresh.
Each rewritten bucket is read back and checked; provenance changes for the subjects in those buckets
only; old object versions are purged when an erasure or retention removed rows.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from erasure_pipeline import contracts
from erasure_pipeline.nodes import NodeResult, NodeRun, finish, tombstone_check
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage import buckets as bk
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.storage.landing import read_landing_table, read_staged, scrub_landing, scrub_staging, scrub_subjects
from erasure_pipeline.tombstones import Tombstones, mentions_by_row


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


def consent_changes(existing: pd.DataFrame | None, written: pd.DataFrame, policy: Policy) -> dict[str, bool]:
    """Subjects whose training consent flipped between the old and the new rows."""
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
    both = pd.concat(frames, ignore_index=True).drop_duplicates(subset=[id_column], keep="last") if len(frames) > 1 else frames[0]
    keep = ~both["subject_key"].isin(tombstoned)
    out = both[keep].sort_values(id_column, kind="stable").reset_index(drop=True)
    return out, int((~keep).sum())


def _incoming(run: NodeRun, contract) -> pd.DataFrame | None:
    """This shard's new rows: from the batch's staging area (one pass over landing), else from landing."""
    if run.mode not in ("ingest", "rebuild"):
        return None
    policy = run.env.policy
    check = (lambda frame, name: contracts.check_labels(frame, name, policy)) if contract.name == policy.features.dataset else None
    if run.staged is not None:
        return read_staged(run.env.lake, run.staged, contract, run.shard)
    rows = read_landing_table(run.env.landing, contract, run.env.keyer, run.landing_files if run.mode == "ingest" else None, check=check)
    return None if rows.empty else rows[rows["shard"] == run.shard].drop(columns=["shard"])


def _erasing(run: NodeRun, manifest: bk.Manifest | None, contract) -> tuple[set[str], set[int]]:
    """(keys this erasure removes here, buckets to rewrite): the run's subjects this partition holds, by
    the ledger's provenance; their buckets; and the buckets whose text names a tombstoned subject."""
    book, keyer, B = run.env.ledger, run.env.keyer, run.env.policy.lake.buckets
    keys = book.tombstoned_in(run.node.name, run.partition)
    if run.subjects is not None:
        keys &= set(run.subjects)
    touched = {bk.bucket_of(k, B) for k in keys if keyer.shard(k) == run.shard}
    if contract.texts and manifest is not None:
        for k in keys:
            touched.update(manifest.mentioning(k))
    return keys, touched & set(manifest.buckets) if manifest is not None else set()


def compute_raw(run: NodeRun) -> NodeResult:
    env, node, partition, shard = run.env, run.node, run.partition, run.shard
    store, book, policy, keyer = env.lake, env.ledger, env.policy, env.keyer
    contract = contracts.contracts_for(policy)[node.table]
    B = policy.lake.buckets
    features_dataset = node.table == policy.features.dataset
    timestamp = contract.timestamps[0] if contract.timestamps else None
    # Tombstones are read at materialisation time, after any intake that committed before: of this
    # shard under the current identity rule, and of any shard under an earlier rule.
    stones = Tombstones.load(book, keyer, shard)
    everyone = Tombstones.load(book, keyer)
    previous = bk.read_manifest(store, node.name, partition)
    # Laid out with another bucket count than the policy now gives (lake.buckets changed, no rebuild
    # yet): a subject's bucket is not where the new count puts it, so read it whole and lay it out anew.
    relayout = previous is not None and run.mode != "rebuild" and \
        (previous.of not in (0, B) or any(b >= B for b in previous.buckets))
    cutoff = retention_cutoff(policy, book, run.as_of) if run.mode != "erasure" else None
    incoming = _incoming(run, contract)
    if incoming is not None and not incoming.empty:
        incoming = incoming.assign(_b=bk.buckets_of(incoming["subject_key"], B))

    erasing: set[str] = set()
    if run.mode == "rebuild" or previous is None or relayout:
        touched = set(range(B))
        if relayout and run.mode == "erasure":
            erasing = _erasing(run, previous, contract)[0]
    elif run.mode == "erasure":
        erasing, touched = _erasing(run, previous, contract)
    else:
        touched = set() if incoming is None else set(np.unique(incoming["_b"]).tolist())
        if cutoff is not None and timestamp:
            touched |= {b for b, i in previous.buckets.items() if i.oldest and pd.Timestamp(i.oldest) < pd.Timestamp(cutoff)}

    # Every touched bucket at once (one read, one pass of pandas), split by bucket only to write.
    old = None if run.mode == "rebuild" or previous is None or not touched else \
        bk.read_buckets(store, node.name, partition, None if relayout else sorted(touched), previous)
    new = None if incoming is None or incoming.empty else incoming[incoming["_b"].isin(list(touched))].drop(columns=["_b"])
    if new is not None and new.empty:
        new = None
    tombstoned = stones.keys_in([old, new], contract.subject_column)
    result, dropped = rewrite_partition(old, new, contract.id_column, tombstoned)
    # Another subject's text may quote an erased subject's id: redact it (ids of every shard).
    result, redacted = everyone.redact(result, contract.texts)
    result, expired = apply_retention(result, contract, cutoff)
    consent = consent_changes(old, result, policy) if features_dataset else {}
    in_bucket = bk.buckets_of(result["subject_key"], B) if len(result) else np.zeros(0, dtype=np.int64)
    rows_of = pd.Series(np.arange(len(in_bucket))).groupby(in_bucket).indices if len(in_bucket) else {}
    frames = {b: result.take(rows_of[b]).reset_index(drop=True) if b in rows_of else result.iloc[0:0] for b in sorted(touched)}
    named: set[str] = set()  # every subject a rewritten bucket's text names, before or after
    mentions: dict[int, list[str]] = {}
    if contract.texts:
        per_row = mentions_by_row(result, contract.texts, keyer)
        for b, keys in zip(in_bucket.tolist(), per_row, strict=True):
            mentions.setdefault(b, []).extend(k[: bk.PREFIX_CHARS] for k in keys)
            named.update(keys)
        named.update(k for ks in mentions_by_row(old, contract.texts, keyer) for k in ks)
    if previous is not None and run.mode != "rebuild" and not relayout:
        mentions = {**{b: i.mentions for b, i in previous.buckets.items() if b not in frames}, **mentions}
    manifest, changed = bk.write_buckets(store, node.name, partition, frames, previous, timestamp=timestamp,
                                         of=B, mentions=mentions, replace_all=run.mode == "rebuild" or previous is None or relayout)
    # A request filed while this step ran: its tombstone committed after we read the list.
    # Re-read after the write and rewrite until no late tombstone is in what was written.
    for _ in range(5):
        late = Tombstones.load(book, keyer, shard).current - stones.current
        hit = {b for b, df in frames.items() if not df.empty and df["subject_key"].isin(late).any()}
        if not hit:
            break
        stones = Tombstones.load(book, keyer, shard)
        for b in hit:
            frames[b], more = rewrite_partition(frames[b], None, contract.id_column, set(late))
            dropped += more
        manifest, more_changed = bk.write_buckets(store, node.name, partition, {b: frames[b] for b in hit}, manifest,
                                                  of=B, timestamp=timestamp, mentions=mentions)
        changed = sorted(set(changed) | set(more_changed))
    # including tombstones that arrived while this step ran
    awaiting = _awaiting_erasure(book, old, new, stones.current) if run.mode != "erasure" else {}
    purged = []
    if run.purges_versions or expired:
        for b in changed:
            purged += store.purge_noncurrent(bk.object_name(node.name, partition, b))
        purged += store.purge_noncurrent(bk.manifest_name(node.name, partition))
    scrubbed = []
    if run.mode == "erasure" and erasing and run.subjects is None:  # by hand: an erasure run scrubs landing when it claims
        scrubbed = scrub_subjects(store, env.landing, {node.table: contract}, everyone, erasing, B)
        scrub_staging(store, erasing, node.table, shard)
    elif incoming is not None and (dropped or redacted) and run.landing_files is not None:
        # A source sent an erased subject (or their id in a text) again: the landing copy loses them too.
        scrubbed = scrub_landing(env.landing, contract, everyone, run.landing_files)
    # Read back: each bucket stored now is byte for byte what was written from these frames.
    for b in frames:
        if b in manifest.buckets and lk.content_hash(store.read_bytes(bk.object_name(node.name, partition, b)) or b"") != manifest.buckets[b].hash:
            raise RuntimeError(f"{node.name}[{partition}] bucket {b} changed while it was written: run it again")
    written = {b: frames[b] for b in frames if b in manifest.buckets}
    # a subject named in a rewritten text whose own rows sit in a bucket not read here keeps its record
    named = {k for k in named if keyer.shard(k) != shard or bk.bucket_of(k, B) in frames}
    footprint, scope = _provenance(written, old, named, manifest, awaiting, erasing, previous is None or run.mode == "rebuild" or relayout)
    oldest = pd.Timestamp(manifest.oldest).to_pydatetime() if manifest.oldest else None
    finish(run, manifest.version, provenance=footprint, provenance_scope=scope, stats=(manifest.rows, oldest), consent=(shard, consent),
           retention={"rows": expired, "cutoff": cutoff.isoformat(), "noncurrent_versions_purged": len(purged)} if expired else None)
    run.log(f"{node.name}[{partition}] {run.mode}: {len(frames)} of {B} buckets read, {len(changed)} rewritten; "
            f"{dropped} tombstoned rows dropped, {expired} rows past retention, {len(consent)} consent changes")
    present = pd.concat([df["subject_key"] for df in written.values() if df is not None and len(df)] or [pd.Series(dtype=str)])
    return NodeResult(
        data_version=manifest.version,
        previous=None,
        metadata={
            "mode": run.mode,
            "rows": manifest.rows,
            "subjects": manifest.subjects,
            "buckets": len(manifest.buckets),
            "buckets_rewritten": len(changed),
            "rows_added": 0 if incoming is None else len(incoming),
            "tombstoned_rows_dropped": dropped,
            "tombstoned_ids_redacted_in_text": redacted,
            "rows_past_retention": expired,
            "retention_cutoff": cutoff.isoformat() if cutoff else "",
            "consent_changes": len(consent),
            "noncurrent_versions_purged": len(purged),
            "landing_files_scrubbed": len(scrubbed),
            "content_hash": manifest.version,
            "previous_content_hash": previous.version if previous is not None else "",
            "lake": store.describe(),
        },
        checks=(tombstone_check(present, stones.current | (everyone.current & set(erasing))),),
    )


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


def _provenance(written, old: pd.DataFrame | None, named: set[str], manifest: bk.Manifest, awaiting: dict[str, int], erasing: set[str],
                whole: bool) -> tuple[dict[str, int], set[str] | None]:
    """(rows per subject in the rewritten buckets, the subjects that covers; None: the whole partition).

    A subject's count is their own rows; a subject only named in texts here counts the buckets naming them."""
    counts: dict[str, int] = {}
    for df in written.values():
        if df is not None and len(df):
            counts.update({k: int(n) for k, n in df["subject_key"].value_counts().items()})
    scope: set[str] = set(counts) | set(erasing) | named | set(awaiting)
    if old is not None and len(old):
        scope.update(old["subject_key"].unique().tolist())
    for key in named - set(counts):
        n = len(manifest.mentioning(key))
        if n:
            counts[key] = n
    counts.update({k: n for k, n in awaiting.items() if k not in counts})
    return counts, None if whole else scope

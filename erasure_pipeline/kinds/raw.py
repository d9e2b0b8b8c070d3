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
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from erasure_pipeline.core import contracts
from erasure_pipeline.core.graph import Node
from erasure_pipeline.core.identity import NO_SUBJECT
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.core.tombstones import Tombstones, mentions_by_row
from erasure_pipeline.kinds.base import (
    TOMBSTONE_CHECK,
    Env,
    Finding,
    Kind,
    NodeResult,
    NodeRun,
    finish,
    old_versions_holding,
    read_together,
    recorded_as,
    rows_changed,
    rows_found,
    sealing_for,
    tombstone_check,
    versions_before_tombstone,
)
from erasure_pipeline.kinds.raw_rows import (
    apply_retention,
    awaiting_erasure,
    carriable,
    carried_alike,
    carried_in_step,
    check_opened,
    consent_changes,
    incoming_rows,
    is_features_dataset,
    key_counts,
    lake_held,
    proof_manifest,
    read_below,
    retention_cutoff,
    rewrite_partition,
    row_key,
    sealed_as_declared,
    skeletons,
    unlisted_finding,
    without_keys,
)
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores import superseded
from erasure_pipeline.stores.landing import STAGING, scrub_landing, scrub_staging, scrub_subjects


def node_name(dataset: str) -> str:
    """The raw node of a declared dataset (what other kinds name as their parents)."""
    return f"raw_{dataset}"


@dataclass
class _Step:
    """One raw step's state, phase by phase: what it reads, rewrites and records."""

    run: NodeRun
    contract: contracts.TableContract
    stones: Tombstones
    everyone: Tombstones
    previous: bk.Manifest | None
    whole: bool
    """Every bucket laid out afresh: a rebuild, a first build, or a relayout after lake.buckets changed."""
    relayout: bool
    cutoff: dt.datetime | None
    incoming: pd.DataFrame | None
    carry: frozenset[str] = frozenset()
    """The sealed columns moved with their rows as stored, never opened (``raw_rows.carried_in_step``)."""
    retracted: pd.DataFrame | None = None
    """Rows of this shard an id sent again under another subject supersedes (``stores.superseded``)."""
    carried: dict[str, str] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    erasing: set[str] = field(default_factory=set)
    old: pd.DataFrame | None = None
    before: dict[str, int] | None = None
    """Rows per subject in the touched buckets as stored (a partial rewrite only): what the provenance diff compares."""
    new: pd.DataFrame | None = None
    frames: dict[int, pd.DataFrame] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    mentions: dict[int, list[str]] = field(default_factory=dict)
    named: set[str] = field(default_factory=set)
    manifest: bk.Manifest | None = None
    changed: list[int] = field(default_factory=list)

    @property
    def buckets(self) -> int:
        return self.run.env.policy.lake.buckets

    @property
    def timestamp(self) -> str | None:
        return self.contract.timestamps[0] if self.contract.timestamps else None


def _erasing(run: NodeRun, manifest: bk.Manifest | None, contract) -> tuple[set[str], set[int]]:
    """(keys this erasure removes here, buckets to rewrite): the run's subjects this partition holds, by
    the ledger's provenance; their buckets; and the buckets whose text names a tombstoned subject."""
    book, keyer, B = run.env.ledger, run.env.keyer, run.env.policy.lake.buckets
    keys = book.nodes.tombstoned_in(run.node.name, run.partition, run.subjects)
    touched = {bk.bucket_of(k, B) for k in keys if keyer.shard(k) == run.shard}
    if contract.texts and manifest is not None:
        for k in keys:
            touched.update(manifest.mentioning(k))
    return keys, touched & set(manifest.buckets) if manifest is not None else set()


def _plan(run: NodeRun) -> _Step:
    """What this step reads and which buckets it rewrites, decided once from the mode."""
    env, node = run.env, run.node
    contract = contracts.contracts_for(env.policy)[node.table]
    B = env.policy.lake.buckets
    # Tombstones are read at materialisation time, after any intake that committed before: of this
    # shard under the current identity rule, and of any shard under an earlier rule.
    previous = bk.read_manifest(env.lake, node.name, run.partition)
    # Laid out with another bucket count than the policy now gives (lake.buckets changed, no rebuild
    # yet): a subject's bucket is not where the new count puts it, so read it whole and lay it out anew.
    relayout = previous is not None and run.mode != "rebuild" and (previous.of not in (0, B) or any(b >= B for b in previous.buckets))
    stones = Tombstones.load(env.ledger, env.keyer, run.shard)
    carry = carried_in_step(contract, stones)
    incoming = incoming_rows(run, contract, carry)
    if incoming is not None and not incoming.empty:
        incoming = incoming.assign(_b=bk.buckets_of(incoming["subject_key"], B))
    cutoff = retention_cutoff(env.policy, env.ledger, run.as_of) if run.mode != "erasure" else None
    step = _Step(run, contract, stones, Tombstones.load(env.ledger, env.keyer), previous,
                 run.mode == "rebuild" or previous is None or relayout, relayout, cutoff, incoming, carry,
                 superseded.read(env.lake, STAGING, run.staged, contract.name, run.shard) if run.staged else None)
    if step.whole:
        step.touched = set(range(B))
        if relayout and run.mode == "erasure":
            step.erasing = _erasing(run, previous, contract)[0]
    elif run.mode == "erasure":
        step.erasing, step.touched = _erasing(run, previous, contract)
    else:
        step.touched = set() if incoming is None else set(np.unique(incoming["_b"]).tolist())
        if step.cutoff is not None and step.timestamp:
            step.touched |= {b for b, i in previous.buckets.items() if i.oldest and pd.Timestamp(i.oldest) < pd.Timestamp(step.cutoff)}
        if step.retracted is not None:
            step.touched |= set(bk.buckets_of(step.retracted["subject_key"], B).tolist()) & set(previous.buckets)
    return step


def _carried(step: _Step) -> dict[int, pa.Table] | None:
    """The touched buckets as stored, when this rewrite only removes rows (``raw_rows.carriable``); else None."""
    c = step.contract
    if step.run.mode != "erasure" or step.whole or step.previous is None or not step.touched or not carriable(c, step.stones):
        return None
    tables = bk.read_stored(step.run.env.lake, step.run.node.name, step.run.partition, step.touched, step.previous)
    return tables if all(sealed_as_declared(t, c) for t in tables.values()) else None


def _remove_rows(step: _Step, tables: dict[int, pa.Table]) -> None:
    """The carried rewrite: each bucket without the tombstoned subjects' rows, as stored otherwise."""
    keys = [_keys_of(t) for t in tables.values()]
    step.old = pd.DataFrame({"subject_key": pd.concat(keys, ignore_index=True) if keys else pd.Series(dtype=str)})
    step.before = key_counts(step.old["subject_key"])
    step.counts.update(dropped=0, redacted=0, expired=0)
    for b, table in tables.items():
        step.frames[b], removed = without_keys(table, step.stones.current)
        step.counts["dropped"] += removed
    step.mentions = {b: i.mentions for b, i in step.previous.buckets.items() if b not in step.frames}
    step.manifest, step.changed = bk.write_buckets(step.run.env.lake, step.run.node.name, step.run.partition, step.frames, step.previous,
                                                   timestamp=step.timestamp, of=step.buckets, mentions=step.mentions)


def _rewrite(step: _Step) -> None:
    """Every touched bucket at once (one read, one pass of pandas), split by bucket only to write."""
    run, contract, lake = step.run, step.contract, step.run.env.lake
    if run.mode == "erasure" and run.subjects is None and step.erasing and run.env.keys is not None:
        run.env.keys.destroy(step.erasing)  # by hand, with no claim step: the keys go first here
    carried = _carried(step)
    if carried is not None:
        _remove_rows(step, carried)
        return
    if run.mode != "rebuild" and step.previous is not None and step.touched:
        step.old = bk.read_buckets(lake, run.node.name, run.partition, None if step.relayout else sorted(step.touched), step.previous,
                                   keys=run.env.keys, carry=step.carry)
        step.before = None if step.old is None else key_counts(step.old["subject_key"])
    elif run.mode == "rebuild" and run.env.policy.landing.keep_days is not None:
        step.old = lake_held(run, contract)  # landing files expire: the lake is the record a rebuild starts from
    incoming, where = step.incoming, f"{run.node.name}[{run.partition}]"
    new = None if incoming is None or incoming.empty else incoming[incoming["_b"].isin(list(step.touched))].drop(columns=["_b"])
    (step.old, step.new), step.carried = carried_alike([step.old, None if new is not None and new.empty else new], run.env.keys, where)
    check_opened(step.old, step.everyone.current | step.stones.current, where)
    (step.old, gone), (step.new, late) = (superseded.drop(f, step.retracted, contract.id_column, run.env.keyer) for f in (step.old, step.new))
    step.counts["superseded"] = gone + late
    result, step.counts["dropped"] = rewrite_partition(step.old, step.new, row_key(contract),
                                                       step.stones.keys_in([step.old, step.new], contract.subject_column))
    # Another subject's text may quote an erased subject's id: redact it (ids of every shard).
    result, step.counts["redacted"] = step.everyone.redact(result, contract.texts)
    result, step.counts["expired"] = apply_retention(result, contract, step.cutoff)
    if is_features_dataset(run.env.policy, contract.name):
        step.consent = consent_changes(step.old, result, run.env.policy)
    in_bucket = bk.buckets_of(result["subject_key"], step.buckets) if len(result) else np.zeros(0, dtype=np.int64)
    step.frames = bk.split_by_bucket(result, in_bucket, sorted(step.touched))
    if contract.texts:  # every subject a rewritten bucket's text names, before or after
        keyer = run.env.keyer
        for b, keys in zip(in_bucket.tolist(), mentions_by_row(result, contract.texts, keyer), strict=True):
            step.mentions.setdefault(b, []).extend(k[: bk.PREFIX_CHARS] for k in keys)
            step.named.update(keys)
        step.named.update(k for ks in mentions_by_row(step.old, contract.texts, keyer) for k in ks)
    if not step.whole:
        step.mentions = {**{b: i.mentions for b, i in step.previous.buckets.items() if b not in step.frames}, **step.mentions}
    step.manifest, step.changed = bk.write_buckets(lake, run.node.name, run.partition, step.frames, step.previous, timestamp=step.timestamp,
                                                   of=step.buckets, mentions=step.mentions, replace_all=step.whole,
                                                   sealing=sealing_for(run.env, contract, step.stones.current, step.carried))


def _late_tombstones(step: _Step) -> None:
    """A request filed while this step ran: its tombstone committed after we read the list. Re-read after
    the write and rewrite until no late tombstone is in what was written."""
    run = step.run
    for _ in range(5):
        late = Tombstones.load(run.env.ledger, run.env.keyer, run.shard).current - step.stones.current
        hit = {b for b, df in step.frames.items() if len(df) and bool(_keys_of(df).isin(late).any())}
        if not hit:
            return
        step.stones = Tombstones.load(run.env.ledger, run.env.keyer, run.shard)
        for b in hit:
            if isinstance(step.frames[b], pa.Table):  # carried: filtered as stored
                step.frames[b], more = without_keys(step.frames[b], late)
            else:
                step.frames[b], more = rewrite_partition(step.frames[b], None, row_key(step.contract), set(late))
            step.counts["dropped"] += more
        step.manifest, more_changed = bk.write_buckets(run.env.lake, run.node.name, run.partition, {b: step.frames[b] for b in hit},
                                                       step.manifest, of=step.buckets, timestamp=step.timestamp, mentions=step.mentions,
                                                       sealing=sealing_for(run.env, step.contract, step.stones.current, step.carried))
        step.changed = sorted(set(step.changed) | set(more_changed))


def _clean_up(step: _Step) -> None:
    """Old object versions of what an erasure or retention removed; landing copies of erased subjects."""
    run, env, name = step.run, step.run.env, step.run.node.name
    purged = []
    # A rebuild of a sealed dataset purges too: the versions it replaces may hold the fields in the clear
    # (written before the dataset declared them personal).
    if run.purges_versions or step.counts["expired"] or (run.mode == "rebuild" and step.contract.sealed):
        for b in step.changed:
            purged += env.lake.purge_noncurrent(bk.object_name(name, run.partition, b))
        purged += env.lake.purge_noncurrent(bk.manifest_name(name, run.partition))
    scrubbed: dict[str, str] = {}
    if run.mode == "erasure" and step.erasing and run.subjects is None:  # by hand: an erasure run scrubs landing when it claims
        scrubbed = scrub_subjects(env.lake, env.landing, {step.contract.name: step.contract}, step.everyone, step.erasing, step.buckets)
        env.ledger.runs.record_landing_hashes(scrubbed, env.landing.stamps() if scrubbed else None)
        scrub_staging(env.lake, step.erasing, step.contract.name, run.shard)
    elif step.incoming is not None and (step.counts["dropped"] or step.counts["redacted"]) and run.staged is None:
        # Materialised by hand from landing (a run's claim stages and scrubs): a source sent an erased subject
        # (or their id in a text) again, so the landing files read lose them too.
        scrubbed = scrub_landing(env.landing, step.contract, step.everyone, run.landing_files if run.mode == "ingest" else None)
        env.ledger.runs.record_landing_hashes(scrubbed, env.landing.stamps() if scrubbed else None)
    # A bucket file the manifest does not list is no part of the partition: left by a crash, or restored.
    step.counts["unlisted"] = len(bk.remove_unlisted(env.lake, name, run.partition, step.manifest))
    step.counts["purged"], step.counts["scrubbed"] = len(purged), len(scrubbed)
    # Read back: each bucket stored now is byte for byte what was written from these frames.
    for b in step.frames:
        stored = env.lake.read_bytes(bk.object_name(name, run.partition, b)) or b""
        if b in step.manifest.buckets and lk.content_hash(stored) != step.manifest.buckets[b].hash:
            raise RuntimeError(f"{name}[{run.partition}] bucket {b} changed while it was written: run it again")


def _keys_of(frame: pd.DataFrame | pa.Table) -> pd.Series:
    """A written bucket's ``subject_key`` column (a frame, or a table carried as stored)."""
    return frame.column("subject_key").to_pandas() if isinstance(frame, pa.Table) else frame["subject_key"]


def _provenance(step: _Step, written: dict[int, pd.DataFrame]) -> tuple[dict[str, int], set[str] | None]:
    """(rows per subject in the rewritten buckets, the subjects that covers; None: the whole partition).

    A subject's count is their own rows; a subject only named in texts here counts the buckets naming them."""
    run, keyer = step.run, step.run.env.keyer
    # including tombstones that arrived while this step ran
    awaiting = awaiting_erasure(run.env.ledger, step.old, step.new, step.stones.current) if run.mode != "erasure" else {}
    # a subject named in a rewritten text whose own rows sit in a bucket not read here keeps its record
    named = {k for k in step.named if keyer.shard(k) != run.shard or bk.bucket_of(k, step.buckets) in step.frames}
    counts: dict[str, int] = {}
    for df in written.values():
        if df is not None and len(df):
            counts.update(key_counts(df.column("subject_key") if isinstance(df, pa.Table) else df["subject_key"]))
    scope: set[str] = set(step.erasing) | named | set(awaiting)
    # A partial rewrite of what the ledger last recorded: only the subjects whose rows changed (a write whose record
    # a crash lost: every subject of the buckets again, so the provenance is made whole).
    if not step.whole and step.before is not None and recorded_as(run, step.previous.version):
        scope |= rows_changed(step.before, counts)
    else:
        scope.update(counts)
        if step.old is not None and len(step.old):
            scope.update(step.old["subject_key"].unique().tolist())
    if step.retracted is not None:  # a subject whose only row here moved to another subject holds nothing here now
        scope.update(k for k in step.retracted["subject_key"] if bk.bucket_of(k, step.buckets) in step.frames)
    mentioned = {k: len(step.manifest.mentioning(k)) for k in named - set(counts)}
    if not step.whole:
        counts = {k: counts[k] for k in scope if k in counts}
    counts.update({k: n for k, n in mentioned.items() if n})
    counts.update({k: n for k, n in awaiting.items() if k not in counts})
    return counts, None if step.whole else scope


def _result(step: _Step, present: pd.Series) -> NodeResult:
    run, manifest, c = step.run, step.manifest, step.counts
    return NodeResult(manifest.version, None, {
        "mode": run.mode,
        "rows": manifest.rows,
        "subjects": manifest.subjects,
        "buckets": len(manifest.buckets),
        "buckets_rewritten": len(step.changed),
        "rows_added": 0 if step.incoming is None else len(step.incoming),
        "rows_without_subject_added": 0 if step.incoming is None else int((step.incoming["subject_key"] == NO_SUBJECT).sum()),
        "tombstoned_rows_dropped": c["dropped"],
        "tombstoned_ids_redacted_in_text": c["redacted"],
        "rows_superseded_under_another_subject": c.get("superseded", 0),
        "rows_past_retention": c["expired"],
        "retention_cutoff": step.cutoff.isoformat() if step.cutoff else "",
        "consent_changes": len(step.consent),
        "noncurrent_versions_purged": c["purged"],
        "landing_files_scrubbed": c["scrubbed"],
        "unlisted_objects_removed": c.get("unlisted", 0),
        "content_hash": manifest.version,
        "previous_content_hash": step.previous.version if step.previous is not None else "",
        "lake": run.env.lake.describe(),
    }, (tombstone_check(present, step.stones.current | (step.everyone.current & set(step.erasing))),))


class Raw(Kind):
    name = "raw"
    action = "RAW_REWRITE"

    def nodes(self, policy: Policy) -> list[Node]:
        return [Node(node_name(name), self.name, "raw", True, reads=("shards", "identity", "lake", f"datasets.{name}"), action=self.action,
                     subject_rows=True, table=name, expires=spec.timestamp is not None, checks=(TOMBSTONE_CHECK,), kinds=("parquet",),
                     description=f"Landing `{name}` rows of one shard, keyed by `subject_key` (from `{spec.subject}`), minus tombstoned subjects.")
                for name, spec in policy.datasets.items() if not spec.is_lookup]

    def compute(self, run: NodeRun) -> NodeResult:
        step = _plan(run)
        _rewrite(step)
        _late_tombstones(step)
        _clean_up(step)
        written = {b: step.frames[b] for b in step.frames if b in step.manifest.buckets}
        footprint, scope = _provenance(step, written)
        manifest, c = step.manifest, step.counts
        oldest = pd.Timestamp(manifest.oldest).to_pydatetime() if manifest.oldest else None
        finish(run, manifest.version, provenance=footprint, provenance_scope=scope, stats=(manifest.rows, oldest),
               skeletons=skeletons(step.new, step.contract, run.env.keyer, run.env.keys, step.carried),
               consent=(run.shard, step.consent), retention={"rows": c["expired"], "cutoff": step.cutoff.isoformat(),
                                                             "noncurrent_versions_purged": c["purged"]} if c["expired"] else None)
        run.log(f"{run.node.name}[{run.partition}] {run.mode}: {len(step.frames)} of {step.buckets} buckets read, {len(step.changed)} "
                f"rewritten; {c['dropped']} tombstoned rows dropped, {c['expired']} rows past retention, {len(step.consent)} consent changes")
        present = pd.concat([_keys_of(df) for df in written.values() if df is not None and len(df)] or [pd.Series(dtype=str)])
        return _result(step, present)

    def object_name(self, node: Node, partition: str | None) -> str:
        return bk.manifest_name(node.name, partition)

    def read_rows(self, env: Env, node: Node, partition: str, *, buckets: Iterable[int] | None = None,
                  columns: list[str] | None = None, cache: bool = False) -> pd.DataFrame | None:
        only, carry = read_below(env.policy, contracts.contracts_for(env.policy)[node.table]) if columns is None else (None, frozenset())
        return bk.read_buckets(env.lake, node.name, partition, buckets, columns=columns, cache=cache, keys=env.keys, only=only, carry=carry)

    def stored_version(self, env: Env, node: Node, partition: str | None) -> str | None:
        return bk.stored_version(env.lake, node.name, partition)

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        """No rows of the subject in their bucket or its old versions (either layout); no manifest version before the request."""
        target, B = f"{node.name}[{partition}]", env.policy.lake.buckets
        manifest = proof_manifest(env, node.name, partition, cache)
        def keys_of(together: frozenset[str]) -> dict[str, int]:  # every batch subject's bucket here, keys only (nothing opened)
            rows = self.read_rows(env, node, partition, columns=["subject_key"],
                                  buckets=sorted({manifest.bucket_of(k, B) for k in together}) if manifest is not None else None)
            return {} if rows is None else key_counts(rows["subject_key"])
        held = read_together(cache, ("raw_keys", node.name, partition), partition, subject_key, keys_of)
        layouts = {B, *((manifest.of,) if manifest is not None and manifest.of else ())}
        names = [bk.object_name(node.name, partition, b) for b in sorted({bk.bucket_of(subject_key, n) for n in layouts})]
        return [rows_found(int(held.get(subject_key, 0)), target), old_versions_holding(env, names, subject_key, target),
                versions_before_tombstone(env, self.object_name(node, partition), subject_key),
                unlisted_finding(env, node, partition, manifest, subject_key, cache)]

"""What a run claims and which nodes each of its shards runs: its plan. No Dagster import.

Every job has the same three stages: a claim, one step per touched shard, one merge step. The claim is
the run's first act: it takes its requests (an erasure) or its landing files (a cycle, a full build, a
rebuild) in one ledger transaction, then plans. Whether another run holding them is alive is the
Dagster layer's judgement, passed in as ``is_live``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from erasure_pipeline.core import identity
from erasure_pipeline.core.contracts import contracts_for
from erasure_pipeline.core.tombstones import Tombstones
from erasure_pipeline.kinds.base import Env, NodeResult
from erasure_pipeline.kinds.raw_rows import declared_reads
from erasure_pipeline.kinds.staleness import expired_partitions
from erasure_pipeline.ledger.pending_keys import PendingKeys
from erasure_pipeline.ml.labels import check_labels
from erasure_pipeline.stores import superseded
from erasure_pipeline.stores.lake import content_hash
from erasure_pipeline.stores.landing import STAGING, Staged, landing_files, scrub_staging, scrub_subjects, stage

IsLive = Callable[[str, dict | None], bool]


@dataclass(frozen=True)
class ShardWork:
    shard: int
    forced: tuple[str, ...]
    mode: str
    landing_files: tuple[str, ...] | None = None
    as_of: str | None = None
    staged: str | None = None
    """The batch whose staging area holds this shard's new rows (one pass over landing wrote it)."""
    subjects: tuple[str, ...] | None = None
    """An erasure's subject keys (of every shard: text naming them may live in another)."""
    derived_only: bool = False
    """A shard this run visits only because derived nodes there are stale (a policy change): the merges it
    builds must not read them so. Its raw nodes are left to an ingest or a backfill (they need landing)."""

    @property
    def partition(self) -> str:
        return identity.partition_key(self.shard)


@dataclass(frozen=True)
class NodeOutcome:
    node: str
    partition: str | None
    before: str | None
    after: str
    details: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class RunPlan:
    kind: str
    batch_id: str
    claimed: bool
    holder: str | None = None
    works: tuple[ShardWork, ...] = ()
    forced_merges: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    footprints: dict = field(default_factory=dict)
    """Erasure: request id -> {node: {partition: rows}} of the subject when the run claimed it (provenance)."""
    resumed: tuple[str, ...] = ()
    landing_scrubbed: int = 0
    """Erasure: landing files rewritten without the batch's subjects when it was claimed (an ingest: by its staging)."""
    in_review: tuple[str, ...] = ()
    """Erasure: requests with no data under their own id while look-alike ids hold data: they wait for a person."""
    skipped: tuple[str, ...] = ()
    """Requests the batch named that the claim did not take (held, completed, or another live run's)."""
    without_subject: dict = field(default_factory=dict)
    """An ingest: rows whose subject column was empty, by dataset (dropped or kept, as each declares)."""
    prepares: tuple[str, ...] = ()
    """An ingest: the lookup tables its claim step computes before the shard steps (new files, a rebuild)."""
    unmatched: tuple[str, ...] = ()
    """An ingest: landing files that belong to no declared dataset (listed, never read)."""
    carried: tuple[str, ...] = ()
    """Erasure: requests an earlier run planned (it failed or died): it may have rewritten their data already, so
    what changes now is no measure of what held them; their footprint is the one kept since then."""


STAGING_THREADS = 2
"""Landing files an ingest's claim stages at once (``landing.stage``; measured on 2 cores: 2 threads 1.19 x faster than 1, 3 no faster)."""
CERTIFICATE_DETAILS = ("noncurrent_versions_purged", "landing_files_scrubbed", "points_deleted_by_subject_filter", "rows")


def outcome_of(node: str, partition: str | None, result: NodeResult) -> NodeOutcome:
    return NodeOutcome(node, partition, result.previous, result.data_version,
                       {k: result.metadata[k] for k in CERTIFICATE_DETAILS if k in result.metadata})


def as_of_time(value: str | None) -> dt.datetime:
    """A cycle's time from its run config (ISO 8601; naive means UTC); now when absent."""
    if not value:
        return dt.datetime.now(dt.UTC)
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def claim_erasure(env: Env, batch_id: str, request_ids: list[str], run_id: str, *, is_live: IsLive, host: str, pid: int,
                  plan: bool = True) -> RunPlan:
    """Claim the requests for ``run_id`` and (``plan``) scrub landing and plan the shards. The CLI's
    pre-claim passes ``plan=False``: the run's claim step, same run id, claims again and does the work."""
    book = env.ledger
    claim = book.runs.claim_erasure(batch_id, request_ids, run_id, is_live=is_live, host=host, pid=pid)
    if claim.outcome != "claimed" or not plan:
        return RunPlan("erasure", batch_id, claim.outcome == "claimed", claim.holder if claim.outcome != "claimed" else run_id)
    requests = {r["request_id"]: r for r in book.requests.by_ids(claim.request_ids)}
    by_key: dict[str, dict[str, dict[str, int]]] = {}
    forced: dict[int, set[str]] = {}
    for row in book.nodes.provenance_for([r["subject_key"] for r in requests.values()]):
        # the partitions that hold the subject: their own shard's, and text naming them elsewhere
        by_key.setdefault(row["subject_key"], {}).setdefault(row["asset"], {})[row["partition"]] = int(row["rows"])
    # A request an earlier run planned (and may have rewritten in part) keeps what it was found in then.
    # (Of nodes and partitions the graph still has: a reshard since then rewrote every partition anyway.)
    known, partitions = {n.name for n in env.graph.nodes}, set(env.graph.partitions)
    footprints = {rid: _union({a: {p: n for p, n in parts.items() if p in partitions} for a, parts in r["footprint"].items() if a in known},
                              by_key.get(r["subject_key"], {})) for rid, r in requests.items()}
    before = {rid: r["footprint"] for rid, r in requests.items()}
    book.requests.remember_footprints({rid: fp for rid, fp in footprints.items() if fp and fp != before[rid]})
    for fp in footprints.values():
        for asset, parts in fp.items():
            for partition in parts:
                forced.setdefault(identity.shard_from_partition(partition), set()).add(asset)
    in_review = _look_alikes(env, [r for rid, r in requests.items() if not footprints[rid]], run_id)
    requests = {rid: r for rid, r in requests.items() if rid not in in_review}
    keys = tuple(sorted(r["subject_key"] for r in requests.values()))
    # Their data keys first: from now on no copy of their sealed fields, in any store or backup, opens.
    if env.keys is not None:
        env.keys.destroy(keys)
    # Landing copies next, each file rewritten once for the whole batch; and any staged copy of an
    # ingest that has not finished.
    stones = Tombstones.load(book, env.keyer)
    scrubbed = scrub_subjects(env.lake, env.landing, contracts_for(env.policy), stones, keys, env.policy.lake.buckets)
    scrub_staging(env.lake, set(keys))
    book.runs.record_landing_hashes(scrubbed, env.landing.stamps() if scrubbed else None)
    works = tuple(ShardWork(s, tuple(env.graph.ordered(nodes)), "erasure", subjects=keys) for s, nodes in sorted(forced.items()))
    works += _stale_derived(env, {w.shard for w in works}, "rebuild")
    skipped = tuple(rid for rid in dict.fromkeys(request_ids) if rid not in claim.request_ids)
    carried = tuple(rid for rid in requests if before[rid])
    return RunPlan("erasure", batch_id, True, run_id, works, (), tuple(requests), {rid: footprints[rid] for rid in requests},
                   claim.resumed, len(scrubbed), tuple(in_review), skipped, carried=carried)


def _union(*footprints: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Footprints (asset -> partition -> rows) joined: every partition any of them names, its largest count."""
    out: dict[str, dict[str, int]] = {}
    for fp in footprints:
        for asset, parts in fp.items():
            for partition, rows in parts.items():
                mine = out.setdefault(asset, {})
                mine[partition] = max(int(rows), mine.get(partition, 0))
    return out


def _look_alikes(env: Env, no_data: list[dict], run_id: str) -> list[str]:
    """Of requests that find no data under their own key, those whose id's look-alikes (same skeleton) hold data
    and that no person has reviewed yet: moved to ``needs_review`` rather than certified as having no data."""
    found = {}
    for r in no_data:
        if r["skeleton_key"] and not r["review"]:
            alikes = env.ledger.nodes.look_alikes(r["skeleton_key"], r["subject_key"])
            if alikes:
                found[r["request_id"]] = len(alikes)
    return env.ledger.requests.to_review(list(found), run_id, found) if found else []


def claim_landing(env: Env, batch_id: str, kind: str, files: list[str] | None, as_of: dt.datetime, run_id: str,
                  stale: dict[str, set[str | None]] | None = None, *, is_live: IsLive, host: str, pid: int, plan: bool = True) -> RunPlan:
    """Take the landing files of an ingest (``cycle``: the new ones; ``full``/``rebuild``: every file)
    and (``plan``) stage them in one pass and plan each shard: raw nodes that receive rows or hold rows
    past retention, plus stale nodes. ``plan=False``: the CLI's pre-claim, as in ``claim_erasure``."""
    graph, policy = env.graph, env.policy
    present = [f for f in landing_files(env.landing, contracts_for(policy)) if files is None or f.name in files]
    stamps = env.landing.stamps()
    entries = [(f.name, f.table, content_hash(env.landing.read_bytes(f.name) or b""), stamps.get(f.name)) for f in present]
    claim = env.ledger.runs.claim_landing(batch_id, kind, entries, as_of, run_id, is_live=is_live, host=host, pid=pid)
    if claim.outcome != "claimed" or not plan:
        return RunPlan(kind, batch_id, claim.outcome == "claimed", claim.holder if claim.outcome != "claimed" else run_id)
    staged = None
    if kind != "rebuild" or any(graph.node(n).table is not None for n in (stale or {})):
        # One pass over the batch's landing files: each read once, its rows staged per shard, indexed.
        def check(frame, f) -> None:
            if policy.features is not None and f.table == policy.features.dataset:
                check_labels(frame, f.name, policy)

        # The sealing lookups keep the cells a later step opens, not those the raw steps carry sealed (at 1 000 000
        # subjects the demo's names and phones alone would fill them twice over, and evict the ids the raw steps
        # open). By column name: a cell is (data key, column, value), so events.subject_id's cells are the ones
        # subjects.subject_id's readers open (events are staged first).
        reads = [declared_reads(policy, c) for c in contracts_for(policy).values()]
        opened_later = None if any(r is None for r in reads) else frozenset().union(*reads)
        # New subjects' data keys are stored together once every file is staged (``PendingKeys``), before anything
        # reads what was staged under them.
        keys = PendingKeys(env.keys) if env.keys is not None else None
        staged = stage(env.lake, env.landing, present, env.keyer, batch_id, policy.lake.buckets, check, Tombstones.load(env.ledger, env.keyer),
                       keys, workers=STAGING_THREADS, remember=opened_later)
        if keys is not None:
            keys.commit()
        # The staged subjects' look-alike skeletons, in one transaction before any raw step records their rows.
        env.ledger.nodes.keep_skeletons(staged.skeletons)
        env.ledger.runs.record_landing_hashes(staged.scrubbed, env.landing.stamps() if staged.scrubbed else None)
        _retract(env, staged, lake_is_record=kind != "rebuild" or policy.landing.keep_days is not None)
    forced = _forced(env, kind, staged, as_of, stale or {})
    mode = "rebuild" if kind == "rebuild" else "ingest"
    names = None if files is None else tuple(f.name for f in present)
    works = tuple(ShardWork(s, tuple(graph.ordered(nodes)), mode, names, as_of.isoformat(), staged.batch if staged else None)
                  for s, nodes in sorted(forced.items()) if nodes or kind == "full")
    works += _stale_derived(env, {w.shard for w in works}, mode)
    merges = tuple(n for n in (stale or {}) if not graph.node(n).partitioned and not graph.node(n).prepare)
    lookups = {f.table for f in present if f.contract.is_lookup}
    prepares = tuple(n.name for n in graph.prepare_nodes if kind == "full" or n.table in lookups or n.name in (stale or {}))
    return RunPlan(kind, batch_id, True, run_id, works, merges, landing_scrubbed=len(staged.scrubbed) if staged else 0,
                   without_subject=dict(staged.without_subject) if staged else {}, prepares=prepares,
                   unmatched=tuple(unmatched_files(env)))


def _retract(env: Env, staged: Staged, lake_is_record: bool) -> None:
    """Stage the retractions of ids this batch sends under another subject than before (``stores.superseded``);
    the shards holding the rows they supersede join the batch's shards, so their raw steps run."""
    contracts, raw_of = contracts_for(env.policy), {n.table: n for n in env.graph.raw_nodes}
    for table, seen in staged.sightings.items():
        contract, node = contracts[table], raw_of[table]
        held = superseded.lake_rows(env.lake, node.name, env.graph.partitions, contract.id_column, env.keys) if lake_is_record else None
        shards = superseded.resolve(env.lake, STAGING, staged.batch, contract, seen, env.keyer, held)
        if shards:
            staged.shards.setdefault(table, set()).update(shards)


def _stale_derived(env: Env, visited: set[int], mode: str) -> tuple[ShardWork, ...]:
    """A step for each shard the run does not otherwise visit whose derived nodes are stale (a policy change, a
    run that died): the merges the run builds read every shard, and never a stale one (``refuse_stale_inputs``)."""
    graph, records = env.graph, env.ledger.nodes.records()
    stale: dict[int, list[str]] = {}
    for node in graph.shard_nodes:
        if node.table is None:
            for p in graph.partitions:
                if graph.stale_reason(env.policy, node.name, p, records) is not None:
                    stale.setdefault(identity.shard_from_partition(p), []).append(node.name)
    return tuple(ShardWork(s, tuple(nodes), mode, derived_only=True) for s, nodes in sorted(stale.items()) if s not in visited)


def unmatched_files(env: Env) -> list[str]:
    """Landing files that belong to no declared dataset (a folder or a name prefix no dataset has)."""
    matched = {f.name for f in landing_files(env.landing, contracts_for(env.policy))}
    return [n for n in env.landing.list() if n not in matched and not n.rsplit("/", 1)[-1].startswith(".")]


def _forced(env: Env, kind: str, staged: Staged | None, as_of: dt.datetime, stale: dict[str, set[str | None]]) -> dict[int, set[str]]:
    """Shard -> nodes an ingest must run there: raw nodes that receive rows or hold rows past retention (a
    cycle), every raw node (a full build), and the stale partitions (a rebuild)."""
    graph = env.graph
    raw_of = {n.table: n.name for n in graph.raw_nodes}
    forced: dict[int, set[str]] = {}
    if kind == "cycle":
        for table, shards in staged.shards.items():
            for shard in shards:
                forced.setdefault(shard, set()).add(raw_of[table])
        for shard, names in expired_partitions(env.ledger, env.policy, graph, as_of).items():
            forced.setdefault(shard, set()).update(names)
    elif kind == "full":  # every shard from every landing file; the rest of each shard wherever it is stale
        for shard in range(env.policy.shards):
            forced[shard] = set(raw_of.values())
    for name, partitions in stale.items():
        if graph.node(name).partitioned:
            for p in partitions:
                forced.setdefault(identity.shard_from_partition(p), set()).add(name)
    return forced


def expire_landing(env: Env, now: dt.datetime | None = None) -> list[str]:
    """Remove the landing files ingested ``landing.keep_days`` ago or more (their old versions too), unless the
    source wrote them again since (then they wait for their own ingest). Returns the names removed."""
    days = env.policy.landing.keep_days
    if days is None:
        return []
    now = now or dt.datetime.now(dt.UTC)
    taken = env.ledger.runs.landing_ingested()
    stamps = env.landing.stamps()
    removed = []
    for f in landing_files(env.landing, contracts_for(env.policy)):
        record = taken.get(f.name)
        if record is None or record["seen_at"] is None or now - record["seen_at"] < dt.timedelta(days=days):
            continue
        same = record["stamp"] == stamps.get(f.name) if record["stamp"] else record["hash"] == content_hash(env.landing.read_bytes(f.name) or b"")
        if same:
            env.landing.delete(f.name)
            env.landing.purge_noncurrent(f.name)
            removed.append(f.name)
    return removed

"""The project's jobs: one run per erasure tick, per retraining cycle, per full build, per rebuild.

Every job has the same three stages, so a run is exactly one claim, one step per touched shard and
one merge, whatever triggered it:

    claim ──▶ shard_step[shard_03] ─┐
          ──▶ shard_step[shard_07] ─┼──▶ merge (and, in an erasure run, certify)
          ──▶ ...                  ─┘

- The **claim** is the run's first act: it takes its requests or landing files in the ledger (ticks
  only read, so a preview or a repeated tick changes nothing), sweeps runs whose process died, and
  plans which nodes each shard must run.
- A **shard step** runs the shard's nodes in dependency order. A node runs when the plan forces it
  (the erased subject's provenance, new landing rows) or the ledger's record of it is stale
  (``Graph.stale_reason``: missing, made under other policy values, or built from inputs whose
  recorded versions have changed since); the rest of the shard is untouched. Because a node's record
  is written only after its objects, a run that died half-way leaves stale records, and the next
  run redoes exactly what the dead one did not finish. Each node run is reported as Dagster reports
  an asset step (materialisation with provenance tags, then its checks), so lineage and staleness in
  the UI are the assets' own. One step per shard keeps per-shard retry ("re-execute from failure").
- The **merge** step recomputes each unpartitioned merge that is stale, once, then (erasure) verifies
  every claim and issues the certificates in the same step, so no other writer can change a shard
  between the merge and the proof.

Every writing step runs in the pool ``tags.POOL`` (limit 1, set by the claim step): runs never write
concurrently, whichever executor, daemon or CLI runs them.
"""


import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg

from erasure_pipeline import contracts, identity, runtime, tags
from erasure_pipeline.contracts import contracts_for
from erasure_pipeline.graph import Graph
from erasure_pipeline.ledger import Claim
from erasure_pipeline.nodes import Env, NodeResult, NodeRun, compute
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LandingResource, LedgerResource, PepperResource, VectorStoreResource
from erasure_pipeline.staleness import expired_partitions
from erasure_pipeline.storage.lake import content_hash
from erasure_pipeline.storage.landing import drop_staging, landing_files, scrub_staging, scrub_subjects, stage
from erasure_pipeline.tombstones import Tombstones


# ---------------------------------------------------------------- what flows between steps
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
    """Erasure: landing files rewritten without the batch's subjects when it was claimed."""


CERTIFICATE_DETAILS = ("noncurrent_versions_purged", "landing_files_scrubbed", "points_deleted_by_subject_filter", "rows")


def _outcome(node: str, partition: str | None, result: NodeResult) -> NodeOutcome:
    return NodeOutcome(node, partition, result.previous, result.data_version,
                       {k: result.metadata[k] for k in CERTIFICATE_DETAILS if k in result.metadata})


# ---------------------------------------------------------------- claims (shared with the CLI's pre-claim)
def env_of(policy: Policy, graph: Graph, lake: LakeResource, landing: LandingResource, vectors: VectorStoreResource,
           ledger: LedgerResource, pepper: PepperResource) -> Env:
    return Env(policy, graph, lake.get(), landing.get(), vectors.get(), ledger.get(), pepper.get())


def claim_erasure(env: Env, instance: dg.DagsterInstance, batch_id: str, request_ids: list[str], run_id: str,
                  *, plan: bool = True) -> RunPlan:
    """Claim the requests for ``run_id`` and (``plan``) scrub landing and plan the shards. The CLI's
    pre-claim passes ``plan=False``: the run's claim step, same run id, claims again and does the work."""
    book = env.ledger
    claim = book.claim_erasure_batch(batch_id, request_ids, run_id, is_live=runtime.run_is_live(instance, book),
                                     host=runtime.HOST, pid=os.getpid())
    if claim.outcome != "claimed" or not plan:
        return RunPlan("erasure", batch_id, claim.outcome == "claimed", claim.holder if claim.outcome != "claimed" else run_id)
    requests = {r["request_id"]: r for r in book.requests_by_id(claim.request_ids)}
    provenance = book.provenance_for([r["subject_key"] for r in requests.values()])
    by_key: dict[str, dict[str, dict[str, int]]] = {}
    forced: dict[int, set[str]] = {}
    for row in provenance:  # the partitions that hold the subject: their own shard's, and text naming them elsewhere
        by_key.setdefault(row["subject_key"], {}).setdefault(row["asset"], {})[row["partition"]] = int(row["rows"])
        forced.setdefault(identity.shard_from_partition(row["partition"]), set()).add(row["asset"])
    footprints = {rid: by_key.get(r["subject_key"], {}) for rid, r in requests.items()}
    keys = tuple(sorted(r["subject_key"] for r in requests.values()))
    # Landing copies first, each file rewritten once for the whole batch; and any staged copy of an ingest
    # that has not finished.
    tables = contracts_for(env.policy)
    stones = Tombstones.load(book, env.keyer)
    scrubbed = scrub_subjects(env.lake, env.landing, tables, stones, keys, env.policy.lake.buckets)
    scrub_staging(env.lake, set(keys))
    works = tuple(ShardWork(s, tuple(env.graph.ordered(nodes)), "erasure", subjects=keys) for s, nodes in sorted(forced.items()))
    return RunPlan("erasure", batch_id, True, run_id, works, (), claim.request_ids, footprints, claim.resumed, len(scrubbed))


def claim_landing(env: Env, instance: dg.DagsterInstance, batch_id: str, kind: str, files: list[str] | None,
                  as_of: dt.datetime, run_id: str, stale: dict[str, set[str | None]] | None = None, *, plan: bool = True) -> RunPlan:
    """Take the landing files of an ingest (``cycle``: the new ones; ``full``/``rebuild``: every file)
    and (``plan``) stage them in one pass and plan each shard: raw nodes that receive rows or hold rows
    past retention, plus stale nodes. ``plan=False``: the CLI's pre-claim, as in ``claim_erasure``."""
    graph, policy, book = env.graph, env.policy, env.ledger
    present = [f for f in landing_files(env.landing, contracts_for(policy)) if files is None or f.name in files]
    entries = [(f.name, f.table, content_hash(env.landing.read_bytes(f.name) or b"")) for f in present]
    claim: Claim = book.claim_landing_batch(batch_id, kind, entries, as_of, run_id, is_live=runtime.run_is_live(instance, book),
                                            host=runtime.HOST, pid=os.getpid())
    if claim.outcome != "claimed" or not plan:
        return RunPlan(kind, batch_id, claim.outcome == "claimed", claim.holder if claim.outcome != "claimed" else run_id)
    raw_of = {n.table: n.name for n in graph.raw_nodes}
    forced: dict[int, set[str]] = {}
    staged = None
    if kind != "rebuild" or any(graph.node(n).kind == "raw" for n in (stale or {})):
        # One pass over the batch's landing files: each read once, its rows staged per shard, indexed.
        def check(frame, f) -> None:
            if f.table == policy.features.dataset:
                contracts.check_labels(frame, f.name, policy)

        staged = stage(env.lake, env.landing, present, env.keyer, batch_id, policy.lake.buckets, check)
    if kind == "cycle":
        for table, shards in staged.shards.items():
            for shard in shards:
                forced.setdefault(shard, set()).add(raw_of[table])
        for shard, names in expired_partitions(book, policy, graph, as_of).items():
            forced.setdefault(shard, set()).update(names)
    elif kind == "full":  # every shard from every landing file; the rest of each shard wherever it is stale
        for shard in range(policy.shards):
            forced[shard] = set(raw_of.values())
    for name, partitions in (stale or {}).items():
        if graph.node(name).partitioned:
            for p in partitions:
                forced.setdefault(identity.shard_from_partition(p), set()).add(name)
    mode = "rebuild" if kind == "rebuild" else "ingest"
    names = None if files is None else tuple(f.name for f in present)
    works = tuple(ShardWork(s, tuple(graph.ordered(nodes)), mode, names, as_of.isoformat(), staged.batch if staged else None)
                  for s, nodes in sorted(forced.items()) if nodes or kind == "full")
    merges = tuple(n for n in (stale or {}) if not graph.node(n).partitioned)
    return RunPlan(kind, batch_id, True, run_id, works, merges)


# ---------------------------------------------------------------- configs
class ErasureRunConfig(dg.Config):
    batch_id: str
    request_ids: list[str]


class IngestRunConfig(dg.Config):
    batch_id: str
    kind: str = "cycle"
    """``cycle``: the named new landing files; ``full``: every landing file into every shard."""
    landing_files: list[str] | None = None
    as_of: str | None = None
    """The cycle's time (ISO 8601, UTC); rows older than ``as_of - retention_days`` leave the lake."""


class RebuildRunConfig(dg.Config):
    batch_id: str
    partitions: dict[str, list[str]]
    """Node -> partitions to rebuild (``all`` for an unpartitioned merge): the stale ones of a policy change."""


def _as_of(value: str | None) -> dt.datetime:
    if not value:
        return dt.datetime.now(dt.UTC)
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- the jobs
def build_jobs(policy: Policy, graph: Graph) -> list[dg.JobDefinition]:
    def _start(context, *resources) -> Env:
        """Every claim step begins here: set the pool's limit, sweep runs whose process died."""
        env = env_of(policy, graph, *resources)
        runtime.ensure_pool(context.instance)
        runtime.sweep_interrupted(context.instance, env.ledger, context.log.warning)
        return env

    def _emit(context, plan: RunPlan) -> Iterator[dg.Output | dg.DynamicOutput]:
        if not plan.claimed:
            context.log.info(f"batch {plan.batch_id} is held by run {plan.holder} or already finished: nothing to do")
            context.instance.add_run_tags(context.run_id, {"erasure_pipeline/outcome": "skipped: batch held elsewhere"})
        for work in plan.works if plan.claimed else ():
            yield dg.DynamicOutput(work, mapping_key=work.partition, output_name="shards")
        yield dg.Output(plan, output_name="plan")

    outs = {"shards": dg.DynamicOut(ShardWork), "plan": dg.Out(RunPlan)}

    @dg.op(out=outs, description="Claims the batch's requests in the ledger and plans which nodes each shard must run.")
    def claim_requests(context: dg.OpExecutionContext, config: ErasureRunConfig, lake: LakeResource, landing: LandingResource,
                       vectors: VectorStoreResource, ledger: LedgerResource, pepper: PepperResource):
        env = _start(context, lake, landing, vectors, ledger, pepper)
        plan = claim_erasure(env, context.instance, config.batch_id, config.request_ids, context.run_id)
        if plan.resumed:
            context.log.info(f"resumed {len(plan.resumed)} requests from runs that ended without finishing them")
        yield from _emit(context, plan)

    @dg.op(out=outs, description="Takes the run's landing files in the ledger and plans which nodes each shard must run.")
    def claim_landing_files(context: dg.OpExecutionContext, config: IngestRunConfig, lake: LakeResource, landing: LandingResource,
                            vectors: VectorStoreResource, ledger: LedgerResource, pepper: PepperResource):
        env = _start(context, lake, landing, vectors, ledger, pepper)
        plan = claim_landing(env, context.instance, config.batch_id, config.kind, config.landing_files, _as_of(config.as_of),
                             context.run_id)
        yield from _emit(context, plan)

    @dg.op(out=outs, description="Takes every landing file and plans the stale partitions a policy change left.")
    def claim_rebuild(context: dg.OpExecutionContext, config: RebuildRunConfig, lake: LakeResource, landing: LandingResource,
                      vectors: VectorStoreResource, ledger: LedgerResource, pepper: PepperResource):
        env = _start(context, lake, landing, vectors, ledger, pepper)
        stale = {n: {None if p == "all" else p for p in parts} for n, parts in config.partitions.items()}
        plan = claim_landing(env, context.instance, config.batch_id, "rebuild", None, _as_of(None), context.run_id, stale)
        yield from _emit(context, plan)

    @dg.op(pool=tags.POOL, description="Runs one shard's nodes that the plan forces or whose inputs changed, in dependency order.")
    def shard_step(context: dg.OpExecutionContext, work: ShardWork, lake: LakeResource, landing: LandingResource,
                   vectors: VectorStoreResource, ledger: LedgerResource, pepper: PepperResource):
        env = env_of(policy, graph, lake, landing, vectors, ledger, pepper)
        partitions = identity.partition_keys(policy.shards)
        outcomes: list[NodeOutcome] = []
        blocked: list[str] = []
        for node in graph.shard_nodes:
            # Read the records afresh for each node: the ones computed before it in this step changed them.
            records = env.ledger.node_records(work.partition, [node.name, *node.parents])
            if node.name not in work.forced and graph.stale_reason(policy, node.name, work.partition, partitions, records) is None:
                continue
            started = time.perf_counter()
            result = compute(NodeRun(env, node, work.partition, work.mode, context.run_id,
                                     list(work.landing_files) if work.landing_files is not None else None,
                                     _as_of(work.as_of) if work.as_of else None, context.log.info, work.staged,
                                     frozenset(work.subjects) if work.subjects is not None else None))
            result = runtime.timed(result, time.perf_counter() - started)
            yield from runtime.node_events(context.instance, policy, graph, node, work.partition, result)
            outcomes.append(_outcome(node.name, work.partition, result))
            blocked += [f"{node.name}[{work.partition}] {c.name}" for c in result.checks if c.blocks]
            if blocked:
                break
        runtime.report_progress(f"{work.partition}: {len(outcomes)} nodes run, {sum(o.changed for o in outcomes)} changed")
        if blocked:
            raise runtime.blocked(blocked)
        yield dg.Output(tuple(outcomes))

    def _merges(context, env: Env, plan: RunPlan) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation | NodeOutcome]:
        partitions = identity.partition_keys(policy.shards)
        blocked = []
        for node in graph.merge_nodes:
            records = env.ledger.node_records(assets=[node.name, *node.parents])
            if node.name not in plan.forced_merges and graph.stale_reason(policy, node.name, None, partitions, records) is None:
                continue
            started = time.perf_counter()
            result = compute(NodeRun(env, node, None, "erasure" if plan.kind == "erasure" else "ingest", context.run_id,
                                     log=context.log.info))
            result = runtime.timed(result, time.perf_counter() - started)
            yield from runtime.node_events(context.instance, policy, graph, node, None, result)
            yield _outcome(node.name, None, result)
            blocked += [f"{node.name} {c.name}" for c in result.checks if c.blocks]
            if blocked:
                raise runtime.blocked(blocked)

    @dg.op(pool=tags.POOL, out={}, description="Recomputes each merge whose inputs changed, once; marks the landing batch done.")
    def merge(context: dg.OpExecutionContext, plan: RunPlan, shards: list, lake: LakeResource, landing: LandingResource,
              vectors: VectorStoreResource, ledger: LedgerResource, pepper: PepperResource):
        if not plan.claimed:
            return
        env = env_of(policy, graph, lake, landing, vectors, ledger, pepper)
        for item in _merges(context, env, plan):
            if not isinstance(item, NodeOutcome):
                yield item
        env.ledger.finish_landing_batch(plan.batch_id, [w.shard for w in plan.works])
        drop_staging(env.lake, plan.batch_id)
        env.ledger.finish_job_run(context.run_id, "success")
        runtime.report_progress(f"merges done; landing batch {plan.batch_id} finished")

    @dg.op(pool=tags.POOL, out={}, description=("Recomputes each merge whose inputs changed, once, then verifies every claim of every "
                                        "request of the batch and issues their certificates (in one step: nothing else writes "
                                        "between the merge and the proof)."))
    def merge_and_certify(context: dg.OpExecutionContext, plan: RunPlan, shards: list, lake: LakeResource,
                          landing: LandingResource, vectors: VectorStoreResource, ledger: LedgerResource, pepper: PepperResource):
        from erasure_pipeline.erasure.service import certify_batch

        if not plan.claimed:
            return
        env = env_of(policy, graph, lake, landing, vectors, ledger, pepper)
        outcomes = [o for group in shards for o in group]
        for item in _merges(context, env, plan):
            if isinstance(item, NodeOutcome):
                outcomes.append(item)
            else:
                yield item
        yield from certify_batch(context, env, plan, outcomes)
        env.ledger.finish_job_run(context.run_id, "success")

    def _job(name: str, claim_op, finish_op, description: str) -> dg.JobDefinition:
        @dg.job(name=name, tags={tags.KIND: tags.JOB_KINDS[name]}, description=description)
        def _graph():
            works, plan = claim_op()
            finish_op(plan, works.map(shard_step).collect())

        return _graph

    return [
        _job(tags.ERASURE_JOB, claim_requests, merge_and_certify,
             "One erasure tick: the shards its requests touched, the merges once, then proof and certificates."),
        _job(tags.CYCLE_JOB, claim_landing_files, merge,
             "One retraining cycle: new landing files and retention, only the shards they touch, the merges once."),
        _job(tags.INGEST_JOB, claim_landing_files, merge,
             "A full build: every landing file into every shard (one pass per file), then the merges once."),
        _job(tags.REBUILD_JOB, claim_rebuild, merge,
             "A policy change: exactly the stale partitions, then the merges they feed, once."),
    ]

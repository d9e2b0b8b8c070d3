"""The ops every job is made of: a claim, one shard step per touched shard, a merge (and certify) step.

- The **claim** is the run's first act (``erasure.plan``): it takes its requests or landing files in the
  ledger (ticks only read, so a preview or a repeated tick changes nothing), sweeps runs whose process
  died, scrubs or stages landing, and plans which nodes each shard must run.
- A **shard step** (an op per shard, ``shard_03``, in that shard's pool) runs the shard's nodes in
  dependency order. A node runs when the plan forces it
  (the erased subject's provenance, new landing rows) or the ledger's record of it is stale
  (``Graph.stale_reason``: missing, made under other policy values, or built from inputs whose
  recorded versions have changed since); the rest of the shard is untouched. A node's record is
  written only after its objects, so a run that died half-way leaves stale records and the next run
  redoes exactly what the dead one did not finish. Each node run is reported as Dagster reports an
  asset step (``defs.events``).
- The **merge** step recomputes each unpartitioned merge that is stale, once, then (erasure) verifies
  every claim and issues the certificates in the same step, so no other merge runs between the merge
  and the proof (another run's shard step may: see below).

Every step that writes a store runs in one of the project's pools, each of limit 1 (set by the claim step):
claims in ``erasure_pipeline/landing``, each shard step in its shard's ``erasure_pipeline/shard_NN``, merges
in ``erasure_pipeline/merges``. Shard steps of different shards run at once (multiprocess, k8s executors), two
writers of one shard never do, whichever run, executor, daemon or CLI they belong to, and a merge starts
when its run's shard steps are done. The ledger's own writes are transactions of their own (``ledger.db``).

A merge-and-certify step proves what it merged; a shard step of *another* run may rewrite a shard between
the merge and the proof. The step checks first that every merge was built from the shard partitions stored
now and re-runs the merges that another run made stale until it was (``_consistent``), then proves each
request against that state (see docs/SCALING.md).
"""


import time
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from erasure_pipeline.core import names
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.defs import events, runtime, ticks
from erasure_pipeline.defs.assets import on_time_check, recipients_check
from erasure_pipeline.defs.resources import PipelineResource, RecipientsResource
from erasure_pipeline.erasure.certificate import to_markdown
from erasure_pipeline.erasure.certify import certify_batch, run_outcome
from erasure_pipeline.erasure.plan import (
    NodeOutcome,
    RunPlan,
    ShardWork,
    as_of_time,
    claim_erasure,
    claim_landing,
    expire_landing,
    outcome_of,
)
from erasure_pipeline.erasure.recipients import deliver
from erasure_pipeline.erasure.verify import merge_input_claims
from erasure_pipeline.kinds.base import Env, NodeRun, StaleInputs, compute_node
from erasure_pipeline.kinds.staleness import stale_partitions
from erasure_pipeline.ledger import utcnow
from erasure_pipeline.stores.landing import drop_staging

ANCHOR_SEQ, ANCHOR_HASH = "audit_anchor_seq", "audit_anchor_hash"
MAX_CERTIFICATES_IN_METADATA = 10


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
    batch_id: str = ""
    """Empty: ``rebuild-`` and the run's id (a run launched from the UI's Launchpad needs no config)."""
    partitions: dict[str, list[str]] = Field(default_factory=dict)
    """Node -> partitions to rebuild (``all`` for an unpartitioned merge). Empty: every one stale now (after a
    policy change: exactly what ``erasure-pipeline policy diff`` lists)."""


@dataclass(frozen=True)
class Ops:
    claim_requests: dg.OpDefinition
    claim_landing_files: dg.OpDefinition
    claim_rebuild: dg.OpDefinition
    shard_steps: dict[str, dg.OpDefinition]
    """Partition -> its shard step."""
    merge: dg.OpDefinition
    merge_and_certify: dg.OpDefinition


CLAIMED = "claimed"
"""A claim step's output that is always there: the merge's list of shard results holds it, so the merge runs
(and certifies a no-data request) when no shard step does."""
CONSISTENT_ROUNDS, CONSISTENT_WAIT = 5, 1.0
"""How many times a certificate step re-merges after another run changed a shard under it, and the pause between
(while no other live run may be writing shards; while one may, it goes on for up to ``MERGE_WAIT``)."""
MERGE_WAIT = 300.0
"""How long a merge waits for another live run still writing its shard inputs before it fails (``StaleInputs``)."""


def _plan_outs(graph: Graph) -> dict[str, dg.Out]:
    return {"plan": dg.Out(RunPlan), CLAIMED: dg.Out(tuple),
            **{p: dg.Out(ShardWork, is_required=False, description=f"{p}'s work, when the run touches it") for p in graph.partitions}}


def _start(context, pipeline: PipelineResource, policy: Policy) -> tuple[Env, dict]:
    """Every claim step begins here: set the pools' limits, sweep runs whose process died, assign slots to steps
    stranded in a pool's queue."""
    env = pipeline.env(policy)
    runtime.before_work(context.instance, env.ledger, env.graph.partitions, context.log.warning)
    return env, {"is_live": runtime.run_is_live(context.instance, env.ledger), "host": runtime.HOST, "pid": runtime.run_pid()}


def _emit(context, plan: RunPlan) -> Iterator[dg.Output]:
    if not plan.claimed:
        context.log.info(f"batch {plan.batch_id} is held by run {plan.holder} or already finished: nothing to do")
        context.instance.add_run_tags(context.run_id, {names.OUTCOME: "skipped: batch held elsewhere"})
    for work in plan.works if plan.claimed else ():
        yield dg.Output(work, output_name=work.partition)
    yield dg.Output((), output_name=CLAIMED)
    yield dg.Output(plan, output_name="plan", metadata={
        "batch": plan.batch_id, "claimed": plan.claimed, "shards": len(plan.works),
        "landing_files_scrubbed": plan.landing_scrubbed, "requests": len(plan.request_ids),
        "requests_in_review": len(plan.in_review), "requests_skipped": len(plan.skipped),
        "landing_files_matching_no_dataset": len(plan.unmatched),
        **{f"rows_without_subject_{table}": n for table, n in plan.without_subject.items()}})


def _prepared(context, env: Env, plan: RunPlan):
    """Lookup tables the shard steps will read, computed in the claim step when new files came or they are stale."""
    if not plan.claimed:
        return
    for node in env.graph.prepare_nodes:
        records = env.ledger.nodes.records(assets=[node.name])
        if node.name in plan.prepares or env.graph.stale_reason(env.policy, node.name, None, records) is not None:
            _outcome, blocking = yield from _run_node(context, env, node, None, "ingest")
            if blocking:
                raise runtime.blocked(blocking)
    if plan.unmatched:
        context.log.warning(f"{len(plan.unmatched)} landing files match no declared dataset and were not read: "
                            f"{', '.join(plan.unmatched[:5])}")


def _claim_ops(policy: Policy, graph: Graph) -> tuple[dg.OpDefinition, dg.OpDefinition, dg.OpDefinition]:
    outs = _plan_outs(graph)

    @dg.op(name=names.CLAIM_REQUESTS_OP, out=outs, pool=names.LANDING_POOL,
           description="Claims the batch's requests in the ledger, scrubs their landing copies, plans which nodes each shard must run.")
    def claim_requests(context: dg.OpExecutionContext, config: ErasureRunConfig, pipeline: PipelineResource):
        env, who = _start(context, pipeline, policy)
        plan = claim_erasure(env, config.batch_id, config.request_ids, context.run_id, **who)
        if plan.resumed:
            context.log.info(f"resumed {len(plan.resumed)} requests from runs that ended without finishing them")
        yield from _emit(context, plan)

    @dg.op(name=names.CLAIM_LANDING_OP, out=outs, pool=names.LANDING_POOL,
           description="Takes the run's landing files in the ledger, stages them in one pass, plans which nodes each shard must run.")
    def claim_landing_files(context: dg.OpExecutionContext, config: IngestRunConfig, pipeline: PipelineResource):
        env, who = _start(context, pipeline, policy)
        plan = claim_landing(env, config.batch_id, config.kind, config.landing_files, as_of_time(config.as_of), context.run_id, **who)
        yield from _prepared(context, env, plan)
        yield from _emit(context, plan)

    @dg.op(name=names.CLAIM_REBUILD_OP, out=outs, pool=names.LANDING_POOL,
           description="Takes every landing file and plans the stale partitions a policy change left (all of them when the "
                       "run config names none: launch rebuild_job from the UI as it is).")
    def claim_rebuild(context: dg.OpExecutionContext, config: RebuildRunConfig, pipeline: PipelineResource):
        env, who = _start(context, pipeline, policy)
        stale = ({n: {None if p == "all" else p for p in parts} for n, parts in config.partitions.items()} if config.partitions
                 else {n: set(parts) for n, parts in stale_partitions(env.ledger, env.policy, env.graph).items()})
        batch = config.batch_id or f"rebuild-{context.run_id[:12]}"
        plan = claim_landing(env, batch, "rebuild", None, as_of_time(None), context.run_id, stale, **who)
        yield from _prepared(context, env, plan)
        yield from _emit(context, plan)

    return claim_requests, claim_landing_files, claim_rebuild


def _run_node(context, env: Env, node, partition: str | None, mode: str, work: ShardWork | None = None):
    """Compute one node partition; yields its Dagster events, returns its outcome and the checks that block."""
    started = time.perf_counter()
    run = NodeRun(env, node, partition, mode, context.run_id, log=context.log.info)
    if work is not None:
        run.landing_files = list(work.landing_files) if work.landing_files is not None else None
        run.as_of, run.staged = as_of_time(work.as_of) if work.as_of else None, work.staged
        run.subjects = frozenset(work.subjects) if work.subjects is not None else None
    result = events.timed(compute_node(run), time.perf_counter() - started)
    yield from events.node_events(context.instance, env.policy, env.graph, node, partition, result)
    return outcome_of(node.name, partition, result), events.blocking_checks(node, partition, result)


def _shard_op(policy: Policy, graph: Graph, partition: str) -> dg.OpDefinition:
    @dg.op(name=names.shard_op(partition), pool=names.shard_pool(partition),
           description=f"Runs {partition}'s nodes that the plan forces or whose inputs changed, in dependency order "
                       f"(in pool {names.shard_pool(partition)}: never beside another writer of {partition}).")
    def shard_step(context: dg.OpExecutionContext, work: ShardWork, pipeline: PipelineResource):
        env = pipeline.env(policy)
        outcomes: list[NodeOutcome] = []
        with runtime.shard_lease(context.instance, env.ledger, context.run_id, context.op.name, names.shard_pool(partition),
                                 context.log.info):
            for node in graph.shard_nodes:
                # Read the records afresh for each node: the ones computed before it in this step changed them.
                records = env.ledger.nodes.records(work.partition, [node.name, *node.parents])
                if node.name not in work.forced and (graph.stale_reason(policy, node.name, work.partition, records) is None
                                                     or (work.derived_only and node.table is not None)):
                    continue
                outcome, blocking = yield from _run_node(context, env, node, work.partition, work.mode, work)
                outcomes.append(outcome)
                if blocking:
                    raise runtime.blocked(blocking)
        runtime.report_progress(f"{work.partition}: {len(outcomes)} nodes run, {sum(o.changed for o in outcomes)} changed")
        yield dg.Output(tuple(outcomes))

    return shard_step


def _others_writing(context, env: Env) -> list[str]:
    """Other live runs (their first eight characters): their shard steps may be writing shards beside this step."""
    live = runtime.run_is_live(context.instance, env.ledger)
    return sorted(r["run_id"][:8] for r in env.ledger.runs.unfinished() if r["run_id"] != context.run_id and live(r["run_id"], r))


def _merge_node(context, env: Env, node, mode: str):
    """One merge. Its shard inputs must be current (``StaleInputs`` otherwise); while another run is still
    writing shards (its shard steps run beside this step, in their shards' pools), the merge waits for them
    rather than failing: up to ``MERGE_WAIT`` seconds, re-checking every second."""
    waited = 0.0
    while True:
        try:
            return (yield from _run_node(context, env, node, None, mode))
        except StaleInputs as exc:
            others = _others_writing(context, env)
            if not others or waited >= MERGE_WAIT:
                raise
            if not waited:
                context.log.info(f"{node.name} waits for run(s) {', '.join(others)} to finish writing its inputs ({exc})")
            time.sleep(1.0)
            waited += 1.0


def _merges(context, env: Env, plan: RunPlan):
    """Each stale (or forced) merge, once, in graph order; returns their outcomes. A merge whose blocking check
    fails (a model below its quality floor) holds back only itself and the merges built from it: the others
    are built, and the step fails afterwards naming each that missed."""
    outcomes, blocked, held = [], [], set()
    for node in env.graph.merge_nodes:
        if held.intersection(node.parents):
            held.add(node.name)
            continue
        records = env.ledger.nodes.records(assets=[node.name, *node.parents])
        if node.name not in plan.forced_merges and env.graph.stale_reason(env.policy, node.name, None, records) is None:
            continue
        outcome, blocking = yield from _merge_node(context, env, node, "erasure" if plan.kind == "erasure" else "ingest")
        outcomes.append(outcome)
        if blocking:
            blocked += blocking
            held.add(node.name)
    if blocked:
        raise runtime.blocked(blocked)
    return outcomes


def _consistent(context, env: Env, plan: RunPlan):
    """Before proving: every merge was built from the shard partitions stored now. A shard step of another run
    (in that shard's pool, not this step's) may have rewritten one after this run's merges read it: re-run the
    merges the ledger now records as stale (this step holds the merge pool, so no other merge runs meanwhile)
    and look again. While another live run may still be writing shards (a cycle's sixteen shard steps, one
    after another), this goes on for up to ``MERGE_WAIT`` seconds; with no other run, ``CONSISTENT_ROUNDS``.
    After that the proof fails the requests it cannot prove and the next tick retries them. Returns the
    outcomes of the merges re-run."""
    outcomes: list[NodeOutcome] = []
    rounds, waited = 0, 0.0
    while True:
        changed = [f.target for f in merge_input_claims(env) if not f.ok]
        if not changed:
            return outcomes
        if rounds >= CONSISTENT_ROUNDS and (waited >= MERGE_WAIT or not _others_writing(context, env)):
            return outcomes
        if rounds:
            time.sleep(CONSISTENT_WAIT)
            waited += CONSISTENT_WAIT
        context.log.info(f"another run changed inputs of {', '.join(changed)} since they were merged: merging again")
        outcomes += yield from _merges(context, env, plan)
        rounds += 1


def _certified(context, env: Env, plan: RunPlan, outcomes: list[NodeOutcome]):
    """Certify the batch (``erasure.certify``) and report the certificates to Dagster."""
    done = certify_batch(env, plan, outcomes, context.run_id)
    outcome = run_outcome(env.ledger, [*plan.request_ids, *plan.in_review, *plan.skipped], context.run_id, done.certificates)
    context.instance.add_run_tags(context.run_id, {names.OUTCOME: outcome.line})
    context.log.info(f"batch {plan.batch_id}: {outcome.line}")
    shown = "\n\n---\n\n".join(to_markdown(c) for c in done.certificates[:MAX_CERTIFICATES_IN_METADATA])
    yield dg.AssetMaterialization(asset_key=env.graph.certificate_node, metadata={
        "batch": plan.batch_id, "outcome": outcome.line, **{f"requests_{k}": n for k, n in outcome.counts.items()},
        "certificates_issued": len(done.certificates), "requests_not_proven": len(done.unproven),
        "request_ids": ", ".join(c["request_id"] for c in done.certificates[:50]),
        "requests_resumed_from_interrupted_runs": len(plan.resumed),
        "shards": ", ".join(w.partition for w in plan.works) or "none (no data)",
        "certificates": dg.MetadataValue.md(shown or "_(none)_"),
        **events.certificate_tables(done.certificates, done.evidence),
        **({"evidence_store": events.link(env.evidence.locate("certificates"))} if env.evidence is not None else {}),
        # A copy of the audit log's head outside the ledger's database (erasure-pipeline audit-log verify).
        ANCHOR_SEQ: done.anchor[0], ANCHOR_HASH: done.anchor[1],
        "ledger_ids": dg.MetadataValue.md("Print one: `erasure-pipeline certificate REQUEST_ID`; re-check: `erasure-pipeline verify REQUEST_ID`."),
    })
    check = on_time_check(env.ledger.requests.overdue(utcnow(), within=names.DUE_SOON, stuck_after=names.STUCK_AFTER))
    yield dg.AssetCheckEvaluation(asset_key=dg.AssetKey(env.graph.certificate_node), check_name=names.ON_TIME_CHECK,
                                  passed=check.passed, metadata=check.metadata, severity=check.severity)
    if done.unproven:
        raise dg.Failure("erasure not proven for " + "; ".join(str(e) for e in done.unproven[:5]))


def _merge_ops(policy: Policy) -> tuple[dg.OpDefinition, dg.OpDefinition]:
    @dg.op(name=names.MERGE_OP, pool=names.MERGE_POOL, out={},
           description="Recomputes each merge whose inputs changed, once; marks the landing batch done.")
    def merge(context: dg.OpExecutionContext, plan: RunPlan, shards: list, pipeline: PipelineResource):
        if not plan.claimed:
            return
        env = pipeline.env(policy)
        yield from _merges(context, env, plan)
        env.ledger.runs.finish_landing(plan.batch_id, [w.shard for w in plan.works])
        drop_staging(env.lake, plan.batch_id)
        expired = expire_landing(env)
        if expired:
            context.log.info(f"{len(expired)} ingested landing files removed (landing.keep_days: {env.policy.landing.keep_days})")
        env.ledger.runs.finish_job_run(context.run_id, "success")
        runtime.report_progress(f"merges done; landing batch {plan.batch_id} finished")

    @dg.op(name=names.MERGE_AND_CERTIFY_OP, pool=names.MERGE_POOL, out={},
           description=("Recomputes each merge whose inputs changed, once, then verifies every claim of every request of the "
                        "batch and issues their certificates (in one step: nothing else writes between the merge and the proof)."))
    def merge_and_certify(context: dg.OpExecutionContext, plan: RunPlan, shards: list, pipeline: PipelineResource):
        if not plan.claimed:  # the claim step said so in the run's outcome tag
            return
        env = pipeline.env(policy)
        merged = yield from _merges(context, env, plan)
        merged += yield from _consistent(context, env, plan)
        yield from _certified(context, env, plan, [o for group in shards for o in group] + merged)
        env.ledger.runs.finish_job_run(context.run_id, "success")

    return merge, merge_and_certify


def staleness_op(policy: Policy, graph: Graph) -> dg.OpDefinition:
    @dg.op(name=names.REPORT_STALENESS_OP, out={},
           description="Reports the up_to_date check of every materialised shard partition: failed (and why) or passed. Reads only.")
    def report_staleness(context: dg.OpExecutionContext, pipeline: PipelineResource):
        book = pipeline.book()
        stale = ticks.stale_shard_partitions(book, policy, graph)
        records = book.nodes.records()
        for node in graph.shard_nodes:
            for p in graph.partitions:
                if (node.name, p) not in records:
                    continue
                why = stale.get((node.name, p))
                yield dg.AssetCheckEvaluation(
                    asset_key=dg.AssetKey(node.name), check_name=names.POLICY_CHECK, passed=why is None, partition=p,
                    severity=dg.AssetCheckSeverity.WARN, description=f"{p}: {why or 'up to date'}",
                    metadata={"why": why, "rebuild": ticks.REBUILD_HINT} if why else {"code_version": records[(node.name, p)]["code_version"]})
        context.log.info(f"{len(stale)} shard partitions are not up to date" if stale else "every shard partition is up to date")

    return report_staleness


def deliver_op(policy: Policy, graph: Graph) -> dg.OpDefinition:
    @dg.op(name=names.DELIVER_OP, out={},
           description=("POSTs every due notice to its recipient (and every DRP status callback): signed, one idempotency key per "
                        "notice, retried with backoff, dead-lettered after delivery.dead_letter_days; amends the certificates."))
    def deliver_notices(context: dg.OpExecutionContext, pipeline: PipelineResource, recipients: RecipientsResource):
        env = pipeline.env(policy)
        report = deliver(env.ledger, policy, env.signer, recipients.by_name(), evidence=env.evidence)
        context.log.info(report.line)  # request ids, recipient names and notice ids only
        for n in report.retrying + report.dead:
            context.log.warning(f"{n['request_id']} -> {n['recipient']}: {n['error']}")
        check = recipients_check(env.ledger, policy)
        yield dg.AssetCheckEvaluation(asset_key=dg.AssetKey(graph.certificate_node), check_name=names.RECIPIENTS_CHECK,
                                      passed=check.passed, severity=check.severity, description=check.description,
                                      metadata=check.metadata)

    return deliver_notices


def build_ops(policy: Policy, graph: Graph) -> Ops:
    return Ops(*_claim_ops(policy, graph), {p: _shard_op(policy, graph, p) for p in graph.partitions}, *_merge_ops(policy))

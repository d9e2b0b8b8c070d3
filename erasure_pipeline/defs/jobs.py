"""The project's jobs: one run per erasure tick, per retraining cycle, per full build, per rebuild.

Every job has the same three stages (``defs.steps``), so a run is exactly one claim, one step per
touched shard and one merge, whatever triggered it::

    claim ──▶ shard_03 ─┐
          ──▶ shard_07 ─┼──▶ merge (and, in an erasure run, certify)
          ──▶ ...      ─┘

Each shard is an op of its own in the shard's own pool (a shard the plan does not touch is skipped), so
the multiprocess and k8s executors run shard steps of different shards at once and never two of one shard.
"""

from __future__ import annotations

import dagster as dg

from erasure_pipeline.core import names
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.defs.steps import CLAIMED, build_ops, deliver_op, staleness_op

DESCRIPTIONS = {
    names.ERASURE_JOB: "One erasure tick: the shards its requests touched, the merges once, then proof and certificates.",
    names.CYCLE_JOB: "One retraining cycle: new landing files and retention, only the shards they touch, the merges once.",
    names.INGEST_JOB: "A full build: every landing file into every shard (one pass per file), then the merges once.",
    names.REBUILD_JOB: ("A policy change: exactly the stale partitions, then the merges they feed, once. Launch it from the "
                        "Launchpad with no config to rebuild everything the up_to_date checks report stale."),
}


def _job(name: str, claim_op: dg.OpDefinition, shard_ops: dict[str, dg.OpDefinition], finish_op: dg.OpDefinition,
         owners: list[str]) -> dg.JobDefinition:
    @dg.job(name=name, tags={names.KIND: names.JOB_KINDS[name]}, description=DESCRIPTIONS[name], owners=owners)
    def _graph():
        claimed = claim_op()
        # The merge's list starts with the claim's own output, so it runs when no shard step does.
        finish_op(claimed.plan, [getattr(claimed, CLAIMED), *(op(getattr(claimed, p)) for p, op in shard_ops.items())])

    return _graph


def build_jobs(policy: Policy, graph: Graph) -> list[dg.JobDefinition]:
    ops = build_ops(policy, graph)
    return [
        _job(names.ERASURE_JOB, ops.claim_requests, ops.shard_steps, ops.merge_and_certify, policy.owners),
        _job(names.CYCLE_JOB, ops.claim_landing_files, ops.shard_steps, ops.merge, policy.owners),
        _job(names.INGEST_JOB, ops.claim_landing_files, ops.shard_steps, ops.merge, policy.owners),
        _job(names.REBUILD_JOB, ops.claim_rebuild, ops.shard_steps, ops.merge, policy.owners),
        _staleness_job(policy, graph),
        _deliver_job(policy, graph),
    ]


def _reader_job(name: str, kind: str, op: dg.OpDefinition, owners: list[str], description: str) -> dg.JobDefinition:
    """A job of one op that writes no store (the pool is for writers): staleness reports, deliveries."""

    @dg.job(name=name, tags={names.KIND: kind}, owners=owners, description=description)
    def _graph():
        op()

    return _graph


def _deliver_job(policy: Policy, graph: Graph) -> dg.JobDefinition:
    return _reader_job(names.DELIVER_JOB, "deliver", deliver_op(policy, graph), policy.owners,
                       "Tells recipients: POSTs the due notices (signed, idempotent, retried with backoff, dead-lettered) and "
                       "DRP status callbacks; reports recipients_confirmed. The notices_sensor asks for it.")


def _staleness_job(policy: Policy, graph: Graph) -> dg.JobDefinition:
    return _reader_job(names.STALENESS_JOB, "staleness", staleness_op(policy, graph), policy.owners,
                       "Reports the up_to_date check of every shard partition (the staleness_sensor asks for it when the "
                       "set of stale partitions changes). Reads only.")

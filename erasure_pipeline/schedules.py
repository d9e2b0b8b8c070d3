"""The retraining cycle: a schedule that ingests new landing files and applies retention, shard by shard."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.assets.common import MERGE_ASSETS, SHARD_ASSETS
from erasure_pipeline.cycle import CyclePlan, plan_cycle
from erasure_pipeline.erasure.service import LOCK_TAG
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LandingResource, LedgerResource, PepperResource

CYCLE_TAG = "erasure_pipeline/cycle"
RAW_ASSETS = ("raw_subjects", "raw_events", "raw_tickets")


def cycle_run_requests(plan: CyclePlan) -> list[dg.RunRequest]:
    """One run per touched shard: its partitions, then the merges, under the same lock as erasure runs."""
    config = {"landing_files": plan.file_names, "as_of": plan.as_of.isoformat()}
    return [
        dg.RunRequest(
            run_key=f"{plan.batch_id}-{identity.partition_key(shard)}",
            partition_key=identity.partition_key(shard),
            asset_selection=[dg.AssetKey(a) for a in (*SHARD_ASSETS, *MERGE_ASSETS)],
            run_config={"ops": {a: {"config": {"mode": "ingest", **config}} for a in RAW_ASSETS}},
            tags={CYCLE_TAG: plan.batch_id, LOCK_TAG: "cycle", "erasure_pipeline/shard": identity.partition_key(shard)},
        )
        for shard in plan.shards
    ]


def evaluate_cycle(book, landing, pepper: bytes, policy: Policy, as_of: dt.datetime) -> tuple[CyclePlan | None, list[dg.RunRequest]]:
    """Plan the cycle at ``as_of`` and record its batch (the cursor); returns the plan and its runs."""
    plan = plan_cycle(book, landing, pepper, policy, as_of)
    if plan is None:
        return None, []
    book.record_landing_batch(plan.batch_id, "cycle", plan.files, plan.shards, as_of)
    return plan, cycle_run_requests(plan)


def build_schedules(policy: Policy) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name="retraining_cycle",
        cron_schedule=policy.cycle.cron,
        execution_timezone=policy.cycle.timezone,
        target=dg.AssetSelection.assets(*SHARD_ASSETS, *MERGE_ASSETS),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            "Ingests landing files no batch has taken yet and drops rows past retention_days: one run per shard that "
            "received rows or holds expired rows (plus the merges); untouched shards are not run. Tombstoned subjects "
            "are dropped on the way in."
        ),
    )
    def retraining_cycle(context: dg.ScheduleEvaluationContext, ledger: LedgerResource, landing: LandingResource, pepper: PepperResource):
        as_of = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        plan, requests = evaluate_cycle(ledger.get(), landing.get(), pepper.get(), policy, as_of.astimezone(dt.UTC))
        if plan is None:
            return dg.SkipReason("no new landing files and nothing past retention")
        return requests

    return [retraining_cycle]

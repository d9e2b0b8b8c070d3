"""The retraining cycle: a schedule asking for one cycle_job run over new landing files and retention."""


import datetime as dt

import dagster as dg

from erasure_pipeline import tags, ticks
from erasure_pipeline.graph import Graph
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LandingResource, LedgerResource


def build_schedules(policy: Policy, graph: Graph, jobs: dict[str, dg.JobDefinition]) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name="retraining_cycle",
        cron_schedule=policy.cycle.cron,
        execution_timezone=policy.cycle.timezone,
        job=jobs[tags.CYCLE_JOB],
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            "Ingests landing files no finished batch has taken and drops rows past retention_days: one cycle_job run for "
            "every shard that received rows or holds expired rows, then the merges once; untouched shards are not run. "
            "Reads only: the run takes its files when it starts."
        ),
    )
    def retraining_cycle(context: dg.ScheduleEvaluationContext, ledger: LedgerResource, landing: LandingResource):
        as_of = (context.scheduled_execution_time or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        request = ticks.cycle_request(ledger.get(), context.instance, landing.get(), graph, policy, as_of)
        if request is None:
            return dg.SkipReason("no new landing files and nothing past retention")
        return request

    return [retraining_cycle]

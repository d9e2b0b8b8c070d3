"""The retraining cycle: a schedule asking for one cycle_job run over new landing files and retention."""


import datetime as dt

import dagster as dg

from erasure_pipeline.core import names
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.defs import ticks
from erasure_pipeline.defs.resources import PipelineResource
from erasure_pipeline.stores.factory import lake_at


def build_schedules(policy: Policy, graph: Graph, jobs: dict[str, dg.JobDefinition]) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name=names.CYCLE_SCHEDULE,
        cron_schedule=policy.cycle.cron,
        execution_timezone=policy.cycle.timezone,
        job=jobs[names.CYCLE_JOB],
        default_status=dg.DefaultScheduleStatus.STOPPED,
        owners=policy.owners,
        description=(
            "Ingests landing files no finished batch has taken and drops rows past retention_days: one cycle_job run for "
            "every shard that received rows or holds expired rows, then the merges once; untouched shards are not run. "
            "Reads only: the run takes its files when it starts. The request's tags name the files and the shards past "
            "retention; a tick evaluated more than a day after its time (a preview of a past tick) runs as of now."
        ),
    )
    def retraining_cycle(context: dg.ScheduleEvaluationContext, pipeline: PipelineResource):
        now = dt.datetime.now(dt.UTC)
        scheduled = context.scheduled_execution_time
        as_of = now if scheduled is None or scheduled.astimezone(dt.UTC) < now - names.LATE_TICK else scheduled.astimezone(dt.UTC)
        request = ticks.cycle_request(pipeline.book(), context.instance, lake_at(pipeline.landing.url), graph, policy, as_of)
        if request is None:
            return dg.SkipReason("no new landing files and nothing past retention")
        return request

    return [retraining_cycle]

"""The erasure sensor (pending requests -> one run per tick), the failure sensor of the project's jobs, the
staleness sensor (the ``up_to_date`` check of every shard partition), and the pool queue's watch (a step
stranded in Dagster's concurrency queue is given its free slot)."""


import datetime as dt

import dagster as dg

from erasure_pipeline.core import names
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.defs import runtime, ticks
from erasure_pipeline.defs.failures import failure_of
from erasure_pipeline.defs.resources import PipelineResource
from erasure_pipeline.ledger import utcnow


def build_sensors(policy: Policy, graph: Graph, jobs: dict[str, dg.JobDefinition]) -> list[dg.SensorDefinition]:
    @dg.sensor(
        name=names.ERASURE_SENSOR,
        job=jobs[names.ERASURE_JOB],
        # The sensor daemon evaluates sensors once a loop of 5 s (dagster/_daemon/sensor.py, MIN_INTERVAL_LOOP_TIME). An
        # interval of 5 s aliases to 10 s: each tick is stamped a little after its loop starts, so 5 s later it is not
        # yet due. 1 s: every loop (its ticks only read the ledger).
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        owners=policy.owners,
        description=("Asks for one erasure_job run per tick covering every request ready to run (run key = batch id, "
                     "tags = request ids). Reads only: the run claims its requests when it starts."),
    )
    def erasure_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        book = pipeline.book()
        now = dt.datetime.now(dt.UTC)
        request = ticks.erasure_request(book, context.instance, now)
        if request is None:
            return dg.SkipReason(ticks.why_nothing_to_run(book, now))
        return [request]

    @dg.run_failure_sensor(
        name=names.FAILURE_SENSOR,
        monitored_jobs=[jobs[name] for name in names.JOB_KINDS],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A failed run of the project's jobs: its requests become failed (retried by the next ticks), its batch released.",
    )
    def erasure_failure_sensor(context: dg.RunFailureSensorContext, pipeline: PipelineResource):
        run = context.dagster_run
        line, blocked = failure_of(run.run_id, context.get_step_failure_events())
        pipeline.book().runs.fail_run(run.run_id, line or "checks failed", blocked=blocked)

    @dg.sensor(
        name=names.STALENESS_SENSOR,
        job=jobs[names.STALENESS_JOB],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        owners=policy.owners,
        description=("When the set of stale shard partitions changes (a policy change, a rebuild, an input rebuilt by hand), "
                     "asks for one staleness_job run, which reports every shard partition's up_to_date check: failed, saying "
                     "which policy fields changed from what, or passed. Dagster's UI shows no staleness for partitioned "
                     "assets; these checks it does."),
    )
    def staleness_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        request, cursor, summary = ticks.staleness_request(pipeline.book(), context.instance, policy, graph, context.cursor)
        if request is None:
            return dg.SkipReason(summary)
        return dg.SensorResult(run_requests=[request], cursor=cursor)

    return [erasure_sensor, erasure_failure_sensor, staleness_sensor, pool_queue_sensor(policy, graph), notices_sensor(policy, jobs)]


def notices_sensor(policy: Policy, jobs: dict[str, dg.JobDefinition]) -> dg.SensorDefinition:
    @dg.sensor(
        name=names.NOTICES_SENSOR,
        job=jobs[names.DELIVER_JOB],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        owners=policy.owners,
        description=("When a notice to a recipient (or a DRP status callback) is due, asks for one deliver_notices_job run; "
                     "never two at once. Retries wait out their backoff in the ledger, so a restart loses none."),
    )
    def notices_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        request, why = ticks.deliver_request(pipeline.book(), context.instance, utcnow())
        if request is None:
            return dg.SkipReason(why)
        return [request]

    return notices_sensor


def pool_queue_sensor(policy: Policy, graph: Graph) -> dg.SensorDefinition:
    @dg.sensor(
        name=names.POOL_QUEUE_SENSOR,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        owners=policy.owners,
        description=("Watches the project's pools in Dagster's concurrency queue: a step left waiting unassigned beside a free "
                     "slot (a race in Dagster's claim: a slot freed between its check and its queue entry) would wait for that "
                     "pool's next writer, forever if there is none; this assigns it the slot, as the free would have. Runs "
                     "nothing; its tick says what it did."),
    )
    def pool_queue_sensor(context: dg.SensorEvaluationContext):
        pools = names.pools(graph.partitions)
        assigned = runtime.assign_stranded(context.instance, pools, context.log.warning)
        return dg.SkipReason(f"assigned a free slot to the step stranded in pool(s) {', '.join(assigned)}" if assigned
                             else f"{len(pools)} pools: no step waits stranded")

    return pool_queue_sensor

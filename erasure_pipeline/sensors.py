"""The erasure sensor (pending requests -> one run per tick) and the failure sensor of the project's jobs."""

import datetime as dt

import dagster as dg

from erasure_pipeline import tags, ticks
from erasure_pipeline.resources import LedgerResource
from erasure_pipeline.runner import safe_failure_line


def build_sensors(jobs: dict[str, dg.JobDefinition]) -> list:
    @dg.sensor(
        name="erasure_sensor",
        job=jobs[tags.ERASURE_JOB],
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=("Asks for one erasure_job run per tick covering every request ready to run (run key = batch id, "
                     "tags = request ids). Reads only: the run claims its requests when it starts."),
    )
    def erasure_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource):
        book = ledger.get()
        now = dt.datetime.now(dt.UTC)
        request = ticks.erasure_request(book, context.instance, now)
        if request is None:
            late = book.overdue(now, within=dt.timedelta(days=7), stuck_after=dt.timedelta(hours=6))
            return dg.SkipReason(f"no erasure request to run; {len(late)} requests overdue, due within 7 days or stuck "
                                 "(erasure-pipeline status --overdue)")
        return [request]

    @dg.run_failure_sensor(
        name="erasure_failure_sensor",
        monitored_jobs=list(jobs.values()),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A failed run of the project's jobs: its requests become failed (retried by the next ticks), its batch released.",
    )
    def erasure_failure_sensor(context: dg.RunFailureSensorContext, ledger: LedgerResource):
        run = context.dagster_run
        ledger.get().fail_run(run.run_id, safe_failure_line(run.run_id, context.get_step_failure_events()))

    return [erasure_sensor, erasure_failure_sensor]

"""The erasure sensor (pending requests -> one run per shard batch) and its failure sensor."""

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.erasure.service import BATCH_TAG, erasure_run_config, fail_batch, request_tags, tick
from erasure_pipeline.erasure.verify import Stores
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LandingResource, LedgerResource, PepperResource, VectorStoreResource

CERTIFIER = "erasure_certificates"


def run_requests_for(batches) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(
            run_key=b.batch_id,
            partition_key=identity.partition_key(b.shard),
            asset_selection=[dg.AssetKey(a) for a in [*b.assets, CERTIFIER]],
            tags=request_tags(b),
            run_config=erasure_run_config(b.assets),
        )
        for b in batches
    ]


def build_sensors(policy: Policy) -> list:
    @dg.sensor(
        name="erasure_sensor",
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.all(),
        description="Turns pending erasure requests into one run per shard batch (run_key = batch id, tags = request ids).",
    )
    def erasure_sensor(
        context: dg.SensorEvaluationContext, ledger: LedgerResource, lake: LakeResource, landing: LandingResource,
        vectors: VectorStoreResource, pepper: PepperResource,
    ):
        book = ledger.get()
        stores = Stores(policy, lake.get(), landing.get(), vectors.get(), book, pepper.get())
        result = tick(book, stores)
        requests = run_requests_for(result.batches)
        if not requests:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"no erasure batch to run at ledger seq {result.cursor}; "
                    f"{len(result.certified_without_run)} requests certified without a run (no data)"
                ),
                cursor=str(result.cursor),
            )
        return dg.SensorResult(run_requests=requests, cursor=str(result.cursor))

    @dg.run_failure_sensor(name="erasure_failure_sensor", default_status=dg.DefaultSensorStatus.RUNNING,
                           description="Marks the requests of a failed erasure run as failed (retry with `erasure-pipeline retry`).")
    def erasure_failure_sensor(context: dg.RunFailureSensorContext):
        from erasure_pipeline.erasure.service import default_ledger

        batch_id = context.dagster_run.tags.get(BATCH_TAG)
        if batch_id:
            fail_batch(default_ledger(), batch_id, context.dagster_run.run_id, f"run {context.dagster_run.run_id} failed")

    return [erasure_sensor, erasure_failure_sensor]

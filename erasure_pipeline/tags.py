"""Names the Dagster layer and the pure core share: run tags, the pool, job names. No imports.

Every tag value is a request id, a batch id, a shard key or a job kind: never a subject id
and never a keyed hash (tags are indexed and shown everywhere in the UI).
"""

BATCH = "erasure_pipeline/batch"
"""The batch (erasure) or landing batch (cycle, ingest, rebuild) a run claims."""
REQUESTS = "erasure_pipeline/requests"
"""Up to ``MAX_IDS_IN_TAG`` request ids of an erasure run, comma-separated."""
KIND = "erasure_pipeline/kind"
"""What a run does: ``erasure``, ``cycle``, ``ingest`` or ``rebuild``."""
RUN_KEY = "dagster/run_key"
MAX_IDS_IN_TAG = 20

POOL = "erasure_pipeline"
"""The Dagster pool every writing step runs in; its limit must be 1 (``instance_setup``)."""
POOL_LIMIT = 1

ERASURE_JOB = "erasure_job"
CYCLE_JOB = "cycle_job"
INGEST_JOB = "ingest_job"
REBUILD_JOB = "rebuild_job"
JOB_KINDS = {ERASURE_JOB: "erasure", CYCLE_JOB: "cycle", INGEST_JOB: "ingest", REBUILD_JOB: "rebuild"}


def erasure_run_tags(batch_id: str, request_ids: list[str]) -> dict[str, str]:
    """The tags of an erasure run: its batch, the first ``MAX_IDS_IN_TAG`` request ids, its kind."""
    shown = ",".join(request_ids[:MAX_IDS_IN_TAG])
    if len(request_ids) > MAX_IDS_IN_TAG:
        shown += f",+{len(request_ids) - MAX_IDS_IN_TAG} more"
    return {BATCH: batch_id, REQUESTS: shown, KIND: "erasure"}

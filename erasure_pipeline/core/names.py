"""Names the Dagster layer, the CLI and the pure core share: tags, the pool, jobs, ops, sensors, thresholds.

Each is defined once, here. Every tag value is a request id, a batch id, a shard key, a job kind, a count or a
landing file name (as the run config names it):
never a subject id and never a keyed hash (tags are indexed and shown everywhere in the UI).
"""

from __future__ import annotations

import datetime as dt

# ---------------------------------------------------------------- run tags
BATCH = "erasure_pipeline/batch"
"""The batch (erasure) or landing batch (cycle, ingest, rebuild) a run claims."""
REQUESTS = "erasure_pipeline/requests"
"""Up to ``MAX_IDS_IN_TAG`` request ids of an erasure run, comma-separated."""
KIND = "erasure_pipeline/kind"
"""What a run does: ``erasure``, ``cycle``, ``ingest`` or ``rebuild``."""
OUTCOME = "erasure_pipeline/outcome"
"""What a run did, in the run list: an erasure's ``erased 2, no data found 1`` or ``nothing erased: held (not
erased) 1``; any run's ``skipped: batch held elsewhere`` (another run holds its batch, or it finished before)."""
LANDING_FILES = "erasure_pipeline/landing_files"
"""A cycle's new landing files: how many, and the first names."""
RETENTION_SHARDS = "erasure_pipeline/retention_shards"
"""The shards a cycle visits for rows past retention."""
AS_OF = "erasure_pipeline/as_of"
"""The time a cycle applies retention as of."""
LATE_TICK = dt.timedelta(days=1)
"""A schedule tick evaluated this long after its scheduled time (a preview of a past tick, a catch-up after
downtime) runs as of now: retention is applied to the day it runs, not to the day it was due."""
RUN_KEY = "dagster/run_key"
MAX_IDS_IN_TAG = 20

# ---------------------------------------------------------------- the pools
POOL = "erasure_pipeline"
"""The prefix of the project's Dagster pools. Each writer of a store runs in one of them, every one of limit 1
(``defs/runtime.ensure_pools``): writers of one shard never overlap, writers of different shards run at once."""
POOL_LIMIT = 1
LANDING_POOL = f"{POOL}/landing"
"""The claim steps: they scrub landing files and write ingest staging, and build the lookup tables."""
MERGE_POOL = f"{POOL}/merges"
"""The merge steps (and the certificate step, which proves right after its merges)."""


def shard_op(partition: str) -> str:
    """A job's shard step is an op of its own per shard, named as its partition (``shard_03``), in its shard's pool."""
    return partition


def shard_pool(partition: str) -> str:
    """The pool of one shard's writers: a job's shard step, or an asset step while it computes that partition."""
    return f"{POOL}/{partition}"


def pools(partitions) -> list[str]:
    return [LANDING_POOL, MERGE_POOL, *(shard_pool(p) for p in partitions)]


# ---------------------------------------------------------------- jobs, ops, sensors, schedules
ERASURE_JOB = "erasure_job"
CYCLE_JOB = "cycle_job"
INGEST_JOB = "ingest_job"
REBUILD_JOB = "rebuild_job"
STALENESS_JOB = "staleness_job"
"""Reports the up_to_date check of every shard partition (reads only; not one of the pipeline's writing jobs)."""
DELIVER_JOB = "deliver_notices_job"
"""POSTs the due notices to recipients and DRP status callbacks (writes the outbox only, never a store)."""
JOB_KINDS = {ERASURE_JOB: "erasure", CYCLE_JOB: "cycle", INGEST_JOB: "ingest", REBUILD_JOB: "rebuild"}

CLAIM_REQUESTS_OP = "claim_requests"
CLAIM_LANDING_OP = "claim_landing_files"
CLAIM_REBUILD_OP = "claim_rebuild"
REPORT_STALENESS_OP = "report_staleness"
DELIVER_OP = "deliver_notices"
MERGE_OP = "merge"
MERGE_AND_CERTIFY_OP = "merge_and_certify"
CLAIM_OP_OF_JOB = {ERASURE_JOB: CLAIM_REQUESTS_OP, CYCLE_JOB: CLAIM_LANDING_OP, INGEST_JOB: CLAIM_LANDING_OP,
                   REBUILD_JOB: CLAIM_REBUILD_OP}
"""The op whose config a job's run request carries (what the run claims)."""

ERASURE_SENSOR = "erasure_sensor"
FAILURE_SENSOR = "erasure_failure_sensor"
STALENESS_SENSOR = "staleness_sensor"
NOTICES_SENSOR = "notices_sensor"
POOL_QUEUE_SENSOR = "pool_queue_sensor"
CYCLE_SCHEDULE = "retraining_cycle"
CERTIFICATES_ASSET = "erasure_certificates"
ON_TIME_CHECK = "requests_on_time"
RECIPIENTS_CHECK = "recipients_confirmed"
"""Fails (ERROR) while a notice to a recipient is a dead letter; warns while notices wait for confirmation."""
POLICY_CHECK = "up_to_date"
"""Per shard partition: made under the policy in effect from its current inputs (fails, saying why, until rebuilt)."""

# ---------------------------------------------------------------- thresholds
DUE_SOON = dt.timedelta(days=7)
"""A live request this close to its due date needs attention."""
STUCK_AFTER = dt.timedelta(hours=6)
"""A live request (not on hold) that has not moved for this long is stuck."""
MAX_REQUESTS_PER_RUN = 5000
MAX_AUTO_ATTEMPTS = 3
"""A request whose runs failed this many times waits for an operator (``erasure-pipeline retry``)."""
BLOCKED_RETRY = dt.timedelta(minutes=1)
"""A request blocked by a cause outside it (``core.errors.BlockingError``) is retried this often, without limit."""


def retry_backoff(attempts: int) -> dt.timedelta:
    """A crashed or failed run's requests are retried at once the first time, then after 1 and 2 minutes."""
    return dt.timedelta(seconds=0 if attempts <= 1 else 60 * 2 ** (attempts - 2))


def erasure_run_tags(batch_id: str, request_ids: list[str]) -> dict[str, str]:
    """The tags of an erasure run: its batch, the first ``MAX_IDS_IN_TAG`` request ids, its kind."""
    shown = ",".join(request_ids[:MAX_IDS_IN_TAG])
    if len(request_ids) > MAX_IDS_IN_TAG:
        shown += f",+{len(request_ids) - MAX_IDS_IN_TAG} more"
    return {BATCH: batch_id, REQUESTS: shown, KIND: "erasure"}

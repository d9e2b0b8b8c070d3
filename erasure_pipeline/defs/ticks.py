"""What a tick asks for: pure reads of the ledger, the landing listing and Dagster's runs.

Dagster evaluates sensors and schedules speculatively (the UI's "Preview tick result", a retried
tick, a daemon restart), so nothing here writes. A tick returns at most one RunRequest whose config
names exactly what the run will claim (request ids; landing files and cycle time), and whose run key
is fresh for that set: a repeated tick asks for the same run, which Dagster launches once.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from erasure_pipeline.core import identity, names
from erasure_pipeline.core.contracts import contracts_for
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.names import MAX_AUTO_ATTEMPTS, MAX_REQUESTS_PER_RUN, retry_backoff
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.defs import runtime
from erasure_pipeline.erasure.drp import pending_callbacks
from erasure_pipeline.kinds.staleness import expired_partitions, stale_partitions
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.ledger.requests import CLAIMABLE
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.lake import Lake
from erasure_pipeline.stores.landing import landing_files


def fresh_run_key(instance: dg.DagsterInstance, base: str) -> str:
    """``base-N`` for the first N no run has used: a set that was run before (and failed) gets a new run."""
    n = 0
    while instance.get_runs(filters=dg.RunsFilter(tags={names.RUN_KEY: f"{base}-{n}"}), limit=1):
        n += 1
    return f"{base}-{n}"


def live_runs(instance: dg.DagsterInstance, job_name: str, live: Callable[[str], bool]) -> list[dg.DagsterRun]:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=list(NOT_FINISHED_STATUSES)))
    return [r for r in runs if live(r.run_id)]


def _config_of(run: dg.DagsterRun, op: str) -> dict:
    return (run.run_config.get("ops", {}).get(op, {}) or {}).get("config", {})


def eligible_requests(book: Ledger, instance: dg.DagsterInstance, now: dt.datetime) -> list[str]:
    """Requests a run should claim now: pending ones; and, while automatic attempts remain and their
    backoff has passed, failed ones and ones held by a run that is gone. Requests a live (queued or
    running) erasure run already names are left to it."""
    live = functools.cache(runtime.run_is_live(instance, book))
    covered = {rid for run in live_runs(instance, names.ERASURE_JOB, live) for rid in _config_of(run, names.CLAIM_REQUESTS_OP).get("request_ids", [])}
    def ready(r: dict) -> bool:
        if r["status"] == "pending":
            return True
        if r["blocked_by"]:  # a cause outside the request: retried until it is gone, every BLOCKED_RETRY
            return r["status"] == "failed" and r["updated_at"] <= now - names.BLOCKED_RETRY
        retry_due = r["attempts"] < MAX_AUTO_ATTEMPTS and r["updated_at"] <= now - retry_backoff(r["attempts"])
        return retry_due and (r["status"] == "failed" or not r["run_id"] or not live(r["run_id"]))

    ready_ids = [r["request_id"] for r in book.requests.list(status=CLAIMABLE) if r["request_id"] not in covered and ready(r)]
    return ready_ids[:MAX_REQUESTS_PER_RUN]


def erasure_request(book: Ledger, instance: dg.DagsterInstance, now: dt.datetime) -> dg.RunRequest | None:
    ids = eligible_requests(book, instance, now)
    if not ids:
        return None
    batch = fresh_run_key(instance, "eb-" + hashlib.sha256("|".join(sorted(ids)).encode()).hexdigest()[:16])
    return dg.RunRequest(run_key=batch, job_name=names.ERASURE_JOB, tags=names.erasure_run_tags(batch, ids),
                         run_config={"ops": {names.CLAIM_REQUESTS_OP: {"config": {"batch_id": batch, "request_ids": ids}}}})


def cycle_request(book: Ledger, instance: dg.DagsterInstance, landing: Lake, graph: Graph, policy: Policy,
                  as_of: dt.datetime) -> dg.RunRequest | None:
    """New landing files (not taken by a finished batch or a live run) and rows past retention: one cycle run."""
    taken = book.runs.landing_files_taken(runtime.run_is_live(instance, book))
    present = [f.name for f in landing_files(landing, contracts_for(policy))]
    new = sorted({n for n in present if n not in taken} | set(redelivered(book, landing, [n for n in present if n in taken])))
    expired = expired_partitions(book, policy, graph, as_of)
    if not new and not expired:
        return None
    seed = "\n".join(new) if new else f"retention:{as_of.date().isoformat()}"
    batch = fresh_run_key(instance, "lb-" + hashlib.sha256(seed.encode()).hexdigest()[:16])
    # What the tick would take, where the UI's tick preview shows it: the files (their rows' shards are known
    # once the run stages them) and the shards holding rows past retention.
    what = {names.LANDING_FILES: f"{len(new)}: {', '.join(new[:3])}{' …' if len(new) > 3 else ''}" if new else "none",
            names.RETENTION_SHARDS: ",".join(identity.partition_key(s) for s in sorted(expired)) or "none",
            names.AS_OF: as_of.isoformat(timespec="seconds")}
    return dg.RunRequest(
        run_key=batch, job_name=names.CYCLE_JOB, tags={names.BATCH: batch, names.KIND: "cycle", **what},
        run_config={"ops": {names.CLAIM_LANDING_OP: {"config": {"batch_id": batch, "kind": "cycle", "landing_files": new,
                                                               "as_of": as_of.isoformat()}}}},
    )


def redelivered(book: Ledger, landing: Lake, taken: list[str]) -> list[str]:
    """Taken landing files whose content is no longer what the pipeline took or left there: a source re-delivered
    a file under a name already used (its rows must be ingested, its erased subjects dropped and scrubbed). A
    file's stamp (size and mtime, or ETag) says it is unchanged without reading it; one whose stamp changed is
    hashed, and only a changed hash counts (a touch is not a delivery)."""
    if not taken:
        return []
    recorded, stamps = book.runs.landing_records(), landing.stamps()
    out = []
    for name in taken:
        content, stamp = recorded.get(name, (None, None))
        if content is None or (stamp is not None and stamps.get(name) == stamp):
            continue
        if lk.object_hash(landing, name) not in (None, content):
            out.append(name)
    return out


def why_nothing_to_run(book: Ledger, now: dt.datetime) -> str:
    """A tick's skip reason: what holds requests back, when something does (a blocking cause, a review)."""
    late = book.requests.overdue(now, within=names.DUE_SOON, stuck_after=names.STUCK_AFTER)
    blocked = [r for r in book.requests.list(status=["failed"]) if r["blocked_by"]]
    review = [r for r in late if r["status"] == "needs_review"]
    parts = [f"no erasure request to run; {len(late)} requests overdue, due within {names.DUE_SOON.days} days or stuck"]
    if blocked:
        parts.append(f"{len(blocked)} blocked by {blocked[0]['blocked_by']} (retried every {int(names.BLOCKED_RETRY.total_seconds())} s)")
    if review:
        parts.append(f"{len(review)} waiting for review (erasure-pipeline review)")
    return "; ".join(parts) + " (erasure-pipeline status --overdue)"


def stale_shard_partitions(book: Ledger, policy: Policy, graph: Graph) -> dict[tuple[str, str], str]:
    """(node, partition) -> why, for every materialised shard partition that is not up to date."""
    return {(name, p): why for name, parts in stale_partitions(book, policy, graph).items() if graph.node(name).partitioned
            for p, why in parts.items() if why != "missing"}


def staleness_request(book: Ledger, instance: dg.DagsterInstance, policy: Policy, graph: Graph,
                      cursor: str | None) -> tuple[dg.RunRequest | None, str, str]:
    """(a staleness_job run when the set of stale shard partitions differs from the one last reported, the new
    cursor, a summary). The run reports every shard partition's ``up_to_date`` check, so the UI shows which
    are stale and why, and which are current again (after a rebuild, or a policy change undone)."""
    stale = stale_shard_partitions(book, policy, graph)
    digest = hashlib.sha256(json.dumps(sorted((n, p, w) for (n, p), w in stale.items())).encode()).hexdigest()[:16]
    assets = sorted({n for n, _p in stale})
    summary = (f"{len(stale)} shard partitions are not up to date ({', '.join(assets)}): {REBUILD_HINT}" if stale
               else "every materialised shard partition is up to date")
    if digest == (cursor or EMPTY_DIGEST):
        return None, digest, summary
    key = fresh_run_key(instance, f"staleness-{digest}")
    return dg.RunRequest(run_key=key, job_name=names.STALENESS_JOB, tags={names.KIND: "staleness"}), digest, summary


DELIVERY_RUN_GRACE = dt.timedelta(minutes=5)


def deliver_request(book: Ledger, instance: dg.DagsterInstance, now: dt.datetime) -> tuple[dg.RunRequest | None, str]:
    """(a deliver_notices_job run when a notice is due or a DRP agent has a status to hear, and none is running; why not)."""
    due, callbacks = book.notices.due_count(now), len(pending_callbacks(book))
    if not due and not callbacks:
        return None, "no notice due"
    # A run started in the last few minutes is still delivering; an older one left STARTED by a killed process
    # does not hold delivery back (leases keep two runs from sending one notice at once).
    running = instance.get_runs(filters=dg.RunsFilter(job_name=names.DELIVER_JOB, statuses=list(NOT_FINISHED_STATUSES),
                                                      created_after=now - DELIVERY_RUN_GRACE), limit=1)
    if running:
        return None, f"{due} notices due; a delivery run is under way ({running[0].run_id})"
    key = fresh_run_key(instance, f"deliver-{now:%Y%m%dT%H%M%S}")
    return dg.RunRequest(run_key=key, job_name=names.DELIVER_JOB, tags={names.KIND: "deliver"}), f"{due} notices due, {callbacks} callbacks"


REBUILD_HINT = "launch rebuild_job (no config needed) or run `erasure-pipeline backfill --stale`"
EMPTY_DIGEST = hashlib.sha256(b"[]").hexdigest()[:16]

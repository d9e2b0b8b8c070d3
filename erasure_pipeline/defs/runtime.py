"""What running nodes inside Dagster needs, shared by the assets, the jobs and the CLI's runner.

- the pool every step that writes a store runs in, whose limit the project's code sets and checks;
- which runs are alive (Dagster's run status, and for runs on this host, whether their process is);
- the sweep that fails runs whose process died (kill -9, a crashed ``erasure-pipeline process``),
  frees their pool slots and hands their requests to the next tick.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import dagster as dg

from erasure_pipeline.core import names
from erasure_pipeline.ledger import Ledger

HOST = socket.gethostname()


# ---------------------------------------------------------------- progress of in-process runs
_progress: Callable[[str], None] | None = None


def set_progress(callback: Callable[[str], None] | None) -> None:
    """Where steps running in this process report progress (the CLI prints it); None: nowhere."""
    global _progress
    _progress = callback


def report_progress(message: str) -> None:
    if _progress is not None:
        _progress(message)


# ---------------------------------------------------------------- the pool
def pool_limit(instance: dg.DagsterInstance) -> int | None:
    for pool in instance.event_log_storage.get_pool_limits():
        if pool.name == names.POOL:
            return pool.limit
    return None


def ensure_pool(instance: dg.DagsterInstance) -> bool:
    """Set the pool's limit in the instance's storage if it is not ``POOL_LIMIT``; True if it had to.

    The limit lives in Dagster's database (the UI's Concurrency page shows it), set by this code,
    so no instance file can leave merges and shard writes unserialised."""
    if pool_limit(instance) == names.POOL_LIMIT:
        return False
    instance.event_log_storage.set_concurrency_slots(names.POOL, names.POOL_LIMIT)
    return True


def require_pool(instance: dg.DagsterInstance) -> None:
    """At the start of a writing step outside the project's jobs: fail loudly if the pool had no limit."""
    if ensure_pool(instance):
        raise dg.Failure(
            f"The Dagster instance had no limit for pool '{names.POOL}', so this step was not serialised with other "
            f"writers. The limit ({names.POOL_LIMIT}) is set now: re-execute the run. (Any erasure-pipeline command, or "
            f"`dagster instance concurrency set {names.POOL} {names.POOL_LIMIT}`, sets it too.)"
        )


# ---------------------------------------------------------------- who is alive
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_UNREAD = object()


def run_is_live(instance: dg.DagsterInstance, book: Ledger) -> Callable[..., bool]:
    """``live(run_id, record)``: a run is alive while Dagster has not finished it and, when its job-run
    record says it runs on this host, while that process exists. Runs on other hosts are left to
    Dagster's run monitoring (``run_monitoring`` in the instance). The ledger passes the record it read
    in its own transaction; other callers may omit it."""

    def live(run_id: str, record=_UNREAD) -> bool:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return False
        if record is _UNREAD:
            record = book.runs.job_run(run_id)
        if record is not None and record["finished_at"] is not None:
            return False  # the ledger saw it end (e.g. Dagster's storage went away before it could record the failure)
        if record is not None and record["finished_at"] is None and record["host"] == HOST:
            return pid_alive(record["pid"])
        return run is not None

    return live


def sweep_interrupted(instance: dg.DagsterInstance, book: Ledger, log: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Runs started on this host whose process is gone: mark them failed in Dagster (so the UI never shows
    them in progress), free their pool slots, and fail them in the ledger (their requests are retried)."""
    swept = []
    for record in book.runs.unfinished(HOST):
        if record["pid"] == os.getpid() or pid_alive(record["pid"]):
            continue  # still running (this process's own runs included)
        message = f"interrupted: the process that ran it (pid {record['pid']} on {HOST}) is gone"
        run = instance.get_run_by_id(record["run_id"])
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, message)
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(record["run_id"])
        book.runs.fail_run(record["run_id"], message)
        log(f"run {record['run_id'][:8]} ({record['kind']} {record['batch_id']}) {message}; marked failed, its work will be retried")
        swept.append(record["run_id"])
    # Runs the ledger saw fail while Dagster's storage could not record it: tell Dagster now it answers again.
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=None, statuses=[dg.DagsterRunStatus.STARTED])):
        record = book.runs.job_run(run.run_id)
        if record is not None and record["finished_at"] is not None and record.get("outcome") == "failed":
            instance.report_run_failed(run, "failed: recorded by the ledger while Dagster's instance storage was unavailable")
            if instance.event_log_storage.supports_global_concurrency_limits:  # its pool slot, or every later run waits
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            log(f"run {run.run_id[:8]} failed while Dagster's storage was unavailable; marked failed now, its work will be retried")
            swept.append(run.run_id)
    return swept


BLOCKED = "blocking checks failed"
"""How a job step that stops on a failed blocking check says so (like Dagster's own check failure)."""


def blocked(names_: list[str]) -> dg.Failure:
    return dg.Failure(f"{BLOCKED}: {', '.join(names_)}")

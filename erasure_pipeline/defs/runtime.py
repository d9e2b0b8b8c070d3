"""What running nodes inside Dagster needs, shared by the assets, the jobs and the CLI's runner.

- the pools the steps that write a store run in (landing, merges, one per shard), whose limits the project's
  code sets and checks, and a slot of one taken by an asset step for each shard partition it computes;
- which runs are alive (Dagster's run status, and for runs on this host, whether their process is);
- the sweep that fails runs whose process died (kill -9, a crashed ``erasure-pipeline process``),
  frees their pool slots and hands their requests to the next tick.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator

import dagster as dg
import sqlalchemy as sa

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


# ---------------------------------------------------------------- the pools
def pool_limits(instance: dg.DagsterInstance) -> dict[str, int | None]:
    return {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}


def ensure_pools(instance: dg.DagsterInstance, partitions=()) -> bool:
    """Set each project pool's limit (``names.pools``: landing, merges and one per shard) in the instance's
    storage where it is not ``POOL_LIMIT``; True if one had to be.

    The limits live in Dagster's database (the UI's Concurrency page shows them), set by this code, so no
    instance file can leave two writers of one shard unserialised: a pool with no limit has no slots to wait for.
    Every claim step sets them for every shard before its shard steps start."""
    limits = pool_limits(instance)
    missing = [p for p in names.pools(partitions) if limits.get(p) != names.POOL_LIMIT]
    for pool in missing:
        instance.event_log_storage.set_concurrency_slots(pool, names.POOL_LIMIT)
    return bool(missing)


def require_pools(instance: dg.DagsterInstance, partitions) -> None:
    """At the start of an asset step (outside the project's jobs): fail loudly if a pool had no limit."""
    if ensure_pools(instance, partitions):
        raise dg.Failure(
            f"The Dagster instance had no limit for the project's pools ({names.POOL}/...), so this step was not serialised "
            f"with other writers. The limits ({names.POOL_LIMIT}) are set now: re-execute the run. (Any erasure-pipeline "
            f"command sets them too.)"
        )


@contextlib.contextmanager
def pool_slot(instance: dg.DagsterInstance, run_id: str, step_key: str, pool: str,
              log: Callable[[str], None] = lambda _m: None, poll: float = 0.25) -> Iterator[None]:
    """Hold one slot of ``pool`` while the block runs: how an asset step that computes several shard
    partitions (a single-run backfill) takes each shard's pool in turn, as a job's shard step does
    through its op's ``pool``. The slot is claimed through Dagster's own concurrency storage (so the UI's
    Concurrency page shows who holds and who waits) under ``step_key/pool``, and freed afterwards."""
    key = f"{step_key}/{pool}"
    storage = instance.event_log_storage
    said, since = False, None
    try:  # freed (or taken out of the queue) however the block ends, waiting included
        while not (status := storage.claim_concurrency_slot(pool, run_id, key)).is_claimed:
            if not said:
                log(f"waiting for pool {pool} (another run writes that shard)")
                said = True
            # Stranded (``assign_stranded``) at every look for STRANDED_SETTLE: assign; a look that is not ends it.
            since = (since or time.monotonic()) if status.assigned_timestamp is None and _stranded(storage, [pool]) else None
            if since is not None and time.monotonic() - since >= STRANDED_SETTLE and _assign_head(storage, pool):
                log(_ASSIGNED.format(pool=pool))
                since = None
            time.sleep(poll)
        yield
    finally:
        storage.free_concurrency_slot_for_step(run_id, key)


def assign_stranded(instance: dg.DagsterInstance, pools, log: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Assign the slot of each pool where a step waits stranded in Dagster's queue; return those pools.

    Dagster's claim queues a step in two statements (is a slot free? then its queue entry, assigned if
    so) and assigns waiting entries only when a slot is freed or added. A slot freed between the two
    leaves the entry unassigned beside a free slot with nothing left to assign it: the step waits for
    the pool's next writer, forever if there is none (``SqlEventLogStorage.claim_concurrency_slot``,
    dagster 1.13; seen twice in CI as a multiprocess run's second step of one shard waiting 300 s).
    Stranded: an entry waits unassigned while the pool has a slot no entry is assigned to, seen twice
    at least ``STRANDED_SETTLE`` apart (a free under way assigns within milliseconds). The queue's head
    is assigned, as a free would have, if still no entry holds the slot (``_assign_head``). An asset
    step's ``pool_slot`` checks its own pool at each look while it waits (no sleep of its own); a job
    step's pool is claimed by Dagster's executor, so every claim step and CLI command checks all the
    project's pools (``before_work``), and so does the ``pool_queue_sensor`` every 30 s under the daemon
    (a stranded run may have no run after it)."""
    storage = instance.event_log_storage
    seen = _stranded(storage, pools)
    if seen:
        time.sleep(STRANDED_SETTLE)
        seen = [p for p in _stranded(storage, seen) if _assign_head(storage, p)]
    for pool in seen:
        log(_ASSIGNED.format(pool=pool))
    return seen


_ASSIGNED = "pool {pool}: a step waited unassigned beside a free slot (a race in Dagster's claim); assigned it the slot"


def _stranded(storage, pools) -> list[str]:
    """Of ``pools``, those where an entry waits unassigned (one query) and a slot has no entry assigned to it."""
    if not getattr(storage, "supports_global_concurrency_limits", False) or not hasattr(storage, "has_unassigned_slots"):
        return []
    waiting = _waiting_pools(storage)
    return [p for p in pools if p in waiting and storage.has_unassigned_slots(p)]


STRANDED_SETTLE = 1.0
"""Seconds between the two looks that find a step stranded. A free assigns the next entry in a statement of its own
after removing its own entry; between the two the pool looks stranded too, and an entry assigned then would be a
second one for one slot (Dagster's free assigns unconditionally), which Dagster's claim does not stop from taking
the slot row the first took (it reads a free row, then updates it by id, each statement committed alone).
Dagster's own claims make that second entry too under contention (``benchmarks/pool_contention.py``)."""


def _waiting_pools(storage) -> set[str]:
    """The pools where an entry of Dagster's queue waits unassigned, in one query of its queue table (asking each of
    the 18 pools through the storage's methods took 0.12 s of a one-subject erasure under cProfile on SQLite, twice)."""
    from dagster._core.storage.event_log.schema import PendingStepsTable  # dagster 1.13's queue of pool claims

    pending = PendingStepsTable.c
    with storage.index_connection() as conn:
        rows = conn.execute(sa.select(pending.concurrency_key).where(pending.assigned_timestamp.is_(None)).distinct()).fetchall()
    return {r[0] for r in rows}


def _assign_head(storage, pool: str) -> bool:
    """Assign the pool's first waiting entry (as Dagster orders its queue) if no entry holds a slot of it that is free,
    in one statement: two processes healing one pool at once assign one entry, not two."""
    from dagster._core.storage.event_log.schema import ConcurrencySlotsTable, PendingStepsTable

    pending, slots = PendingStepsTable.c, ConcurrencySlotsTable.c
    head = (sa.select(pending.id).where(pending.concurrency_key == pool, pending.assigned_timestamp.is_(None))
            .order_by(pending.priority.desc(), pending.create_timestamp.asc()).limit(1).scalar_subquery())
    assigned = sa.select(sa.func.count()).select_from(PendingStepsTable).where(
        pending.concurrency_key == pool, pending.assigned_timestamp.is_not(None)).scalar_subquery()
    total = sa.select(sa.func.count()).select_from(ConcurrencySlotsTable).where(
        slots.concurrency_key == pool, slots.deleted.is_(False)).scalar_subquery()
    with storage.index_connection() as conn:
        done = conn.execute(PendingStepsTable.update().where(pending.id == head, assigned < total)
                            .values(assigned_timestamp=sa.func.now()))
    return bool(done.rowcount)


@contextlib.contextmanager
def shard_lease(instance: dg.DagsterInstance, book: Ledger, run_id: str, step_key: str, pool: str,
                log: Callable[[str], None] = lambda _m: None) -> Iterator[None]:
    """Hold the shard's lease in the ledger (``ledger.leases``) while the block writes it, inside its pool: Dagster's
    pool alone admits two holders now and then under contention (benchmarks/pool_contention.py). A holder whose
    run Dagster has finished, or whose process on this host is gone, is replaced."""

    def live(row: dict) -> bool:
        return _alive(instance.get_run_by_id(row["run_id"]), row["host"], row["pid"])

    with book.leases.hold(pool, f"{run_id}/{step_key}", run_id, live, host=HOST, pid=os.getpid(), log=log):
        yield


@contextlib.contextmanager
def shard_writer(instance: dg.DagsterInstance, book: Ledger, run_id: str, step_key: str, partition: str,
                 log: Callable[[str], None] = lambda _m: None) -> Iterator[None]:
    """An asset step's turn at one shard partition: the shard's pool slot (``pool_slot``; a job's shard step has its
    op's), then its lease (``shard_lease``)."""
    pool = names.shard_pool(partition)
    with pool_slot(instance, run_id, step_key, pool, log), shard_lease(instance, book, run_id, step_key, pool, log):
        yield


def before_work(instance: dg.DagsterInstance, book: Ledger, partitions, log: Callable[[str], None] = lambda _m: None) -> None:
    """What every claim step and the CLI's ``process`` and ``cycle`` do first: sweep runs whose process died, set the
    pools' limits, assign slots to steps stranded in a pool's queue."""
    sweep_interrupted(instance, book, log)
    ensure_pools(instance, partitions)
    assign_stranded(instance, names.pools(partitions), log)


# ---------------------------------------------------------------- who is alive
def run_pid() -> int:
    """The process a run lives as long as: this one with the in-process executor; under the multiprocess
    executor a step runs in a child (forkserver or spawn) that ends with the step, so the run's process is
    the one that asked for the child (``multiprocessing.parent_process``), the run's orchestrator."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_UNREAD = object()


def _alive(run, host: str, pid: int) -> bool:
    """Whether a holder (a run's process, or a step's) is alive: its run not finished in Dagster and, on this host,
    its process there; on another host, its run known to Dagster (its run monitoring fails runs whose worker died)."""
    if run is not None and run.is_finished:
        return False
    return pid_alive(pid) if host == HOST else run is not None


def run_is_live(instance: dg.DagsterInstance, book: Ledger) -> Callable[..., bool]:
    """``live(run_id, record)``: a run is alive while Dagster has not finished it and, when its job-run
    record says it runs on this host, while that process exists. Runs on other hosts are left to
    Dagster's run monitoring (``run_monitoring`` in the instance). The ledger passes the record it read
    in its own transaction; other callers may omit it."""

    def live(run_id: str, record=_UNREAD) -> bool:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return False  # before reading the record: a finished run needs no ledger read
        if record is _UNREAD:
            record = book.runs.job_run(run_id)
        if record is None:
            return run is not None
        if record["finished_at"] is not None:
            return False  # the ledger saw it end (e.g. Dagster's storage went away before it could record the failure)
        return _alive(run, record["host"], record["pid"])

    return live


def sweep_interrupted(instance: dg.DagsterInstance, book: Ledger, log: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Runs started on this host whose process is gone: mark them failed in Dagster (so the UI never shows
    them in progress), free their pool slots, and fail them in the ledger (their requests are retried)."""
    swept = []
    for record in book.runs.unfinished(HOST):
        if record["pid"] in (os.getpid(), run_pid()) or pid_alive(record["pid"]):
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

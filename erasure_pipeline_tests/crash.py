"""Kill a run at its n-th ledger write, as kill -9 of the machine would: for crash-recovery tests.

Every ledger write goes through ``Database.tx`` (one transaction each). ``run_and_crash(fn, n)`` forks a child
that leads a process group of its own; every process of the run counts its ledger writes in one file (the
drain's own, and on Dagster's multiprocess executor the forkserver's step processes too, which load
``crash_site/sitecustomize.py`` from ``PYTHONPATH``), and the process that starts the n-th write kills the
whole group with SIGKILL: the n-th write never commits, and nothing after it runs in any process of the run
(no finally blocks, no Dagster cleanup, no step of another shard carrying on). The parent waits and reports
how the child ended. ``count_writes(fn)`` runs ``fn`` here and counts the writes of every process it used.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing.forkserver
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from erasure_pipeline.ledger import forget_open
from erasure_pipeline.ledger.db import Database

CRASHED = 86
PLAN = "ERASURE_PIPELINE_TEST_CRASH"
"""The plan file's path: its text is ``count``, or the number of the write to crash at; writes are counted in
the file beside it (one line per write naming the writing process, appended under a lock: processes of one run
count together)."""
SITE = Path(__file__).with_name("crash_site")


def install() -> None:
    """Count this process's ledger writes into the plan's counter, and kill the run's process group at the
    planned one. Once per process (a step process forked from a forkserver that installed it has it)."""
    if getattr(Database.tx, "crash_hook", False):
        return
    plan = Path(os.environ[PLAN])
    original = Database.tx

    def tx(self):
        with open(plan.with_suffix(".count"), "a+") as counter:
            fcntl.flock(counter, fcntl.LOCK_EX)
            counter.write(f"{os.getpid()}\n")
            counter.flush()
            counter.seek(0)
            n = len(counter.read().splitlines())
        at = plan.read_text().strip()
        if at != "count" and n == int(at):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return original(self)

    tx.crash_hook = True
    Database.tx = tx


def forkserver_stopped() -> None:
    """Stop this process's forkserver, so the next multiprocess run starts one with this environment."""
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        server._stop()


@contextlib.contextmanager
def site_environ(variable: str, value: str) -> Iterator[None]:
    """``variable`` set and ``crash_site`` first on ``PYTHONPATH`` for the duration (the processes started meanwhile
    load its ``sitecustomize``); both restored after."""
    saved = {k: os.environ.get(k) for k in (variable, "PYTHONPATH")}
    os.environ[variable] = value
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), saved["PYTHONPATH"]) if p)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _planned(at: str, folder: Path) -> Iterator[Path]:
    """This process (and every process it starts) counting writes under a plan of ``at`` kept in ``folder``."""
    plan = folder / "plan"
    plan.write_text(at)
    original = Database.tx
    with site_environ(PLAN, str(plan)):
        try:
            install()
            yield plan
        finally:
            Database.tx = original


def count_writes(fn: Callable[[], object]) -> tuple[int, int]:
    """(ledger writes of ``fn``'s run, processes that wrote them: 1 in process; the drain's and step processes' on
    the multiprocess executor)."""
    forkserver_stopped()
    try:
        with tempfile.TemporaryDirectory(prefix="crash-") as folder, _planned("count", Path(folder)) as plan:
            fn()
            counter = plan.with_suffix(".count")
            writers = counter.read_text().splitlines() if counter.exists() else []
            return len(writers), len(set(writers))
    finally:
        forkserver_stopped()  # its step processes would count on into this plan


def run_and_crash(fn: Callable[[], object], n: int) -> int:
    """Run ``fn`` in a forked child that leads its own process group, killed with all its processes at the run's
    n-th ledger write; returns ``CRASHED`` if that write was reached, else the child's exit code (0: ``fn``
    finished first)."""
    folder = Path(tempfile.mkdtemp(prefix="crash-"))  # the parent's to remove: the child dies before it could
    pid = os.fork()
    if pid == 0:  # the child: a group of its own, fresh connections and forkserver, then run until the n-th write
        try:
            os.setpgid(0, 0)
            server = multiprocessing.forkserver._forkserver  # the parent's, not this process's to stop: forget it
            server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
            forget_open()
            with _planned(str(n), folder):
                fn()
        except BaseException:  # noqa: BLE001  (any other way the child ended is a test failure)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # nothing of the run outlives it
    shutil.rmtree(folder, ignore_errors=True)
    forget_open()  # the parent reconnects too: the child's writes happened behind its back
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return CRASHED
    return os.waitstatus_to_exitcode(status)

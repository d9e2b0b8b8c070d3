"""Kill a process at its n-th ledger write, as kill -9 would: for crash-recovery tests.

Every ledger write goes through ``Database.tx`` (one transaction each). ``run_and_crash(fn, n)`` forks;
the child counts writes and calls ``os._exit`` when the n-th one starts (so the n-th write never
commits, and nothing after it runs: no finally blocks, no Dagster cleanup); the parent waits and
reports how the child ended. ``count_writes(fn)`` runs ``fn`` here and counts its writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from erasure_pipeline.ledger import forget_open
from erasure_pipeline.ledger.db import Database

CRASHED = 86


def count_writes(fn: Callable[[], object]) -> int:
    calls = []
    original = Database.tx

    def counting(self):
        calls.append(1)
        return original(self)

    Database.tx = counting
    try:
        fn()
    finally:
        Database.tx = original
    return len(calls)


def run_and_crash(fn: Callable[[], object], n: int) -> int:
    """Run ``fn`` in a forked child that dies at its n-th ledger write; returns the child's exit code
    (``CRASHED`` if it reached that write, 0 if ``fn`` finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: fresh connections, then run until the n-th write
        try:
            forget_open()
            calls = []
            original = Database.tx

            def crashing(self):
                calls.append(1)
                if len(calls) == n:
                    os._exit(CRASHED)
                return original(self)

            Database.tx = crashing
            fn()
        except BaseException:  # noqa: BLE001  (any other way the child ended is a test failure)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    forget_open()  # the parent reconnects too: the child's writes happened behind its back
    return os.waitstatus_to_exitcode(status)

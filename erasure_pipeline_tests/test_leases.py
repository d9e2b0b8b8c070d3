"""Shard leases (``ledger.leases``): one writer of a shard at a time, in processes that take it in a tight loop, on
SQLite and Postgres; a holder judged gone is replaced, the same owner takes it again, release leaves another's."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import socket
import time

import pytest

from erasure_pipeline.ledger import Ledger

NAME = "erasure_pipeline/shard_00"
HOST = socket.gethostname()
HERE = {"host": HOST, "pid": os.getpid()}


def _holder(url: str, worker: int, holds: int, out) -> None:
    book = Ledger(url)
    spans = []
    for j in range(holds):
        with book.leases.hold(NAME, f"run-{worker}/step-{j}", f"run-{worker}", live=lambda _row: True, host=HOST, pid=os.getpid(),
                               poll=0.005):
            start = time.time()
            time.sleep(0.003)
            spans.append((start, time.time()))
    out.put(spans)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    Ledger(url).migrate()
    return url


def test_four_processes_taking_one_lease_in_a_loop_never_hold_it_at_once(url):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_holder, args=(url, w, 25, out)) for w in range(4)]
    for p in procs:
        p.start()
    spans = sorted(s for _ in procs for s in out.get(timeout=120))
    for p in procs:
        p.join(30)
    assert len(spans) == 100
    assert [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]] == []  # benchmarks/pool_contention: pools alone do not
    assert Ledger(url).leases.holder(NAME) is None


def test_a_holder_judged_gone_is_replaced_and_its_late_release_leaves_the_new_holders_lease(url):
    book = Ledger(url)
    alive = lambda _row: True
    assert book.leases._take(NAME, "run-a/shard_00", "run-a", alive, **HERE) is None
    assert book.leases._take(NAME, "run-a/shard_00", "run-a", alive, **HERE) is None  # its own owner again (a retried step): at once
    assert book.leases._take(NAME, "run-b/shard_00", "run-b", alive, **HERE) == "run-a"  # run-a alive: run-b waits
    assert book.leases._take(NAME, "run-b/shard_00", "run-b", lambda row: row["run_id"] != "run-a", **HERE) is None  # run-a gone
    assert book.leases.holder(NAME)["owner"] == "run-b/shard_00" and book.leases.holder(NAME)["pid"] == os.getpid()
    book.leases.release(NAME, "run-a/shard_00")  # run-a's release, late: not its lease any more
    assert book.leases.holder(NAME)["owner"] == "run-b/shard_00"
    book.leases.release(NAME, "run-b/shard_00")
    assert book.leases.holder(NAME) is None

"""Shard leases: one writer of a shard at a time, whatever the orchestrator's own limits admit.

A writer takes its shard's lease in one transaction (``BEGIN IMMEDIATE`` on SQLite; the row locked on Postgres):
free, or held by a holder the caller judges gone (``live``), it becomes the caller's; held by a live holder, the
caller waits and tries again. The lease names the holder's run, host and process, so a holder killed mid-write
is replaced by the next writer, as the sweep replaces a dead run. Released however the block ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.db import Database, utcnow

L = t.shard_leases.c


class Leases:
    def __init__(self, db: Database):
        self.db = db

    @contextlib.contextmanager
    def hold(self, name: str, owner: str, run_id: str, live: Callable[[dict], bool], *, host: str, pid: int,
             poll: float = 0.05, log: Callable[[str], None] = lambda _m: None) -> Iterator[None]:
        """Hold lease ``name`` for ``owner`` (of run ``run_id``, process ``pid`` on ``host``: the caller's, as
        ``runs`` records a run's) while the block runs, waiting while a holder ``live(row)`` says is alive has it."""
        said = False
        while (holder := self._take(name, owner, run_id, live, host=host, pid=pid)) is not None:
            if not said:
                log(f"waiting for {name}: " + (f"run {holder[:8]} writes that shard" if holder else "another writer took it first"))
                said = True
            time.sleep(poll)
        try:
            yield
        finally:
            self.release(name, owner)

    def release(self, name: str, owner: str) -> None:
        """Give the lease back if ``owner`` still holds it (a holder judged gone and replaced removes nothing)."""
        with self.db.tx() as conn:
            conn.execute(t.shard_leases.delete().where(L.name == name, L.owner == owner))

    def _take(self, name: str, owner: str, run_id: str, live: Callable[[dict], bool], *, host: str, pid: int) -> str | None:
        """None: the lease is ours now; else the live holder's run id ("": a writer whose insert came first)."""
        mine = {"owner": owner, "run_id": run_id, "host": host, "pid": pid, "taken_at": utcnow()}
        with self.db.tx() as conn:
            q = sa.select(t.shard_leases).where(L.name == name)
            row = conn.execute(q.with_for_update() if self.db.dialect == "postgresql" else q).first()
            if row is None:  # SQLite: BEGIN IMMEDIATE serialises takers; Postgres: the first insert wins, the other waits
                insert = (pg_insert(t.shard_leases).on_conflict_do_nothing() if self.db.dialect == "postgresql"
                          else sa.insert(t.shard_leases))
                return None if conn.execute(insert.values(name=name, **mine)).rowcount else ""
            held = dict(row._mapping)
            if held["owner"] != owner and live(held):
                return held["run_id"]
            conn.execute(t.shard_leases.update().where(L.name == name).values(**mine))
            return None

    def holder(self, name: str) -> dict | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.shard_leases).where(L.name == name)).first()
        return dict(row._mapping) if row else None

"""Claims made by runs, the batches they hold, and which process runs which run.

A tick only reads; a run's first step claims, in one transaction: its batch, its requests or landing
files, the job-run record (host, pid) and the audit rows. Whether another run is still alive is the
Dagster layer's judgement (``is_live``), given the job-run record this transaction read.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from erasure_pipeline.core.signing import canonical_json
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import Database, as_utc, chunks, utcnow
from erasure_pipeline.ledger.requests import CLAIMABLE, Requests, request_row

R = t.erasure_requests.c
IsLive = Callable[[str, dict | None], bool]


@dataclass(frozen=True)
class Claim:
    """What a run's claim got: ``claimed`` (these requests or this batch are now the run's), ``busy``
    (another live run holds the batch: ``holder``) or ``done`` (already finished)."""

    outcome: Literal["claimed", "busy", "done"]
    holder: str | None = None
    request_ids: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()
    """Requests taken over from a run that ended without finishing them."""


def _held_elsewhere(batch, finished: str, run_id: str, live: Callable[[str], bool]) -> Claim | None:
    """A batch row that finished (``done``), or that another live run holds (``busy``); None: claimable."""
    if batch is None:
        return None
    if batch.status == finished:
        return Claim("done", batch.run_id)
    if batch.status == "running" and batch.run_id not in (None, run_id) and live(batch.run_id):
        return Claim("busy", batch.run_id)
    return None


def _liveness(conn: Connection, is_live: IsLive) -> Callable[[str], bool]:
    """``is_live`` given each run's job-run record, read on this connection (a second connection would
    wait for the write lock this transaction may hold), each run asked once."""
    cache: dict[str, bool] = {}

    def live(run_id: str) -> bool:
        if run_id not in cache:
            row = conn.execute(sa.select(t.job_runs).where(t.job_runs.c.run_id == run_id)).first()
            cache[run_id] = is_live(run_id, dict(row._mapping) if row else None)
        return cache[run_id]

    return live


def _record_job_run(conn: Connection, run_id: str, kind: str, batch_id: str, host: str, pid: int) -> None:
    values = {"kind": kind, "batch_id": batch_id, "host": host, "pid": pid}
    if conn.execute(sa.select(t.job_runs.c.run_id).where(t.job_runs.c.run_id == run_id)).first():
        conn.execute(t.job_runs.update().where(t.job_runs.c.run_id == run_id).values(**values, finished_at=None, outcome=None))
    else:
        conn.execute(t.job_runs.insert().values(run_id=run_id, started_at=utcnow(), **values))


def _winners(rows: dict, wanted: list[str], run_id: str, live: Callable[[str], bool]) -> tuple[list, list, list]:
    """(requests this run wins, those newly taken, (request, old run) of those resumed from a dead run)."""
    won, fresh, resumed = [], [], []
    for rid in wanted:
        r = rows.get(rid)
        if r is None or r.status not in CLAIMABLE:
            continue
        if r.run_id == run_id:
            won.append(rid)
        elif r.status == "pending" or r.run_id is None or not live(r.run_id):
            won.append(rid)
            fresh.append(rid)
            if r.status != "pending" and r.run_id:
                resumed.append((rid, r.run_id))
    return won, fresh, resumed


class Runs:
    def __init__(self, db: Database, audit: AuditLog, requests: Requests):
        self.db, self.audit, self.requests = db, audit, requests

    # ------------------------------------------------------------------ claims
    def claim_erasure(self, batch_id: str, request_ids: Iterable[str], run_id: str, *, is_live: IsLive, host: str, pid: int) -> Claim:
        """What an erasure run does first: claim its batch and requests for ``run_id``, in one transaction.

        A request is won when it is pending, or held by this run already (a retried step), or held by
        a run that is no longer alive, in which case it is resumed with an audit row saying from which
        run. A batch another live run holds is ``busy``; a certified batch is ``done``."""
        wanted = list(dict.fromkeys(request_ids))
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            live = _liveness(conn, is_live)
            batch = conn.execute(sa.select(t.batches).where(t.batches.c.batch_id == batch_id)).first()
            if (elsewhere := _held_elsewhere(batch, "certified", run_id, live)) is not None:
                return elsewhere
            rows = {}
            for chunk in chunks(wanted):
                rows.update({r.request_id: r for r in conn.execute(
                    sa.select(R.request_id, R.status, R.run_id).where(R.request_id.in_(chunk)))})
            won, fresh, resumed = _winners(rows, wanted, run_id, live)
            now = utcnow()
            for chunk in chunks(fresh):
                conn.execute(t.erasure_requests.update().where(R.request_id.in_(chunk)).values(
                    status="in_progress", batch_id=batch_id, run_id=run_id, error=None, blocked_by=None, updated_at=now,
                    attempts=R.attempts + 1))
            plan = canonical_json({"requests": won})
            if batch is None:
                conn.execute(t.batches.insert().values(batch_id=batch_id, plan=plan, status="running", run_id=run_id, created_at=now))
            else:
                conn.execute(t.batches.update().where(t.batches.c.batch_id == batch_id).values(
                    plan=plan, status="running", run_id=run_id, finished_at=None))
            _record_job_run(conn, run_id, "erasure", batch_id, host, pid)
            self.audit.append(conn, [
                ("batch_claimed", None, {"batch_id": batch_id, "run_id": run_id, "requests": len(won)}),
                *[("resumed", rid, {"from_run": old, "run_id": run_id}) for rid, old in resumed],
                *[("in_progress", rid, {"run_id": run_id, "batch_id": batch_id}) for rid in fresh],
            ])
        return Claim("claimed", run_id, tuple(won), tuple(rid for rid, _ in resumed))

    def claim_landing(self, batch_id: str, kind: str, files: Iterable[tuple[str, str, str]], as_of: dt.datetime, run_id: str, *,
                      is_live: IsLive, host: str, pid: int) -> Claim:
        """What an ingest run (a cycle, a full build, a rebuild) does first: take its landing files.

        ``files`` are (name, table, content hash[, stamp]). The batch is ``done`` if it finished before and
        ``busy`` while another live run holds it; otherwise this run holds it and its files, so the
        next cycle starts after them once the batch is done (``landing_files_taken``)."""
        files = list(files)
        now = utcnow()
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            live = _liveness(conn, is_live)
            row = conn.execute(sa.select(t.landing_batches).where(t.landing_batches.c.batch_id == batch_id)).first()
            if (elsewhere := _held_elsewhere(row, "done", run_id, live)) is not None:
                return elsewhere
            if row is None:
                conn.execute(t.landing_batches.insert().values(
                    batch_id=batch_id, kind=kind, shards="[]", as_of=as_of, created_at=now, status="running", run_id=run_id))
            else:
                conn.execute(t.landing_batches.update().where(t.landing_batches.c.batch_id == batch_id).values(
                    status="running", run_id=run_id, as_of=as_of))
            for chunk in chunks([f[0] for f in files]):
                conn.execute(t.landing_files.delete().where(t.landing_files.c.name.in_(chunk)))
            if files:
                conn.execute(t.landing_files.insert(), [
                    {"name": f[0], "table_name": f[1], "content_hash": f[2], "batch_id": batch_id, "seen_at": now,
                     "stamp": f[3] if len(f) > 3 else None} for f in files])
            _record_job_run(conn, run_id, kind, batch_id, host, pid)
            self.audit.append(conn, [("landing_batch_claimed", None, {"batch_id": batch_id, "kind": kind, "files": len(files),
                                                                      "run_id": run_id})])
        return Claim("claimed", run_id)

    # ------------------------------------------------------------------ endings
    def fail_requests(self, request_ids: Iterable[str], error: str, run_id: str | None = None) -> list[str]:
        """Requests whose erasure could not be proven: failed, with why (retried by a later tick)."""
        with self.db.tx() as conn:
            failed = self.requests.move_many(conn, request_ids, ["scheduled", "in_progress"], status="failed", error=error[:2000])
            self.audit.append(conn, [("failed", rid, {"run_id": run_id, "error": error[:500]}) for rid in failed])
        return failed

    def fail_run(self, run_id: str, error: str, *, blocked: bool = False) -> list[str]:
        """A run ended without finishing: its requests become ``failed`` (retried by the next tick while
        attempts remain), its batches ``failed``, its job-run record closed. Safe to call twice.

        ``blocked``: the cause is outside the requests (a malformed landing file, an outage): the attempt does
        not count, and the requests are retried, with backoff, until the cause is gone."""
        now = utcnow()
        values = {"status": "failed", "error": error[:2000], "updated_at": now, "blocked_by": error[:500] if blocked else None}
        if blocked:
            values["attempts"] = sa.func.max(R.attempts - 1, 0) if self.db.dialect == "sqlite" else sa.func.greatest(R.attempts - 1, 0)
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            failed = list(conn.execute(
                t.erasure_requests.update().where(R.run_id == run_id, R.status.in_(["scheduled", "in_progress"]))
                .values(**values).returning(R.request_id)).scalars())
            conn.execute(t.batches.update().where(t.batches.c.run_id == run_id, t.batches.c.status == "running")
                         .values(status="failed", finished_at=now))
            conn.execute(t.landing_batches.update().where(t.landing_batches.c.run_id == run_id, t.landing_batches.c.status == "running")
                         .values(status="failed"))
            closed = conn.execute(t.job_runs.update().where(t.job_runs.c.run_id == run_id, t.job_runs.c.finished_at.is_(None))
                                  .values(finished_at=now, outcome="failed")).rowcount
            entries = [("failed", rid, {"run_id": run_id, "error": error[:500]}) for rid in sorted(failed)]
            if closed:
                entries.insert(0, ("run_failed", None, {"run_id": run_id, "error": error[:500]}))
            self.audit.append(conn, entries)
        return failed

    def finish_batch(self, batch_id: str, status: str, run_id: str | None) -> None:
        with self.db.tx() as conn:
            conn.execute(t.batches.update().where(t.batches.c.batch_id == batch_id).values(status=status, run_id=run_id, finished_at=utcnow()))
            self.audit.append(conn, [("batch_" + status, None, {"batch_id": batch_id, "run_id": run_id})])

    def finish_landing(self, batch_id: str, shards: Iterable[int]) -> None:
        """Mark an ingest's batch done; on SQLite its writes are then copied out of the write-ahead log (without
        waiting), so the next erasure's checkpoint, which must empty the log, does not copy an ingest's
        (0.26 s of the first erasure after a 200 000-subject build)."""
        with self.db.tx() as conn:
            conn.execute(t.landing_batches.update().where(t.landing_batches.c.batch_id == batch_id).values(
                status="done", shards=canonical_json(sorted(set(shards)))))
            self.audit.append(conn, [("landing_batch", None, {"batch_id": batch_id, "shards": sorted(set(shards))})])
        self.db.checkpoint()

    def finish_job_run(self, run_id: str, outcome: str) -> None:
        with self.db.tx() as conn:
            conn.execute(t.job_runs.update().where(t.job_runs.c.run_id == run_id).values(finished_at=utcnow(), outcome=outcome))

    def record_landing_hashes(self, hashes: dict[str, str], stamps: dict[str, str] | None = None) -> None:
        """The content of landing files as the pipeline last left them (after a scrub rewrote them): what ``verify``
        compares each file with, so a file restored from a backup, or edited, is read again in full; and their
        stamps, so a tick knows them unchanged without reading them."""
        if not hashes:
            return
        stamps = stamps or {}
        with self.db.tx() as conn:
            conn.execute(t.landing_files.update().where(t.landing_files.c.name == sa.bindparam("n"))
                         .values(content_hash=sa.bindparam("h"), stamp=sa.bindparam("s")),
                         [{"n": n, "h": h, "s": stamps.get(n)} for n, h in hashes.items()])

    def landing_records(self) -> dict[str, tuple[str, str | None]]:
        """Landing file -> (content hash, stamp) as the pipeline last took or left it."""
        with self.db.connect() as conn:
            q = sa.select(t.landing_files.c.name, t.landing_files.c.content_hash, t.landing_files.c.stamp)
            return {r.name: (r.content_hash, r.stamp) for r in conn.execute(q)}

    def landing_ingested(self) -> dict[str, dict]:
        """Landing files a finished ingest took: name -> content hash, stamp and when they were taken."""
        q = sa.select(t.landing_files.c.name, t.landing_files.c.content_hash, t.landing_files.c.stamp, t.landing_files.c.seen_at).join(
            t.landing_batches, t.landing_batches.c.batch_id == t.landing_files.c.batch_id).where(t.landing_batches.c.status == "done")
        with self.db.connect() as conn:
            return {r.name: {"hash": r.content_hash, "stamp": r.stamp, "seen_at": as_utc(r.seen_at)} for r in conn.execute(q)}

    # ------------------------------------------------------------------ reads
    def landing_hashes(self) -> dict[str, str]:
        """Landing file -> the content hash the pipeline recorded for it (taken by an ingest, or rewritten by a scrub)."""
        with self.db.connect() as conn:
            return {r.name: r.content_hash for r in conn.execute(sa.select(t.landing_files.c.name, t.landing_files.c.content_hash))}

    def landing_files_taken(self, is_live: IsLive) -> set[str]:
        """Landing files an ingest batch has taken: one that finished, or one a live run is working on."""
        q = sa.select(t.landing_files.c.name, t.landing_batches.c.status, t.landing_batches.c.run_id).join(
            t.landing_batches, t.landing_batches.c.batch_id == t.landing_files.c.batch_id)
        with self.db.connect() as conn:
            rows = list(conn.execute(q))
            live = _liveness(conn, is_live)
            return {name for name, status, run_id in rows if status == "done" or (status == "running" and run_id and live(run_id))}

    def landing_batches(self) -> list[dict]:
        with self.db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(t.landing_batches).order_by(t.landing_batches.c.created_at))]
        for r in rows:
            r["shards"] = json.loads(r["shards"])
        return rows

    def job_run(self, run_id: str) -> dict | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.job_runs).where(t.job_runs.c.run_id == run_id)).first()
        return dict(row._mapping) if row else None

    def unfinished(self, host: str | None = None) -> list[dict]:
        """Job runs not finished (on ``host``): what the sweep checks for a process that is gone."""
        q = sa.select(t.job_runs).where(t.job_runs.c.finished_at.is_(None)).order_by(t.job_runs.c.started_at)
        if host is not None:
            q = q.where(t.job_runs.c.host == host)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def batch(self, batch_id: str) -> dict | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.batches).where(t.batches.c.batch_id == batch_id)).first()
        if row is None:
            return None
        d = dict(row._mapping)
        d["plan"] = json.loads(d["plan"])
        return d

    def batches(self, status: str | None = None) -> list[dict]:
        q = sa.select(t.batches.c.batch_id).order_by(t.batches.c.created_at, t.batches.c.batch_id)
        if status:
            q = q.where(t.batches.c.status == status)
        with self.db.connect() as conn:
            ids = [r[0] for r in conn.execute(q)]
        return [self.batch(b) for b in ids]

    def batch_requests(self, batch_id: str) -> list[dict]:
        with self.db.connect() as conn:
            return [request_row(r) for r in conn.execute(sa.select(t.erasure_requests).where(R.batch_id == batch_id).order_by(R.seq))]

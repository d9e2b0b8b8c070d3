"""Erasure requests and their lifecycle, and the tombstones that keep erased subjects out.

Lifecycle: received → pending → in_progress → completed | failed | on_hold | needs_review (no data under
the id as filed, but data under a look-alike id: a person decides, ``review``); pending → revoked (withdrawn
before anything acted on it). Every identity column holds
a keyed hash (``subject_key``), never a raw subject id. Intake writes the tombstone before the
request, in the same transaction, so an ingest running at the same time already drops the subject.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from erasure_pipeline.core.signing import canonical_json
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import CHUNK, Database, LedgerError, as_utc, chunks, utcnow
from erasure_pipeline.ledger.notices import Notices

LIVE = ("received", "pending", "scheduled", "in_progress", "on_hold", "failed", "needs_review")
CLAIMABLE = ("pending", "scheduled", "in_progress", "failed")
"""States a run may claim a request from (``scheduled`` only exists in ledgers older than claims by runs)."""
TERMINAL = ("completed", "revoked")
STATUSES = (*LIVE, *TERMINAL)
R = t.erasure_requests.c


def new_request_id() -> str:
    return "er-" + secrets.token_hex(10)


def request_row(row) -> dict | None:
    """A request row as a dict, its times in UTC."""
    if row is None:
        return None
    d = dict(row._mapping)
    for k in ("received_at", "due_at", "updated_at", "completed_at"):
        d[k] = as_utc(d[k])
    d["footprint"] = json.loads(d["footprint"]) if d.get("footprint") else {}
    return d


def _held_keys():
    return sa.select(R.subject_key).where(R.status == "on_hold")


class Requests:
    def __init__(self, db: Database, audit: AuditLog):
        self.db, self.audit = db, audit

    # ------------------------------------------------------------------ intake
    def file(self, subject_key: str, shard: int, *, due_days: int, reason: str | None = None, kind: str = "erasure",
             rule: str = "", skeleton_key: str | None = None) -> tuple[str, bool]:
        """Tombstone first, then the request. Returns (request id, created); a live one is reused."""
        return self.file_many([(subject_key, shard, skeleton_key)], due_days=due_days, reason=reason, kind=kind, rule=rule)[0]

    def file_many(self, subjects: Iterable[tuple], *, due_days: int, reason: str | None = None, kind: str = "erasure",
                  rule: str = "", sealed: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> list[tuple[str, bool]]:
        """Bulk intake: (request id, created) per (subject key, shard[, skeleton key]), in input order.

        One transaction per chunk writes the tombstones before the requests (an ingest running at
        the same time already drops the subjects); a subject with a live request gets that request.
        ``sealed``: subject key -> (recipient, sealed subject id) kept with a new request, for its notices.
        """
        sealed = sealed or {}
        items = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in subjects]
        out: dict[str, tuple[str, bool]] = {}
        for chunk in chunks(items):
            chunk = list(dict.fromkeys(chunk))
            try:
                out.update(self._file_chunk(chunk, due_days, reason, kind, rule, sealed))
            except sa.exc.IntegrityError:  # another process filed for one of these subjects first
                for item in chunk:
                    out.update(self._file_chunk([item], due_days, reason, kind, rule, sealed))
        return [out[key] for key, _shard, _skeleton in items]

    def _file_chunk(self, chunk: list[tuple[str, int, str | None]], due_days: int, reason: str | None, kind: str,
                    rule: str, sealed: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, tuple[str, bool]]:
        keys = [k for k, _, _ in chunk]
        now = utcnow()
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            live = {r.subject_key: r.request_id for r in conn.execute(
                sa.select(R.subject_key, R.request_id).where(R.subject_key.in_(keys), R.status.in_(LIVE)))}
            stoned = set(conn.execute(sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key.in_(keys))).scalars())
            skeletons = {k: sk for k, _shard, sk in chunk}
            new = [(k, shard, new_request_id()) for k, shard, _sk in chunk if k not in live]
            out = {k: (rid, False) for k, rid in live.items()}
            if not new:
                return out
            if kind == "erasure":
                stones = [{"subject_key": k, "shard": shard, "since": now, "request_id": rid, "rule": rule}
                          for k, shard, rid in new if k not in stoned]
                if stones:
                    conn.execute(t.tombstones.insert(), stones)
                    self.audit.append(conn, [("tombstone", r["request_id"], {"subject_key": r["subject_key"], "shard": r["shard"]})
                                             for r in stones])
            conn.execute(t.erasure_requests.insert(), [
                {"request_id": rid, "subject_key": k, "kind": kind, "status": "pending", "reason": reason, "received_at": now,
                 "due_at": now + dt.timedelta(days=due_days), "updated_at": now, "skeleton_key": skeletons.get(k)} for k, _shard, rid in new])
            self.audit.append(conn, [entry for k, _shard, rid in new for entry in (
                ("received", rid, {"subject_key": k, "kind": kind, "due_days": due_days}), ("pending", rid, {}))])
            Notices.seal(conn, [(rid, who, box) for k, _shard, rid in new for who, box in sealed.get(k, ())])
        return {**out, **{k: (rid, True) for k, _shard, rid in new}}

    # ------------------------------------------------------------------ reads
    def get(self, request_id: str) -> dict:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.erasure_requests).where(R.request_id == request_id)).first()
        if row is None:
            raise LedgerError(f"no erasure request {request_id!r}")
        return request_row(row)

    def live_for(self, subject_key: str) -> dict | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.erasure_requests).where(R.subject_key == subject_key, R.status.in_(LIVE))
                               .order_by(R.seq.desc())).first()
        return request_row(row)

    def list(self, *, status: Iterable[str] | None = None, after_seq: int = 0) -> list[dict]:
        q = sa.select(t.erasure_requests).where(R.seq > after_seq).order_by(R.seq)
        if status is not None:
            q = q.where(R.status.in_(list(status)))
        with self.db.connect() as conn:
            return [request_row(r) for r in conn.execute(q)]

    def by_ids(self, request_ids: Iterable[str]) -> list[dict]:
        ids = list(request_ids)
        out: list[dict] = []
        with self.db.connect() as conn:
            for chunk in chunks(ids):
                out += [request_row(r) for r in conn.execute(sa.select(t.erasure_requests).where(R.request_id.in_(chunk)))]
        order = {rid: i for i, rid in enumerate(ids)}
        return sorted(out, key=lambda r: order[r["request_id"]])

    def remember_footprints(self, footprints: Mapping[str, Mapping[str, Mapping[str, int]]]) -> None:
        """Keep what each request's subject was found in (asset -> partition -> rows; no identifier), so a later
        run of the same request, after the first rewrote some of it, still knows and certifies it."""
        if not footprints:
            return
        with self.db.tx() as conn:
            conn.execute(t.erasure_requests.update().where(R.request_id == sa.bindparam("rid")).values(footprint=sa.bindparam("fp")),
                         [{"rid": rid, "fp": canonical_json(fp)} for rid, fp in footprints.items()])

    def overdue(self, now: dt.datetime, *, within: dt.timedelta, stuck_after: dt.timedelta) -> list[dict]:
        """Live requests past or within ``within`` of their due date, and any not on hold that has not
        moved for ``stuck_after``; each with a ``why``. A held request's clock is the law's exception."""
        out = []
        for r in self.list(status=[s for s in LIVE if s != "on_hold"]):
            why = []
            if r["due_at"] < now:
                why.append(f"overdue since {r['due_at']:%Y-%m-%d %H:%M} UTC")
            elif r["due_at"] <= now + within:
                why.append(f"due {r['due_at']:%Y-%m-%d %H:%M} UTC")
            if r["updated_at"] <= now - stuck_after:
                why.append(f"{r['status']} since {r['updated_at']:%Y-%m-%d %H:%M} UTC (attempts {r['attempts']})")
            if r["status"] == "needs_review":
                why.insert(0, "needs review: no data under the id as filed, but data under a look-alike id "
                              "(erasure-pipeline review --same-subject | --different-subject)")
            if r["blocked_by"]:
                why.append(f"blocked: {r['blocked_by']}")
            if why:
                out.append({**r, "why": "; ".join(why)})
        return out

    # ------------------------------------------------------------------ an operator's transitions
    def _transition(self, request_id: str, allowed_from: Iterable[str], to: str, event: str, detail: Mapping[str, Any], **values) -> None:
        with self.db.tx() as conn:
            res = conn.execute(t.erasure_requests.update().where(R.request_id == request_id, R.status.in_(list(allowed_from)))
                               .values(status=to, updated_at=utcnow(), **values))
            if res.rowcount != 1:
                current = conn.execute(sa.select(R.status).where(R.request_id == request_id)).scalar()
                if current is None:
                    raise LedgerError(f"no erasure request {request_id!r}")
                raise LedgerError(f"request {request_id} is {current}; cannot move it to {to}")
            self.audit.append(conn, [(event, request_id, detail)])

    def to_review(self, request_ids: Iterable[str], run_id: str, look_alikes: dict[str, int]) -> list[str]:
        """Requests the run found no data for, while look-alike ids hold data: they wait for a person."""
        with self.db.tx() as conn:
            moved = self.move_many(conn, request_ids, ["in_progress"], status="needs_review", run_id=None, blocked_by=None,
                                   error="no data under the id as filed, but data under a look-alike id")
            self.audit.append(conn, [("needs_review", rid, {"run_id": run_id, "look_alike_subjects": look_alikes.get(rid, 0)})
                                     for rid in moved])
        return moved

    def review(self, request_id: str, decision: str, reason: str) -> None:
        """An operator's decision on a request in review: it is processed again, and completes under the id as filed."""
        if not reason.strip():
            raise LedgerError("a review needs a reason (who checked, and how)")
        self._transition(request_id, ["needs_review"], "pending", "reviewed", {"decision": decision, "reason": reason},
                         review=f"{decision}: {reason}", attempts=0, error=None)

    def retry(self, request_id: str) -> None:
        """An operator's retry: failed -> pending, with the automatic attempts counted afresh."""
        self._transition(request_id, ["failed"], "pending", "retry", {}, attempts=0, run_id=None)

    def hold(self, request_id: str, reason: str) -> None:
        if not reason.strip():
            raise LedgerError("a hold needs a reason (Art.17(3) exception or legal hold)")
        self._transition(request_id, ["received", "pending", "scheduled", "failed"], "on_hold", "on_hold", {"reason": reason},
                         hold_reason=reason)

    def revoke(self, request_id: str, reason: str | None) -> None:
        """Withdrawn by the person (or their agent) before any run or cycle acted on it: the request is
        ``revoked``, its tombstone lifted and its sealed ids destroyed. Refused once a run claimed it, or once
        an ingest ran after it was filed (that ingest may have dropped the subject's rows already)."""
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            req = conn.execute(sa.select(t.erasure_requests).where(R.request_id == request_id)).first()
            if req is None:
                raise LedgerError(f"no erasure request {request_id!r}")
            if req.status not in ("received", "pending"):
                raise LedgerError(f"request {request_id} is {req.status}: it can no longer be revoked")
            ingested = conn.execute(sa.select(sa.func.count()).select_from(t.landing_batches)
                                    .where(t.landing_batches.c.created_at >= req.received_at)).scalar()
            if ingested:
                raise LedgerError(f"request {request_id}: an ingest has run since it was filed and may have dropped the "
                                  "subject's rows; it can no longer be revoked")
            conn.execute(t.erasure_requests.update().where(R.request_id == request_id)
                         .values(status="revoked", updated_at=utcnow(), error=None))
            conn.execute(t.tombstones.delete().where(t.tombstones.c.request_id == request_id))
            Notices.drop_sealed(conn, request_id)
            self.audit.append(conn, [("revoked", request_id, {"reason": reason} if reason else {})])

    def release(self, request_id: str) -> None:
        self._transition(request_id, ["on_hold"], "pending", "released", {}, hold_reason=None)

    def extend(self, request_id: str, reason: str, *, days: int) -> dt.datetime:
        if not reason.strip():
            raise LedgerError("an extension needs a reason")
        req = self.get(request_id)
        if req["extended"]:
            raise LedgerError(f"request {request_id} was already extended once (Art.12(3) allows one extension)")
        if req["status"] in TERMINAL:
            raise LedgerError(f"request {request_id} is {req['status']}; nothing to extend")
        new_due = req["due_at"] + dt.timedelta(days=days)
        with self.db.tx() as conn:
            conn.execute(t.erasure_requests.update().where(R.request_id == request_id)
                         .values(due_at=new_due, extended=True, extension_reason=reason, updated_at=utcnow()))
            self.audit.append(conn, [("extended", request_id, {"reason": reason, "due_at": new_due.isoformat()})])
        return new_due

    def move_many(self, conn: Connection, request_ids: Iterable[str], allowed_from: list[str], **values) -> list[str]:
        """Update every request whose status is in ``allowed_from``, one ``UPDATE ... RETURNING`` per chunk,
        inside the caller's transaction; returns the ones updated, in input order.

        The chain lock is taken first, so two callers with overlapping id sets queue instead of locking
        rows in different orders and deadlocking (SQLite's BEGIN IMMEDIATE already serialises them)."""
        self.db.lock_chain(conn)
        wanted = list(dict.fromkeys(request_ids))
        moved: set[str] = set()
        for chunk in chunks(wanted, CHUNK):
            res = conn.execute(t.erasure_requests.update().where(R.request_id.in_(chunk), R.status.in_(allowed_from))
                               .values(updated_at=utcnow(), **values).returning(R.request_id))
            moved.update(res.scalars())
        return [rid for rid in wanted if rid in moved]


class TombstoneTable:
    """Tombstones: keyed hashes kept out of every store, each with the identity rule it was made under."""

    def __init__(self, db: Database, audit: AuditLog):
        self.db, self.audit = db, audit

    def add(self, subject_key: str, shard: int, request_id: str) -> bool:
        try:
            with self.db.tx() as conn:
                if conn.execute(sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key == subject_key)).first():
                    return False
                conn.execute(t.tombstones.insert().values(subject_key=subject_key, shard=shard, since=utcnow(), request_id=request_id))
                self.audit.append(conn, [("tombstone", request_id, {"subject_key": subject_key, "shard": shard})])
                return True
        except sa.exc.IntegrityError:  # another process tombstoned the subject first
            return False

    def active(self, shard: int | None = None) -> set[str]:
        """Keys to keep out of every store. A subject whose request is on hold (Art.17(3) exception, legal
        hold) is not filtered while the hold lasts: its data must be kept."""
        q = sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key.not_in(_held_keys()))
        if shard is not None:
            q = q.where(t.tombstones.c.shard == shard)
        with self.db.connect() as conn:
            return {r[0] for r in conn.execute(q)}

    def by_rule(self) -> dict[str, set[str]]:
        """Tombstoned keys (not of requests on hold) by the identity rule each was made under."""
        q = sa.select(t.tombstones.c.rule, t.tombstones.c.subject_key).where(t.tombstones.c.subject_key.not_in(_held_keys()))
        out: dict[str, set[str]] = {}
        with self.db.connect() as conn:
            for rule, key in conn.execute(q):
                out.setdefault(rule or "", set()).add(key)
        return out

    def rule_of(self, subject_key: str) -> str | None:
        with self.db.connect() as conn:
            return conn.execute(sa.select(t.tombstones.c.rule).where(t.tombstones.c.subject_key == subject_key)).scalar()

    def since(self, subject_key: str) -> dt.datetime | None:
        """When the subject was tombstoned (None if never)."""
        with self.db.connect() as conn:
            return as_utc(conn.execute(sa.select(t.tombstones.c.since).where(t.tombstones.c.subject_key == subject_key)).scalar())

"""The durable outbox: notices to recipients and DRP status callbacks, leased, retried, settled; sealed subject ids.

A notice's body is fixed when it is queued (the bytes every attempt sends, under one idempotency key), so
no recipient ever gets two different notices for one erasure. An attempt first takes a lease (and counts
itself), then POSTs: a process killed mid-POST leaves a lease that expires, and the next attempt sends the
same bytes under the same key. Settling a notice (confirmed, or dead-lettered) destroys what it carried of
the subject (the sealed id) and appends the outcome to the audit chain, in one transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import Database, utcnow

N = t.notices.c
SEALED_PLACEHOLDER = "[destroyed]"


class Notices:
    def __init__(self, db: Database, audit: AuditLog):
        self.db, self.audit = db, audit

    # ------------------------------------------------------------------ sealed ids
    @staticmethod
    def seal(conn, rows: Iterable[tuple[str, str, str]]) -> None:
        """(request id, recipient, sealed box) rows, inside the transaction that files the requests."""
        now = utcnow()
        values = [{"request_id": rid, "recipient": who, "sealed": box, "created_at": now} for rid, who, box in rows]
        if values:
            conn.execute(t.sealed_ids.insert(), values)

    def sealed(self, request_id: str) -> dict[str, str]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(t.sealed_ids).where(t.sealed_ids.c.request_id == request_id))
            return {r.recipient: r.sealed for r in rows}

    @staticmethod
    def drop_sealed(conn, request_id: str, recipients: Iterable[str] | None = None) -> int:
        q = t.sealed_ids.delete().where(t.sealed_ids.c.request_id == request_id)
        if recipients is not None:
            q = q.where(t.sealed_ids.c.recipient.in_(list(recipients)))
        return conn.execute(q).rowcount

    # ------------------------------------------------------------------ queueing
    @staticmethod
    def queue(conn, notices: Iterable[Mapping[str, Any]], now: dt.datetime) -> None:
        """Notices (notice_id, request_id, recipient, kind, endpoint, body, body_sha256, signature) due at once."""
        values = [{**n, "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now} for n in notices]
        if values:
            conn.execute(t.notices.insert(), values)

    # ------------------------------------------------------------------ attempts
    def due_count(self, now: dt.datetime | None = None) -> int:
        now = now or utcnow()
        with self.db.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.notices).where(*self._due(now))).scalar())

    @staticmethod
    def _due(now: dt.datetime):
        return (N.status == "pending", N.next_attempt_at <= now, sa.or_(N.lease_until.is_(None), N.lease_until < now))

    def lease_due(self, now: dt.datetime, lease: dt.timedelta, limit: int = 1000) -> list[dict]:
        """Take the due notices (oldest first) for one attempt each: lease them and count the attempt before
        any byte is sent. A notice another process leased, and whose lease has not run out, is not taken."""
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            ids = list(conn.execute(sa.select(N.notice_id).where(*self._due(now)).order_by(N.next_attempt_at, N.notice_id)
                                    .limit(limit)).scalars())
            taken = []
            for nid in ids:
                res = conn.execute(t.notices.update().where(N.notice_id == nid, *self._due(now))
                                   .values(lease_until=now + lease, attempts=N.attempts + 1,
                                           first_attempt_at=sa.func.coalesce(N.first_attempt_at, now)))
                if res.rowcount == 1:
                    taken.append(nid)
            if not taken:
                return []
            return [dict(r._mapping) for r in conn.execute(sa.select(t.notices).where(N.notice_id.in_(taken))
                                                           .order_by(N.next_attempt_at, N.notice_id))]

    def failed(self, notice_id: str, error: str, next_attempt_at: dt.datetime) -> None:
        with self.db.tx() as conn:
            conn.execute(t.notices.update().where(N.notice_id == notice_id, N.status == "pending")
                         .values(last_error=error[:500], next_attempt_at=next_attempt_at, lease_until=None))

    def settle(self, notice: Mapping[str, Any], status: str, *, at: dt.datetime, receipt: str | None = None,
               error: str | None = None) -> bool:
        """Confirmed or dead: the sealed id it carried is destroyed (in its body and in ``sealed_ids``) and the
        outcome appended to the audit chain, in one transaction. False if it was settled already."""
        body = json.loads(notice["body"])
        if isinstance(body.get("subject"), dict) and "sealed_id" in body["subject"]:
            body["subject"]["sealed_id"] = SEALED_PLACEHOLDER
        event = "recipient_confirmed" if status == "confirmed" else "recipient_dead_letter"
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            res = conn.execute(t.notices.update().where(N.notice_id == notice["notice_id"], N.status == "pending")
                               .values(status=status, settled_at=at, lease_until=None, receipt=receipt,
                                       last_error=error[:500] if error else N.last_error,
                                       body=json.dumps(body, sort_keys=True, separators=(",", ":"))))
            if res.rowcount != 1:
                return False
            if notice["kind"] == "erasure":
                self.drop_sealed(conn, notice["request_id"], [notice["recipient"]])
                self.audit.append(conn, [(event, notice["request_id"], {
                    "recipient": notice["recipient"], "notice_id": notice["notice_id"], "body_sha256": notice["body_sha256"],
                    "attempts": notice["attempts"], **({"receipt": receipt} if receipt else {}), **({"error": error[:200]} if error else {}),
                })])
        return True

    # ------------------------------------------------------------------ reads
    def for_request(self, request_id: str, kind: str = "erasure") -> list[dict]:
        with self.db.connect() as conn:
            q = sa.select(t.notices).where(N.request_id == request_id, N.kind == kind).order_by(N.recipient, N.created_at)
            return [dict(r._mapping) for r in conn.execute(q)]

    def list(self, *, status: Iterable[str] | None = None) -> list[dict]:
        q = sa.select(t.notices).order_by(N.created_at, N.notice_id)
        if status is not None:
            q = q.where(N.status.in_(list(status)))
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def counts(self) -> dict[str, int]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(N.status, sa.func.count()).where(N.kind == "erasure").group_by(N.status))
            return {status: int(n) for status, n in rows}

    # ------------------------------------------------------------------ DRP
    def drp_token(self, token_sha256: str, agent_id: str) -> None:
        with self.db.tx() as conn:
            conn.execute(t.drp_tokens.insert().values(token_sha256=token_sha256, agent_id=agent_id, created_at=utcnow()))

    def drp_agent_of(self, token_sha256: str) -> str | None:
        with self.db.connect() as conn:
            return conn.execute(sa.select(t.drp_tokens.c.agent_id).where(t.drp_tokens.c.token_sha256 == token_sha256)).scalar()

    def drp_request(self, body_sha256: str) -> dict | None:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.drp_requests).where(t.drp_requests.c.body_sha256 == body_sha256)).first()
            return None if row is None else dict(row._mapping)

    def drp_record(self, **values) -> bool:
        """A DRP request as received; False if the same signed body was recorded before (a replay)."""
        try:
            with self.db.tx() as conn:
                conn.execute(t.drp_requests.insert().values(received_at=utcnow(), **values))
        except sa.exc.IntegrityError:
            return False
        return True

    def drp_of(self, request_id: str) -> list[dict]:
        q = sa.select(t.drp_requests).where(t.drp_requests.c.request_id == request_id).order_by(t.drp_requests.c.received_at)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def drp_with_callbacks(self) -> list[dict]:
        with self.db.connect() as conn:
            q = sa.select(t.drp_requests).where(t.drp_requests.c.status_callback.is_not(None))
            return [dict(r._mapping) for r in conn.execute(q)]

    def drp_callback_queued(self, body_sha256: str, status: str, notice: Mapping[str, Any]) -> None:
        now = utcnow()
        with self.db.tx() as conn:
            conn.execute(t.drp_requests.update().where(t.drp_requests.c.body_sha256 == body_sha256).values(last_status_sent=status))
            self.queue(conn, [notice], now)

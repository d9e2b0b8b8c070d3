"""What an erasure did and the certificate that says so: per-node actions, certificates, the processor outbox.

A certificate arrives signed (``core.signing``, by the erasure layer); completing a request stores it,
appends the audit row and queues the processors' notice in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from erasure_pipeline.core.signing import canonical_json
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import Database, LedgerError, utcnow

R = t.erasure_requests.c


class Certificates:
    def __init__(self, db: Database, audit: AuditLog):
        self.db, self.audit = db, audit

    def complete(self, request_id: str, certificate: Mapping[str, Any]) -> dict:
        """Completed, with its certificate stored, audited and announced to processors, in one transaction.
        Returns the certificate as stored."""
        body = canonical_json(certificate)
        digest = hashlib.sha256(body.encode()).hexdigest()
        now = utcnow()
        with self.db.tx() as conn:
            res = conn.execute(t.erasure_requests.update()
                               .where(R.request_id == request_id, R.status.in_(["pending", "scheduled", "in_progress", "failed"]))
                               .values(status="completed", completed_at=now, updated_at=now, error=None))
            if res.rowcount != 1:
                raise LedgerError(f"request {request_id} cannot be completed from its current state")
            conn.execute(t.certificates.delete().where(t.certificates.c.request_id == request_id))
            conn.execute(t.certificates.insert().values(request_id=request_id, body=body, sha256=digest, issued_at=now))
            self.audit.append(conn, [("completed", request_id, {"certificate_sha256": digest})])
            conn.execute(t.outbox.insert().values(
                request_id=request_id, recipient="processors", created_at=now,
                payload=canonical_json({"type": "erasure_completed", "request_id": request_id,
                                        "subject_key": certificate.get("anonymised_data_subject")})))
        return dict(certificate)

    def get(self, request_id: str) -> tuple[dict, str] | None:
        """(the certificate, the sha256 of its canonical body) of a request, or None."""
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.certificates).where(t.certificates.c.request_id == request_id)).first()
        return None if row is None else (json.loads(row.body), row.sha256)

    def all(self) -> list[tuple[str, dict]]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(t.certificates.c.request_id, t.certificates.c.body).order_by(t.certificates.c.issued_at))
            return [(r.request_id, json.loads(r.body)) for r in rows]

    def record_actions(self, request_id: str, actions: list[Mapping[str, Any]]) -> None:
        now = utcnow()
        with self.db.tx() as conn:
            conn.execute(t.erasure_actions.delete().where(t.erasure_actions.c.request_id == request_id))
            for a in actions:
                conn.execute(t.erasure_actions.insert().values(request_id=request_id, at=now, **a))
            self.audit.append(conn, [("actions", request_id, {"count": len(actions)})])

    def actions(self, request_id: str) -> list[dict]:
        with self.db.connect() as conn:
            q = sa.select(t.erasure_actions).where(t.erasure_actions.c.request_id == request_id).order_by(t.erasure_actions.c.id)
            return [dict(r._mapping) for r in conn.execute(q)]

    def outbox(self, *, unsent_only: bool = True) -> list[dict]:
        q = sa.select(t.outbox).order_by(t.outbox.c.id)
        if unsent_only:
            q = q.where(t.outbox.c.sent_at.is_(None))
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

"""What an erasure did and the certificate that says so: per-node actions, certificates and their amendments.

A certificate arrives signed (``core.signing``, by the erasure layer); completing a request stores it,
appends the audit row, queues the recipients' notices, destroys the sealed ids no notice needs and forgets the
subject's look-alike skeleton when they hold no data, in one transaction. A certificate is amended (re-signed, a
new audit row citing the previous hash) when a recipient confirms or its notice is dead-lettered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from erasure_pipeline.core.signing import canonical_json
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import Database, LedgerError, utcnow
from erasure_pipeline.ledger.nodes import forget_skeletons_of_the_gone
from erasure_pipeline.ledger.notices import Notices

R = t.erasure_requests.c


class Certificates:
    def __init__(self, db: Database, audit: AuditLog):
        self.db, self.audit = db, audit

    def complete(self, request_id: str, certificate: Mapping[str, Any], notices: Sequence[Mapping[str, Any]] = ()) -> dict:
        """Completed, with its certificate stored and audited, its recipients' ``notices`` queued, every sealed id
        no notice carries destroyed and the subject's skeleton forgotten if they hold no data, in one transaction.
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
            self.audit.append(conn, [("completed", request_id, {"certificate_sha256": digest}),
                                     *(("recipient_notice_queued", request_id, {"recipient": n["recipient"], "notice_id": n["notice_id"],
                                                                                "body_sha256": n["body_sha256"]}) for n in notices)])
            Notices.queue(conn, notices, now)
            keep = [n["recipient"] for n in notices]
            conn.execute(t.sealed_ids.delete().where(t.sealed_ids.c.request_id == request_id, t.sealed_ids.c.recipient.not_in(keep)))
            subject = conn.execute(sa.select(R.subject_key).where(R.request_id == request_id)).scalar()
            forget_skeletons_of_the_gone(conn, [subject])
        return dict(certificate)

    def amend(self, request_id: str, certificate: Mapping[str, Any], why: str) -> dict:
        """Replace a request's certificate with a new revision (already signed), citing the one it replaces."""
        body = canonical_json(certificate)
        digest = hashlib.sha256(body.encode()).hexdigest()
        with self.db.tx() as conn:
            self.db.lock_chain(conn)
            previous = conn.execute(sa.select(t.certificates.c.sha256).where(t.certificates.c.request_id == request_id)).scalar()
            if previous is None:
                raise LedgerError(f"request {request_id} has no certificate to amend")
            conn.execute(t.certificates.update().where(t.certificates.c.request_id == request_id)
                         .values(body=body, sha256=digest))
            self.audit.append(conn, [("certificate_amended", request_id, {"certificate_sha256": digest, "previous_sha256": previous,
                                                                          "why": why})])
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

    def issued_since(self, since: dt.datetime) -> list[str]:
        """Request ids whose certificate was issued at or after ``since``, oldest first."""
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(t.certificates.c.request_id).where(t.certificates.c.issued_at >= since)
                                .order_by(t.certificates.c.issued_at))
            return [r.request_id for r in rows]

    def record_actions(self, request_id: str, actions: list[Mapping[str, Any]]) -> None:
        now = utcnow()
        with self.db.tx() as conn:
            conn.execute(t.erasure_actions.delete().where(t.erasure_actions.c.request_id == request_id))
            if actions:  # one statement for all, in order (their ids are the certificate's order)
                conn.execute(t.erasure_actions.insert(), [{**a, "request_id": request_id, "at": now} for a in actions])
            self.audit.append(conn, [("actions", request_id, {"count": len(actions)})])

    def actions(self, request_id: str) -> list[dict]:
        with self.db.connect() as conn:
            q = sa.select(t.erasure_actions).where(t.erasure_actions.c.request_id == request_id).order_by(t.erasure_actions.c.id)
            return [dict(r._mapping) for r in conn.execute(q)]


"""The append-only audit log: each row hashes the one before it and is signed with a key kept outside the database.

Every ledger store appends its rows here, inside its own transaction and under the chain lock, so the
chain follows the order in which state changed. Signing is the evidence key's business
(``core.signing``); the log is handed a ``sign`` function and never sees the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Connection

from erasure_pipeline.core.signing import canonical_json, verify_signature
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.db import Database, as_utc, utcnow

GENESIS = "0" * 64
Entry = tuple[str, str | None, Mapping[str, Any]]
"""(event, request id or None, detail) of one audit row."""


def chain_hash(prev: str, at: dt.datetime, event: str, request_id: str | None, body: str) -> str:
    """One audit row's hash: what appending writes and what verification recomputes."""
    return hashlib.sha256("|".join([prev, at.isoformat(), event, request_id or "", body]).encode()).hexdigest()


@dataclass(frozen=True)
class Anchor:
    """A copy of the chain head kept outside the ledger: (seq, row_hash) and where it was found."""

    seq: int
    row_hash: str
    source: str


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    rows: int
    signed: int
    anchors: int
    first_bad_seq: int | None = None
    problem: str = ""


class AuditLog:
    def __init__(self, db: Database, sign: Callable[[bytes], str] | None = None):
        self.db = db
        self.sign = sign
        """Signs a row's hash with the evidence key (None: rows are chained but unsigned)."""

    def append(self, conn: Connection, entries: Iterable[Entry]) -> None:
        """Append entries to the chain in one statement, inside the caller's transaction: the chain is
        extended in memory from the last row, under the chain lock (advisory on Postgres, BEGIN
        IMMEDIATE on SQLite)."""
        entries = list(entries)
        if not entries:
            return
        self.db.lock_chain(conn)
        prev = conn.execute(sa.select(t.audit_log.c.row_hash).order_by(t.audit_log.c.seq.desc()).limit(1)).scalar() or GENESIS
        at = utcnow()
        rows = []
        for event, request_id, detail in entries:
            body = canonical_json(detail)
            row_hash = chain_hash(prev, at, event, request_id, body)
            rows.append({"at": at, "event": event, "request_id": request_id, "detail": body, "prev_hash": prev, "row_hash": row_hash,
                         "signature": self.sign(row_hash.encode()) if self.sign else None})
            prev = row_hash
        conn.execute(t.audit_log.insert(), rows)  # executemany keeps insertion order, so seq follows the chain

    def entries(self, request_id: str | None = None) -> list[dict]:
        q = sa.select(t.audit_log).order_by(t.audit_log.c.seq)
        if request_id:
            q = q.where(t.audit_log.c.request_id == request_id)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def head(self) -> tuple[int, str]:
        """(seq, row_hash) of the last row: what a certificate or a run's metadata anchors."""
        with self.db.connect() as conn:
            row = conn.execute(sa.select(t.audit_log.c.seq, t.audit_log.c.row_hash).order_by(t.audit_log.c.seq.desc()).limit(1)).first()
        return (int(row.seq), row.row_hash) if row else (0, GENESIS)

    def max_seq(self) -> int:
        """The ledger sequence: the last row (every state change appends one)."""
        return self.head()[0]

    def verify_chain(self) -> tuple[bool, int | None]:
        """Recompute every row's hash from its predecessor; returns (ok, first bad seq)."""
        report = self.check()
        return report.ok, report.first_bad_seq

    def check(self, public: Ed25519PublicKey | None = None, anchors: Iterable[Anchor] = ()) -> AuditReport:
        """The log against itself, its signatures and copies of its head kept elsewhere.

        - the hash chain: each row's hash recomputed from its predecessor (an edit breaks it);
        - with ``public``: every row from the first signed one on carries a valid signature (a row
          re-chained, edited or appended without the key fails);
        - each anchor (seq, hash) found in a certificate or a run's Dagster metadata: that row exists
          and has that hash (deleting rows, even the last ones, fails up to the newest anchor).
        Returns the first row that disagrees and why."""
        rows = self.entries()
        problems, by_seq, signed = _chain_problems(rows, public)
        anchors = list(anchors)
        for anchor in anchors:
            if anchor.seq not in by_seq:
                problems.append((anchor.seq, f"it is missing, but {anchor.source} anchored the log at this row"))
            elif by_seq[anchor.seq] != anchor.row_hash:
                problems.append((anchor.seq, f"its hash differs from the one {anchor.source} anchored"))
        if not problems:
            return AuditReport(True, len(rows), signed, len(anchors))
        seq, problem = min(problems)
        return AuditReport(False, len(rows), signed, len(anchors), seq, problem)


def _chain_problems(rows: list[dict], public: Ed25519PublicKey | None) -> tuple[list[tuple[int, str]], dict[int, str], int]:
    """(problems, seq -> row hash, rows with a valid signature) of the chain read in order."""
    problems: list[tuple[int, str]] = []
    prev, by_seq, signed, first_signed = GENESIS, {}, 0, None
    for row in rows:
        expect = chain_hash(prev, as_utc(row["at"]), row["event"], row["request_id"], row["detail"])
        if row["prev_hash"] != prev or row["row_hash"] != expect:
            problems.append((row["seq"], "its hash does not follow from the row before it (edited, removed or inserted)"))
            break
        if public is not None:
            if row["signature"]:
                first_signed = row["seq"] if first_signed is None else first_signed
                if verify_signature(public, row["row_hash"].encode(), row["signature"]):
                    signed += 1
                else:
                    problems.append((row["seq"], "its signature does not match (re-chained or forged without the key)"))
            elif first_signed is not None:
                problems.append((row["seq"], "it is not signed, though the rows before it are (forged without the key)"))
        prev = row["row_hash"]
        by_seq[row["seq"]] = row["row_hash"]
    return problems, by_seq, signed

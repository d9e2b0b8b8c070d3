"""The erasure ledger: requests and their lifecycle, tombstones, provenance, actions,
certificates, an append-only hash-chained audit log and a processor outbox.

Pure Python + SQLAlchemy, any SQLAlchemy URL (SQLite file by default, Postgres in
production). Every write is one transaction; on SQLite they are ``BEGIN IMMEDIATE`` and on
Postgres the audit chain takes a transaction-scoped advisory lock, so two processes filing,
claiming and logging at once never interleave a chain or claim one request twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from erasure_pipeline.errors import PipelineError
from erasure_pipeline.ledger import schema as t

LIVE = ("received", "pending", "scheduled", "in_progress", "on_hold", "failed")
TERMINAL = ("completed",)
STATUSES = (*LIVE, *TERMINAL)
GENESIS = "0" * 64
_AUDIT_LOCK = 0x45524153  # "ERAS"
_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit


class LedgerError(PipelineError):
    """A ledger operation that cannot be done (unknown request, wrong state...)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def new_request_id() -> str:
    return "er-" + secrets.token_hex(10)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _chain_hash(prev: str, at: dt.datetime, event: str, request_id: str | None, body: str) -> str:
    """One audit row's hash: what appending writes and what verification recomputes."""
    return hashlib.sha256("|".join([prev, at.isoformat(), event, request_id or "", body]).encode()).hexdigest()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):  # take transaction control from pysqlite
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA secure_delete=ON")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):  # writers serialise at BEGIN, not at their first write
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Ledger:
    def __init__(self, url: str, *, schema: str = "erasure_ledger"):
        self.url = url
        base = make_engine(url)
        self.dialect = base.dialect.name
        self.schema = schema if self.dialect == "postgresql" else None
        self.engine = base.execution_options(schema_translate_map={None: self.schema}) if self.schema else base
        self._base_engine = base

    # ------------------------------------------------------------------ schema
    def migrate(self) -> int:
        """Create or upgrade the ledger's tables; safe to call at every start."""
        with self._base_engine.begin() as conn:
            if self.schema:
                conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK + 1})
            t.metadata.create_all(conn)  # new tables (and their indexes); migrations only add
            current = conn.execute(sa.select(sa.func.max(t.schema_version.c.version))).scalar()
            if current is not None and current < 2:
                for index in t.erasure_requests.indexes:  # create_all skips indexes of existing tables
                    index.create(conn, checkfirst=True)
            if current is None or current < t.CURRENT_VERSION:
                conn.execute(t.schema_version.insert().values(version=t.CURRENT_VERSION, applied_at=utcnow()))
                current = t.CURRENT_VERSION
        return int(current)

    def dispose(self) -> None:
        self._base_engine.dispose()

    # ------------------------------------------------------------------ audit
    def _audit(self, conn: Connection, event: str, request_id: str | None, detail: Mapping[str, Any]) -> None:
        self._audit_many(conn, [(event, request_id, detail)])

    def _audit_many(self, conn: Connection, entries: list[tuple[str, str | None, Mapping[str, Any]]]) -> None:
        """Append entries to the chain in one statement: the chain is extended in memory from the
        last row, under the same lock (advisory on Postgres, BEGIN IMMEDIATE on SQLite)."""
        if not entries:
            return
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})
        prev = conn.execute(sa.select(t.audit_log.c.row_hash).order_by(t.audit_log.c.seq.desc()).limit(1)).scalar()
        prev = prev or GENESIS
        at = utcnow()
        rows = []
        for event, request_id, detail in entries:
            body = _canonical(detail)
            row_hash = _chain_hash(prev, at, event, request_id, body)
            rows.append({"at": at, "event": event, "request_id": request_id, "detail": body, "prev_hash": prev, "row_hash": row_hash})
            prev = row_hash
        # executemany keeps insertion order, so seq follows the chain
        conn.execute(t.audit_log.insert(), rows)

    def audit_entries(self, request_id: str | None = None) -> list[dict]:
        q = sa.select(t.audit_log).order_by(t.audit_log.c.seq)
        if request_id:
            q = q.where(t.audit_log.c.request_id == request_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def verify_audit_chain(self) -> tuple[bool, int | None]:
        """Recompute every row's hash from its predecessor; returns (ok, first bad seq)."""
        prev = GENESIS
        for row in self.audit_entries():
            expect = _chain_hash(prev, _utc(row["at"]), row["event"], row["request_id"], row["detail"])
            if row["prev_hash"] != prev or row["row_hash"] != expect:
                return False, row["seq"]
            prev = row["row_hash"]
        return True, None

    # ------------------------------------------------------------------ intake
    def add_tombstone(self, subject_key: str, shard: int, request_id: str) -> bool:
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key == subject_key)).first()
                if exists:
                    return False
                conn.execute(t.tombstones.insert().values(subject_key=subject_key, shard=shard, since=utcnow(), request_id=request_id))
                self._audit(conn, "tombstone", request_id, {"subject_key": subject_key, "shard": shard})
                return True
        except sa.exc.IntegrityError:  # another process tombstoned the subject first
            return False

    def file_request(
        self, subject_key: str, shard: int, *, due_days: int, reason: str | None = None, kind: str = "erasure"
    ) -> tuple[str, bool]:
        """Tombstone first, then the request. Returns (request id, created); a live one is reused."""
        live = self.live_request_for(subject_key)
        if live:
            return live["request_id"], False
        request_id = new_request_id()
        if kind == "erasure":
            self.add_tombstone(subject_key, shard, request_id)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    t.erasure_requests.insert().values(
                        request_id=request_id, subject_key=subject_key, kind=kind, status="received", reason=reason,
                        received_at=now, due_at=now + dt.timedelta(days=due_days), updated_at=now,
                    )
                )
                self._audit(conn, "received", request_id, {"subject_key": subject_key, "kind": kind, "due_days": due_days})
                conn.execute(t.erasure_requests.update().where(t.erasure_requests.c.request_id == request_id).values(status="pending"))
                self._audit(conn, "pending", request_id, {})
        except sa.exc.IntegrityError:  # another process filed a live request for this subject first
            live = self.live_request_for(subject_key)
            if live is None:
                raise
            return live["request_id"], False
        return request_id, True

    def live_request_for(self, subject_key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.erasure_requests).where(
                    t.erasure_requests.c.subject_key == subject_key, t.erasure_requests.c.status.in_(LIVE)
                ).order_by(t.erasure_requests.c.seq.desc())
            ).first()
        return self._request(row)

    @staticmethod
    def _request(row) -> dict | None:
        if row is None:
            return None
        d = dict(row._mapping)
        for k in ("received_at", "due_at", "updated_at", "completed_at"):
            d[k] = _utc(d[k])
        return d

    def get_request(self, request_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.erasure_requests).where(t.erasure_requests.c.request_id == request_id)).first()
        if row is None:
            raise LedgerError(f"no erasure request {request_id!r}")
        return self._request(row)

    def requests(self, *, status: Iterable[str] | None = None, after_seq: int = 0) -> list[dict]:
        q = sa.select(t.erasure_requests).where(t.erasure_requests.c.seq > after_seq).order_by(t.erasure_requests.c.seq)
        if status is not None:
            q = q.where(t.erasure_requests.c.status.in_(list(status)))
        with self.engine.connect() as conn:
            return [self._request(r) for r in conn.execute(q)]

    def max_seq(self) -> int:
        """The ledger sequence: the last audit-log row (every state change appends one)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.audit_log.c.seq), 0))).scalar())

    # ------------------------------------------------------------------ lifecycle
    def _transition(self, request_id: str, allowed_from: Iterable[str], to: str, event: str, detail: Mapping[str, Any], **values) -> None:
        with self.engine.begin() as conn:
            res = conn.execute(
                t.erasure_requests.update()
                .where(t.erasure_requests.c.request_id == request_id, t.erasure_requests.c.status.in_(list(allowed_from)))
                .values(status=to, updated_at=utcnow(), **values)
            )
            if res.rowcount != 1:
                current = conn.execute(
                    sa.select(t.erasure_requests.c.status).where(t.erasure_requests.c.request_id == request_id)
                ).scalar()
                if current is None:
                    raise LedgerError(f"no erasure request {request_id!r}")
                raise LedgerError(f"request {request_id} is {current}; cannot move it to {to}")
            self._audit(conn, event, request_id, detail)

    def claim(self, request_ids: Iterable[str], batch_id: str) -> list[str]:
        """pending -> scheduled for each request still pending; returns the ones this caller won.

        The row-level conditional update (``WHERE status = 'pending'``) is what makes two
        claimers never win the same request, on SQLite and Postgres alike."""
        with self.engine.begin() as conn:
            won = self._move_many(conn, request_ids, ["pending"], status="scheduled", batch_id=batch_id)
            self._audit_many(conn, [("scheduled", rid, {"batch_id": batch_id}) for rid in won])
        return won

    def start(self, request_ids: Iterable[str], run_id: str) -> None:
        with self.engine.begin() as conn:
            won = self._move_many(conn, request_ids, ["scheduled", "failed", "in_progress"],
                                  status="in_progress", attempts=t.erasure_requests.c.attempts + 1)
            self._audit_many(conn, [("in_progress", rid, {"run_id": run_id}) for rid in won])

    def complete(self, request_id: str, certificate: Mapping[str, Any]) -> None:
        body = _canonical(certificate)
        digest = hashlib.sha256(body.encode()).hexdigest()
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(
                t.erasure_requests.update()
                .where(t.erasure_requests.c.request_id == request_id, t.erasure_requests.c.status.in_(["pending", "scheduled", "in_progress", "failed"]))
                .values(status="completed", completed_at=now, updated_at=now, error=None)
            )
            if res.rowcount != 1:
                raise LedgerError(f"request {request_id} cannot be completed from its current state")
            conn.execute(t.certificates.delete().where(t.certificates.c.request_id == request_id))
            conn.execute(t.certificates.insert().values(request_id=request_id, body=body, sha256=digest, issued_at=now))
            self._audit(conn, "completed", request_id, {"certificate_sha256": digest})
            conn.execute(
                t.outbox.insert().values(
                    request_id=request_id, recipient="processors",
                    payload=_canonical({"type": "erasure_completed", "request_id": request_id,
                                        "subject_key": certificate.get("anonymised_data_subject")}),
                    created_at=now,
                )
            )

    def fail(self, request_ids: Iterable[str], error: str) -> None:
        with self.engine.begin() as conn:
            won = self._move_many(conn, request_ids, ["scheduled", "in_progress"], status="failed", error=error[:2000])
            self._audit_many(conn, [("failed", rid, {"error": error[:500]}) for rid in won])

    def _move_many(self, conn: Connection, request_ids: Iterable[str], allowed_from: list[str], **values) -> list[str]:
        """Update every request whose status is in ``allowed_from``, one ``UPDATE ... RETURNING``
        per chunk of ids; returns the ones updated, in input order.

        On Postgres the audit lock is taken first, so two callers with overlapping id sets queue
        instead of locking rows in different orders and deadlocking (SQLite's BEGIN IMMEDIATE
        already serialises them)."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})
        wanted = list(dict.fromkeys(request_ids))
        moved: set[str] = set()
        for i in range(0, len(wanted), _CHUNK):
            res = conn.execute(
                t.erasure_requests.update()
                .where(t.erasure_requests.c.request_id.in_(wanted[i:i + _CHUNK]),
                       t.erasure_requests.c.status.in_(allowed_from))
                .values(updated_at=utcnow(), **values)
                .returning(t.erasure_requests.c.request_id)
            )
            moved.update(res.scalars())
        return [rid for rid in wanted if rid in moved]

    def retry(self, request_id: str) -> None:
        self._transition(request_id, ["failed"], "pending", "retry", {})

    def hold(self, request_id: str, reason: str) -> None:
        if not reason.strip():
            raise LedgerError("a hold needs a reason (Art.17(3) exception or legal hold)")
        self._transition(request_id, ["received", "pending", "scheduled", "failed"], "on_hold", "on_hold", {"reason": reason}, hold_reason=reason)

    def release(self, request_id: str) -> None:
        self._transition(request_id, ["on_hold"], "pending", "released", {}, hold_reason=None)

    def extend(self, request_id: str, reason: str, *, days: int) -> dt.datetime:
        if not reason.strip():
            raise LedgerError("an extension needs a reason")
        req = self.get_request(request_id)
        if req["extended"]:
            raise LedgerError(f"request {request_id} was already extended once (Art.12(3) allows one extension)")
        if req["status"] in TERMINAL:
            raise LedgerError(f"request {request_id} is {req['status']}; nothing to extend")
        new_due = req["due_at"] + dt.timedelta(days=days)
        with self.engine.begin() as conn:
            conn.execute(
                t.erasure_requests.update().where(t.erasure_requests.c.request_id == request_id)
                .values(due_at=new_due, extended=True, extension_reason=reason, updated_at=utcnow())
            )
            self._audit(conn, "extended", request_id, {"reason": reason, "due_at": new_due.isoformat()})
        return new_due

    # ------------------------------------------------------------------ tombstones
    def tombstoned_keys(self, shard: int | None = None) -> set[str]:
        """Keys to keep out of every store. A subject whose request is on hold (Art.17(3)
        exception, legal hold) is not filtered while the hold lasts: its data must be kept."""
        held = sa.select(t.erasure_requests.c.subject_key).where(t.erasure_requests.c.status == "on_hold")
        q = sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key.not_in(held))
        if shard is not None:
            q = q.where(t.tombstones.c.shard == shard)
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(q)}

    def tombstoned_since(self, subject_key: str) -> dt.datetime | None:
        """When the subject was tombstoned (None if never)."""
        with self.engine.connect() as conn:
            return _utc(conn.execute(sa.select(t.tombstones.c.since).where(t.tombstones.c.subject_key == subject_key)).scalar())

    # ------------------------------------------------------------------ landing, consent, retention
    def known_landing_files(self) -> set[str]:
        """Landing files some ingest batch has taken (the retraining cycle's cursor)."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(t.landing_files.c.name))}

    def record_landing_batch(
        self, batch_id: str, kind: str, files: Iterable[tuple[str, str, str]], shards: Iterable[int], as_of: dt.datetime
    ) -> bool:
        """One ingest batch: ``files`` as (name, table, content hash). False if it was recorded before."""
        files = list(files)
        try:
            with self.engine.begin() as conn:
                conn.execute(t.landing_batches.insert().values(
                    batch_id=batch_id, kind=kind, shards=_canonical(sorted(set(shards))), as_of=as_of, created_at=utcnow()))
                known = {r[0] for r in conn.execute(sa.select(t.landing_files.c.name).where(t.landing_files.c.name.in_([f[0] for f in files])))}
                new = [f for f in files if f[0] not in known]
                if new:
                    conn.execute(t.landing_files.insert(), [
                        {"name": n, "table_name": tb, "content_hash": h, "batch_id": batch_id, "seen_at": utcnow()} for n, tb, h in new])
                self._audit(conn, "landing_batch", None, {"batch_id": batch_id, "kind": kind, "files": len(new), "shards": sorted(set(shards))})
        except sa.exc.IntegrityError:
            return False
        return True

    def landing_batches(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(t.landing_batches).order_by(t.landing_batches.c.created_at))]
        for r in rows:
            r["shards"] = json.loads(r["shards"])
        return rows

    def record_consent_changes(self, shard: int, changes: Mapping[str, bool], run_id: str) -> None:
        """Training consent granted or withdrawn (a landing update, not an erasure)."""
        if not changes:
            return
        now = utcnow()
        ordered = sorted(changes.items())
        with self.engine.begin() as conn:
            conn.execute(t.consent_changes.insert(), [
                {"subject_key": key, "shard": shard, "consent": bool(consent), "run_id": run_id, "at": now} for key, consent in ordered])
            self._audit_many(conn, [("consent_granted" if consent else "consent_withdrawn", None,
                                     {"subject_key": key, "shard": shard, "run_id": run_id}) for key, consent in ordered])

    def consent_changes(self, subject_key: str | None = None) -> list[dict]:
        q = sa.select(t.consent_changes).order_by(t.consent_changes.c.id)
        if subject_key:
            q = q.where(t.consent_changes.c.subject_key == subject_key)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def record_retention(self, asset: str, partition: str, rows: int, cutoff: dt.datetime, run_id: str, versions_purged: int) -> None:
        """Rows that left the lake because they outlived ``retention_days``: logged like an erasure."""
        with self.engine.begin() as conn:
            self._audit(conn, "retention", None, {
                "asset": asset, "partition": partition, "rows": rows, "cutoff": cutoff.isoformat(), "run_id": run_id,
                "noncurrent_versions_purged": versions_purged})

    def record_partition_stats(self, asset: str, partition: str, rows: int, oldest: dt.datetime | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.partition_stats.delete().where(t.partition_stats.c.asset == asset, t.partition_stats.c.partition == partition))
            conn.execute(t.partition_stats.insert().values(asset=asset, partition=partition, rows=rows, oldest=oldest, recorded_at=utcnow()))

    def partition_stats(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(t.partition_stats))]
        for r in rows:
            r["oldest"] = _utc(r["oldest"])
        return rows

    # ------------------------------------------------------------------ provenance
    def record_provenance(self, asset: str, partition: str, rows_by_key: Mapping[str, int], content_hash: str, run_id: str) -> None:
        """Replace what the ledger knows of one asset partition with what it now holds."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(t.provenance.delete().where(t.provenance.c.asset == asset, t.provenance.c.partition == partition))
            batch = [
                {"subject_key": k, "asset": asset, "partition": partition, "rows": int(n), "content_hash": content_hash,
                 "run_id": run_id, "recorded_at": now}
                for k, n in rows_by_key.items()
            ]
            for i in range(0, len(batch), 5000):
                conn.execute(t.provenance.insert(), batch[i : i + 5000])

    def provenance_for(self, subject_keys: Iterable[str]) -> list[dict]:
        keys = list(subject_keys)
        out: list[dict] = []
        with self.engine.connect() as conn:
            for i in range(0, len(keys), 500):
                q = sa.select(t.provenance).where(t.provenance.c.subject_key.in_(keys[i : i + 500]))
                out += [dict(r._mapping) for r in conn.execute(q)]
        return out

    def forget_provenance(self, subject_keys: Iterable[str]) -> None:
        keys = list(subject_keys)
        with self.engine.begin() as conn:
            for i in range(0, len(keys), 500):
                conn.execute(t.provenance.delete().where(t.provenance.c.subject_key.in_(keys[i : i + 500])))

    # ------------------------------------------------------------------ batches, actions, certificates
    def create_batch(self, batch_id: str, shard: int | None, plan: Mapping[str, Any]) -> None:
        """Record a planned batch (assets and per-request footprints); idempotent per batch id."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.batches.c.batch_id).where(t.batches.c.batch_id == batch_id)).first():
                return
            conn.execute(t.batches.insert().values(batch_id=batch_id, shard=shard, plan=_canonical(plan), status="requested", created_at=utcnow()))

    def get_batch(self, batch_id: str) -> dict | None:
        with self.engine.connect() as conn:
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
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(q)]
        return [self.get_batch(b) for b in ids]

    def finish_batch(self, batch_id: str, status: str, run_id: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.batches.update().where(t.batches.c.batch_id == batch_id).values(status=status, run_id=run_id, finished_at=utcnow()))

    def batch_requests(self, batch_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.erasure_requests).where(t.erasure_requests.c.batch_id == batch_id).order_by(t.erasure_requests.c.seq))
            return [self._request(r) for r in rows]

    def record_actions(self, request_id: str, actions: list[Mapping[str, Any]]) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(t.erasure_actions.delete().where(t.erasure_actions.c.request_id == request_id))
            for a in actions:
                conn.execute(t.erasure_actions.insert().values(request_id=request_id, at=now, **a))
            self._audit(conn, "actions", request_id, {"count": len(actions)})

    def actions(self, request_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.erasure_actions).where(t.erasure_actions.c.request_id == request_id).order_by(t.erasure_actions.c.id))
            return [dict(r._mapping) for r in rows]

    def certificate(self, request_id: str) -> tuple[dict, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.certificates).where(t.certificates.c.request_id == request_id)).first()
        if row is None:
            return None
        return json.loads(row.body), row.sha256

    def outbox(self, *, unsent_only: bool = True) -> list[dict]:
        q = sa.select(t.outbox).order_by(t.outbox.c.id)
        if unsent_only:
            q = q.where(t.outbox.c.sent_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Connection, Engine

from erasure_pipeline.errors import PipelineError
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.signing import Signer, verify_signature

LIVE = ("received", "pending", "scheduled", "in_progress", "on_hold", "failed")
CLAIMABLE = ("pending", "scheduled", "in_progress", "failed")
"""States a run may claim a request from (``scheduled`` only exists in ledgers older than claims by runs)."""
TERMINAL = ("completed",)
STATUSES = (*LIVE, *TERMINAL)
GENESIS = "0" * 64
_AUDIT_LOCK = 0x45524153  # "ERAS"
_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit


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


class LedgerError(PipelineError):
    """A ledger operation that cannot be done (unknown request, wrong state...)."""


class LedgerUnavailable(LedgerError):
    """The ledger's database cannot be reached, or did not answer in time: nothing was written."""


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


CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 120
SQLITE_BUSY_TIMEOUT_S = 60


def describe_url(url: str) -> str:
    """Where a ledger lives, for messages: host:port/database, or the SQLite file; never a password."""
    u = sa.engine.make_url(url)
    if u.drivername.startswith("sqlite"):
        return u.database or ":memory:"
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


def make_engine(url: str) -> Engine:
    """An engine whose every wait is bounded, and whose connection failures read as one line:
    ``LedgerUnavailable("ledger unavailable: host:port/db (...), retry later")``."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):  # take transaction control from pysqlite
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA secure_delete=ON")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):  # writers serialise at BEGIN, not at their first write
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_timeout=CONNECT_TIMEOUT_S, connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S, "options": f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"})
    where = describe_url(url)

    @sa.event.listens_for(engine, "handle_error")
    def _unavailable(ctx):
        if _is_outage(ctx):
            raise LedgerUnavailable(
                f"ledger unavailable: {where} ({type(ctx.original_exception).__name__}), retry later") from None

    return engine


def _is_outage(ctx) -> bool:
    """The database cannot be reached or did not answer in time (not: a constraint, a bug in a query)."""
    error = ctx.original_exception
    if getattr(ctx, "is_pre_ping", False):
        return False  # a pooled connection the outage cut: SQLAlchemy discards it and connects afresh
    if ctx.is_disconnect:
        return True
    name = type(error).__module__ + "." + type(error).__name__
    if name.startswith("psycopg2") and type(error).__name__ in ("OperationalError", "QueryCanceled", "InterfaceError"):
        return True
    if name == "sqlite3.OperationalError":
        message = str(error)
        return "unable to open" in message or "disk I/O" in message or "database is locked" in message
    return False


def _add_columns(conn: Connection, columns: list[tuple[sa.Table, str]], schema: str | None) -> None:
    """ALTER TABLE ... ADD COLUMN for columns an older ledger lacks (names come from the schema module)."""
    insp = sa.inspect(conn)
    prep = conn.dialect.identifier_preparer
    for table, name in columns:
        if name in {c["name"] for c in insp.get_columns(table.name, schema=schema)}:
            continue
        column = table.c[name]
        target = (prep.quote_schema(schema) + "." if schema else "") + prep.quote(table.name)
        spec = prep.quote(column.name) + " " + column.type.compile(conn.dialect)
        if column.server_default is not None:
            spec += " NOT NULL DEFAULT '" + str(column.server_default.arg) + "'"
        conn.execute(sa.DDL("ALTER TABLE " + target + " ADD COLUMN " + spec))


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


class Ledger:
    def __init__(self, url: str, *, schema: str = "erasure_ledger", signer: Signer | None = None):
        self.url = url
        self.signer = signer
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
            if current is not None:
                for version, columns in t.ADDED_COLUMNS.items():
                    if current < version:
                        _add_columns(conn, columns, self.schema)
            if current is None or current < t.CURRENT_VERSION:
                conn.execute(t.schema_version.insert().values(version=t.CURRENT_VERSION, applied_at=utcnow()))
                current = t.CURRENT_VERSION
        return int(current)

    def dispose(self) -> None:
        self._base_engine.dispose()

    def _tx(self):
        """The one way a write starts: a transaction (BEGIN IMMEDIATE on SQLite).

        Every write method goes through here, so a test can fail or kill the process at the n-th
        write (``erasure_pipeline_tests/crash.py``) and show that any crash point is recoverable.
        """
        return self.engine.begin()

    # ------------------------------------------------------------------ audit
    def _lock_chain(self, conn: Connection) -> None:
        """Serialise this transaction with every other writer of the chain (SQLite: BEGIN IMMEDIATE does)."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK})

    def _audit(self, conn: Connection, event: str, request_id: str | None, detail: Mapping[str, Any]) -> None:
        self._audit_many(conn, [(event, request_id, detail)])

    def _audit_many(self, conn: Connection, entries: list[tuple[str, str | None, Mapping[str, Any]]]) -> None:
        """Append entries to the chain in one statement: the chain is extended in memory from the
        last row, under the same lock (advisory on Postgres, BEGIN IMMEDIATE on SQLite)."""
        if not entries:
            return
        self._lock_chain(conn)
        prev = conn.execute(sa.select(t.audit_log.c.row_hash).order_by(t.audit_log.c.seq.desc()).limit(1)).scalar()
        prev = prev or GENESIS
        at = utcnow()
        rows = []
        for event, request_id, detail in entries:
            body = _canonical(detail)
            row_hash = _chain_hash(prev, at, event, request_id, body)
            signature = self.signer.sign(row_hash.encode()) if self.signer else None
            rows.append({"at": at, "event": event, "request_id": request_id, "detail": body, "prev_hash": prev, "row_hash": row_hash,
                         "signature": signature})
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
        report = self.check_audit_log()
        return report.ok, report.first_bad_seq

    def chain_head(self) -> tuple[int, str]:
        """(seq, row_hash) of the last audit row: what a certificate or a run's metadata anchors."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.audit_log.c.seq, t.audit_log.c.row_hash).order_by(t.audit_log.c.seq.desc()).limit(1)).first()
        return (int(row.seq), row.row_hash) if row else (0, GENESIS)

    def check_audit_log(self, public: Ed25519PublicKey | None = None, anchors: Iterable[Anchor] = ()) -> AuditReport:
        """The audit log against itself, its signatures and copies of its head kept elsewhere.

        - the hash chain: each row's hash recomputed from its predecessor (an edit breaks it);
        - with ``public``: every row from the first signed one on carries a valid signature (a row
          re-chained, edited or appended without the key fails);
        - each anchor (seq, hash) found in a certificate or a run's Dagster metadata: that row exists
          and has that hash (deleting rows, even the last ones, fails up to the newest anchor).
        Returns the first row that disagrees and why."""
        problems: list[tuple[int, str]] = []
        prev, by_seq, signed, first_signed = GENESIS, {}, 0, None
        rows = self.audit_entries()
        for row in rows:
            expect = _chain_hash(prev, _utc(row["at"]), row["event"], row["request_id"], row["detail"])
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

    # ------------------------------------------------------------------ intake
    def add_tombstone(self, subject_key: str, shard: int, request_id: str) -> bool:
        try:
            with self._tx() as conn:
                exists = conn.execute(sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key == subject_key)).first()
                if exists:
                    return False
                conn.execute(t.tombstones.insert().values(subject_key=subject_key, shard=shard, since=utcnow(), request_id=request_id))
                self._audit(conn, "tombstone", request_id, {"subject_key": subject_key, "shard": shard})
                return True
        except sa.exc.IntegrityError:  # another process tombstoned the subject first
            return False

    def file_request(
        self, subject_key: str, shard: int, *, due_days: int, reason: str | None = None, kind: str = "erasure", rule: str = ""
    ) -> tuple[str, bool]:
        """Tombstone first, then the request. Returns (request id, created); a live one is reused."""
        return self.file_requests([(subject_key, shard)], due_days=due_days, reason=reason, kind=kind, rule=rule)[0]

    def file_requests(
        self, subjects: Iterable[tuple[str, int]], *, due_days: int, reason: str | None = None, kind: str = "erasure",
        rule: str = "",
    ) -> list[tuple[str, bool]]:
        """Bulk intake: (request id, created) per (subject key, shard), in input order.

        One transaction per chunk writes the tombstones before the requests (an ingest running at
        the same time already drops the subjects); a subject with a live request gets that request.
        """
        items = list(subjects)
        out: dict[str, tuple[str, bool]] = {}
        for i in range(0, len(items), _CHUNK):
            chunk = list(dict.fromkeys(items[i:i + _CHUNK]))
            try:
                out.update(self._file_chunk(chunk, due_days, reason, kind, rule))
            except sa.exc.IntegrityError:  # another process filed for one of these subjects first
                for item in chunk:
                    out.update(self._file_chunk([item], due_days, reason, kind, rule))
        return [out[key] for key, _ in items]

    def _file_chunk(self, chunk: list[tuple[str, int]], due_days: int, reason: str | None, kind: str,
                    rule: str) -> dict[str, tuple[str, bool]]:
        keys = [k for k, _ in chunk]
        now = utcnow()
        out: dict[str, tuple[str, bool]] = {}
        with self._tx() as conn:
            self._lock_chain(conn)
            live = {r.subject_key: r.request_id for r in conn.execute(
                sa.select(t.erasure_requests.c.subject_key, t.erasure_requests.c.request_id).where(
                    t.erasure_requests.c.subject_key.in_(keys), t.erasure_requests.c.status.in_(LIVE)))}
            stoned = set(conn.execute(sa.select(t.tombstones.c.subject_key).where(t.tombstones.c.subject_key.in_(keys))).scalars())
            new = [(k, shard, new_request_id()) for k, shard in chunk if k not in live]
            out.update({k: (rid, False) for k, rid in live.items()})
            if new:
                if kind == "erasure":
                    stones = [{"subject_key": k, "shard": shard, "since": now, "request_id": rid, "rule": rule}
                              for k, shard, rid in new if k not in stoned]
                    if stones:
                        conn.execute(t.tombstones.insert(), stones)
                        self._audit_many(conn, [("tombstone", r["request_id"], {"subject_key": r["subject_key"], "shard": r["shard"]})
                                                for r in stones])
                conn.execute(t.erasure_requests.insert(), [
                    {"request_id": rid, "subject_key": k, "kind": kind, "status": "pending", "reason": reason, "received_at": now,
                     "due_at": now + dt.timedelta(days=due_days), "updated_at": now} for k, _shard, rid in new])
                self._audit_many(conn, [entry for k, _shard, rid in new for entry in (
                    ("received", rid, {"subject_key": k, "kind": kind, "due_days": due_days}), ("pending", rid, {}))])
                out.update({k: (rid, True) for k, _shard, rid in new})
        return out

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

    def overdue(self, now: dt.datetime, *, within: dt.timedelta, stuck_after: dt.timedelta) -> list[dict]:
        """Live requests past or within ``within`` of their due date, and any not on hold that has not
        moved for ``stuck_after``; each with a ``why``. A held request's clock is the law's exception."""
        out = []
        for r in self.requests(status=[s for s in LIVE if s != "on_hold"]):
            why = []
            if r["due_at"] < now:
                why.append(f"overdue since {r['due_at']:%Y-%m-%d %H:%M} UTC")
            elif r["due_at"] <= now + within:
                why.append(f"due {r['due_at']:%Y-%m-%d %H:%M} UTC")
            if r["updated_at"] <= now - stuck_after:
                why.append(f"{r['status']} since {r['updated_at']:%Y-%m-%d %H:%M} UTC (attempts {r['attempts']})")
            if why:
                out.append({**r, "why": "; ".join(why)})
        return out

    def requests_by_id(self, request_ids: Iterable[str]) -> list[dict]:
        ids = list(request_ids)
        out: list[dict] = []
        with self.engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = sa.select(t.erasure_requests).where(t.erasure_requests.c.request_id.in_(ids[i:i + _CHUNK]))
                out += [self._request(r) for r in conn.execute(q)]
        order = {rid: i for i, rid in enumerate(ids)}
        return sorted(out, key=lambda r: order[r["request_id"]])

    def max_seq(self) -> int:
        """The ledger sequence: the last audit-log row (every state change appends one)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.audit_log.c.seq), 0))).scalar())

    # ------------------------------------------------------------------ lifecycle
    def _transition(self, request_id: str, allowed_from: Iterable[str], to: str, event: str, detail: Mapping[str, Any], **values) -> None:
        with self._tx() as conn:
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

    # ------------------------------------------------------------------ claims, made by runs
    def claim_erasure_batch(
        self, batch_id: str, request_ids: Iterable[str], run_id: str, *, is_live: Callable[[str, dict | None], bool], host: str, pid: int,
    ) -> Claim:
        """What an erasure run does first: claim its batch and requests for ``run_id``, in one transaction.

        A request is won when it is pending, or held by this run already (a retried step), or held by
        a run that is no longer alive (``is_live``: the Dagster layer's view of runs and processes), in
        which case it is resumed with an audit row saying from which run. A batch another live run
        holds is ``busy``; a certified batch is ``done``. Ticks never write: this is the only claim.
        """
        wanted = list(dict.fromkeys(request_ids))
        with self._tx() as conn:
            self._lock_chain(conn)
            live = self._liveness(conn, is_live)
            batch = conn.execute(sa.select(t.batches).where(t.batches.c.batch_id == batch_id)).first()
            if (elsewhere := _held_elsewhere(batch, "certified", run_id, live)) is not None:
                return elsewhere
            rows = {}
            for i in range(0, len(wanted), _CHUNK):
                q = sa.select(t.erasure_requests.c.request_id, t.erasure_requests.c.status, t.erasure_requests.c.run_id).where(
                    t.erasure_requests.c.request_id.in_(wanted[i:i + _CHUNK]))
                rows.update({r.request_id: r for r in conn.execute(q)})
            won, resumed, fresh = [], [], []
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
            now = utcnow()
            for i in range(0, len(fresh), _CHUNK):
                conn.execute(t.erasure_requests.update().where(t.erasure_requests.c.request_id.in_(fresh[i:i + _CHUNK])).values(
                    status="in_progress", batch_id=batch_id, run_id=run_id, error=None, updated_at=now,
                    attempts=t.erasure_requests.c.attempts + 1))
            plan = _canonical({"requests": won})
            if batch is None:
                conn.execute(t.batches.insert().values(batch_id=batch_id, plan=plan, status="running", run_id=run_id, created_at=now))
            else:
                conn.execute(t.batches.update().where(t.batches.c.batch_id == batch_id).values(
                    plan=plan, status="running", run_id=run_id, finished_at=None))
            self._record_job_run(conn, run_id, "erasure", batch_id, host, pid)
            self._audit_many(conn, [
                ("batch_claimed", None, {"batch_id": batch_id, "run_id": run_id, "requests": len(won)}),
                *[("resumed", rid, {"from_run": old, "run_id": run_id}) for rid, old in resumed],
                *[("in_progress", rid, {"run_id": run_id, "batch_id": batch_id}) for rid in fresh],
            ])
        return Claim("claimed", run_id, tuple(won), tuple(rid for rid, _ in resumed))

    def fail_requests(self, request_ids: Iterable[str], error: str, run_id: str | None = None) -> list[str]:
        """Requests whose erasure could not be proven: failed, with why (retried by a later tick)."""
        with self._tx() as conn:
            failed = self._move_many(conn, request_ids, ["scheduled", "in_progress"], status="failed", error=error[:2000])
            self._audit_many(conn, [("failed", rid, {"run_id": run_id, "error": error[:500]}) for rid in failed])
        return failed

    def fail_run(self, run_id: str, error: str) -> list[str]:
        """A run ended without finishing: its requests become ``failed`` (retried by the next tick while
        attempts remain), its batches ``failed``, its job-run record closed. Safe to call twice."""
        now = utcnow()
        with self._tx() as conn:
            self._lock_chain(conn)
            failed = list(conn.execute(
                t.erasure_requests.update()
                .where(t.erasure_requests.c.run_id == run_id, t.erasure_requests.c.status.in_(["scheduled", "in_progress"]))
                .values(status="failed", error=error[:2000], updated_at=now)
                .returning(t.erasure_requests.c.request_id)).scalars())
            conn.execute(t.batches.update().where(t.batches.c.run_id == run_id, t.batches.c.status == "running")
                         .values(status="failed", finished_at=now))
            conn.execute(t.landing_batches.update().where(t.landing_batches.c.run_id == run_id, t.landing_batches.c.status == "running")
                         .values(status="failed"))
            closed = conn.execute(t.job_runs.update().where(t.job_runs.c.run_id == run_id, t.job_runs.c.finished_at.is_(None))
                                  .values(finished_at=now, outcome="failed")).rowcount
            entries = [("failed", rid, {"run_id": run_id, "error": error[:500]}) for rid in sorted(failed)]
            if closed:
                entries.insert(0, ("run_failed", None, {"run_id": run_id, "error": error[:500]}))
            self._audit_many(conn, entries)
        return failed

    def complete(self, request_id: str, certificate: Mapping[str, Any]) -> dict:
        """Completed, with its certificate signed (when the ledger has a signer), stored, audited and
        announced to processors, in one transaction. Returns the certificate as stored."""
        if self.signer is not None:
            certificate = self.signer.sign_document(certificate)
        body = _canonical(certificate)
        digest = hashlib.sha256(body.encode()).hexdigest()
        now = utcnow()
        with self._tx() as conn:
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
        return dict(certificate)

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
        """An operator's retry: failed -> pending, with the automatic attempts counted afresh."""
        self._transition(request_id, ["failed"], "pending", "retry", {}, attempts=0, run_id=None)

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
        with self._tx() as conn:
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

    def tombstones_by_rule(self) -> dict[str, set[str]]:
        """Tombstoned keys (not of requests on hold) by the identity rule each was made under."""
        held = sa.select(t.erasure_requests.c.subject_key).where(t.erasure_requests.c.status == "on_hold")
        q = sa.select(t.tombstones.c.rule, t.tombstones.c.subject_key).where(t.tombstones.c.subject_key.not_in(held))
        out: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            for rule, key in conn.execute(q):
                out.setdefault(rule or "", set()).add(key)
        return out

    def tombstone_rule(self, subject_key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t.tombstones.c.rule).where(t.tombstones.c.subject_key == subject_key)).scalar()

    def tombstoned_since(self, subject_key: str) -> dt.datetime | None:
        """When the subject was tombstoned (None if never)."""
        with self.engine.connect() as conn:
            return _utc(conn.execute(sa.select(t.tombstones.c.since).where(t.tombstones.c.subject_key == subject_key)).scalar())

    # ------------------------------------------------------------------ landing, consent, retention
    def claim_landing_batch(
        self, batch_id: str, kind: str, files: Iterable[tuple[str, str, str]], as_of: dt.datetime, run_id: str, *,
        is_live: Callable[[str, dict | None], bool], host: str, pid: int,
    ) -> Claim:
        """What an ingest run (a cycle, a full build, a rebuild) does first: take its landing files.

        ``files`` are (name, table, content hash). The batch is ``done`` if it finished before and
        ``busy`` while another live run holds it; otherwise this run holds it and its files, so the
        next cycle starts after them once the batch is done (``landing_files_taken``)."""
        files = list(files)
        now = utcnow()
        with self._tx() as conn:
            self._lock_chain(conn)
            live = self._liveness(conn, is_live)
            row = conn.execute(sa.select(t.landing_batches).where(t.landing_batches.c.batch_id == batch_id)).first()
            if (elsewhere := _held_elsewhere(row, "done", run_id, live)) is not None:
                return elsewhere
            if row is None:
                conn.execute(t.landing_batches.insert().values(
                    batch_id=batch_id, kind=kind, shards="[]", as_of=as_of, created_at=now, status="running", run_id=run_id))
            else:
                conn.execute(t.landing_batches.update().where(t.landing_batches.c.batch_id == batch_id).values(
                    status="running", run_id=run_id, as_of=as_of))
            names = [f[0] for f in files]
            for i in range(0, len(names), _CHUNK):
                conn.execute(t.landing_files.delete().where(t.landing_files.c.name.in_(names[i:i + _CHUNK])))
            if files:
                conn.execute(t.landing_files.insert(), [
                    {"name": n, "table_name": tb, "content_hash": h, "batch_id": batch_id, "seen_at": now} for n, tb, h in files])
            self._record_job_run(conn, run_id, kind, batch_id, host, pid)
            self._audit(conn, "landing_batch_claimed", None, {"batch_id": batch_id, "kind": kind, "files": len(files), "run_id": run_id})
        return Claim("claimed", run_id)

    def finish_landing_batch(self, batch_id: str, shards: Iterable[int]) -> None:
        with self._tx() as conn:
            conn.execute(t.landing_batches.update().where(t.landing_batches.c.batch_id == batch_id).values(
                status="done", shards=_canonical(sorted(set(shards)))))
            self._audit(conn, "landing_batch", None, {"batch_id": batch_id, "shards": sorted(set(shards))})

    def landing_files_taken(self, is_live: Callable[[str, dict | None], bool]) -> set[str]:
        """Landing files an ingest batch has taken: one that finished, or one a live run is working on."""
        q = sa.select(t.landing_files.c.name, t.landing_batches.c.status, t.landing_batches.c.run_id).join(
            t.landing_batches, t.landing_batches.c.batch_id == t.landing_files.c.batch_id)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
            live = self._liveness(conn, is_live)
            return {name for name, status, run_id in rows if status == "done" or (status == "running" and run_id and live(run_id))}

    # ------------------------------------------------------------------ job runs (which process runs which run)
    @staticmethod
    def _liveness(conn: Connection, is_live: Callable[[str, dict | None], bool]) -> Callable[[str], bool]:
        """``is_live`` given each run's job-run record, read on this connection (a second connection
        would wait for the write lock this transaction may hold), each run asked once."""
        cache: dict[str, bool] = {}

        def live(run_id: str) -> bool:
            if run_id not in cache:
                row = conn.execute(sa.select(t.job_runs).where(t.job_runs.c.run_id == run_id)).first()
                cache[run_id] = is_live(run_id, dict(row._mapping) if row else None)
            return cache[run_id]

        return live

    def _record_job_run(self, conn: Connection, run_id: str, kind: str, batch_id: str, host: str, pid: int) -> None:
        values = {"kind": kind, "batch_id": batch_id, "host": host, "pid": pid}
        if conn.execute(sa.select(t.job_runs.c.run_id).where(t.job_runs.c.run_id == run_id)).first():
            conn.execute(t.job_runs.update().where(t.job_runs.c.run_id == run_id).values(**values, finished_at=None, outcome=None))
        else:
            conn.execute(t.job_runs.insert().values(run_id=run_id, started_at=utcnow(), **values))

    def finish_job_run(self, run_id: str, outcome: str) -> None:
        with self._tx() as conn:
            conn.execute(t.job_runs.update().where(t.job_runs.c.run_id == run_id).values(finished_at=utcnow(), outcome=outcome))

    def job_run(self, run_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.job_runs).where(t.job_runs.c.run_id == run_id)).first()
        return dict(row._mapping) if row else None

    def unfinished_job_runs(self, host: str | None = None) -> list[dict]:
        q = sa.select(t.job_runs).where(t.job_runs.c.finished_at.is_(None)).order_by(t.job_runs.c.started_at)
        if host is not None:
            q = q.where(t.job_runs.c.host == host)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def landing_batches(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(t.landing_batches).order_by(t.landing_batches.c.created_at))]
        for r in rows:
            r["shards"] = json.loads(r["shards"])
        return rows

    def consent_changes(self, subject_key: str | None = None) -> list[dict]:
        q = sa.select(t.consent_changes).order_by(t.consent_changes.c.id)
        if subject_key:
            q = q.where(t.consent_changes.c.subject_key == subject_key)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def partition_stats(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(t.partition_stats))]
        for r in rows:
            r["oldest"] = _utc(r["oldest"])
        return rows

    # ------------------------------------------------------------------ node versions and provenance
    def record_node(
        self, asset: str, partition: str | None, *, data_version: str, code_version: str, inputs: Mapping[str, str], run_id: str,
        provenance: Mapping[str, int] | None = None, provenance_scope: Iterable[str] | None = None,
        stats: tuple[int, dt.datetime | None] | None = None,
        consent: tuple[int, Mapping[str, bool]] | None = None, retention: Mapping[str, Any] | None = None,
    ) -> None:
        """Everything the ledger learns from one node partition's computation, in one transaction: its
        version and inputs, and (as the node has them) its provenance, row statistics, consent changes
        and the rows that left it for retention. A crash before this leaves the old record, so the
        next run sees the partition as stale and computes it again.

        ``provenance`` is what the partition holds per subject; with ``provenance_scope`` it covers only
        those subjects (the buckets a computation rewrote) and the others' rows are left as they are.
        Either way only rows that differ are written, so an erasure changes its subjects' rows only."""
        part = partition or "all"
        now = utcnow()
        with self._tx() as conn:
            conn.execute(t.node_versions.delete().where(t.node_versions.c.asset == asset, t.node_versions.c.partition == part))
            conn.execute(t.node_versions.insert().values(asset=asset, partition=part, data_version=data_version, code_version=code_version,
                                                         inputs=_canonical(dict(inputs)), run_id=run_id, recorded_at=now))
            if provenance is not None:
                self._update_provenance(conn, asset, part, provenance, provenance_scope, data_version, run_id)
            if stats is not None:
                conn.execute(t.partition_stats.delete().where(t.partition_stats.c.asset == asset, t.partition_stats.c.partition == part))
                conn.execute(t.partition_stats.insert().values(asset=asset, partition=part, rows=stats[0], oldest=stats[1], recorded_at=now))
            if consent is not None and consent[1]:
                shard, changes = consent
                ordered = sorted(changes.items())
                conn.execute(t.consent_changes.insert(), [
                    {"subject_key": key, "shard": shard, "consent": bool(c), "run_id": run_id, "at": now} for key, c in ordered])
                self._audit_many(conn, [("consent_granted" if c else "consent_withdrawn", None,
                                         {"subject_key": key, "shard": shard, "run_id": run_id}) for key, c in ordered])
            if retention:
                self._audit(conn, "retention", None, {"asset": asset, "partition": part, "run_id": run_id, **retention})

    def node_records(self, partition: str | None = ..., assets: Iterable[str] | None = None) -> dict[tuple[str, str], dict]:
        """(asset, partition) -> the node's record; ``partition`` limits to one (None: the merges' ``all``)."""
        q = sa.select(t.node_versions)
        if partition is not ...:
            q = q.where(t.node_versions.c.partition == (partition or "all"))
        if assets is not None:
            q = q.where(t.node_versions.c.asset.in_(list(assets)))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for r in rows:
            r["inputs"] = json.loads(r["inputs"])
        return {(r["asset"], r["partition"]): r for r in rows}

    def _update_provenance(self, conn: Connection, asset: str, partition: str, rows_by_key: Mapping[str, int],
                           scope: Iterable[str] | None, content_hash: str, run_id: str) -> None:
        """Make the partition's provenance (of the subjects in ``scope``; None: all) equal ``rows_by_key``,
        writing only the rows that differ."""
        p = t.provenance.c
        where = (p.asset == asset, p.partition == partition)
        if scope is None:
            existing = {r.subject_key: r.rows for r in conn.execute(sa.select(p.subject_key, p.rows).where(*where))}
        else:
            keys, existing = list(scope), {}
            for i in range(0, len(keys), 500):
                q = sa.select(p.subject_key, p.rows).where(*where, p.subject_key.in_(keys[i : i + 500]))
                existing.update({r.subject_key: r.rows for r in conn.execute(q)})
        wanted = {k: int(n) for k, n in rows_by_key.items() if n}
        gone = [k for k in existing if k not in wanted]
        for i in range(0, len(gone), 500):
            conn.execute(t.provenance.delete().where(*where, p.subject_key.in_(gone[i : i + 500])))
        now = utcnow()
        changed = [{"k": k, "n": n, "h": content_hash, "r": run_id, "at": now} for k, n in wanted.items() if k in existing and existing[k] != n]
        if changed:
            conn.execute(t.provenance.update().where(*where, p.subject_key == sa.bindparam("k"))
                         .values(rows=sa.bindparam("n"), content_hash=sa.bindparam("h"), run_id=sa.bindparam("r"),
                                 recorded_at=sa.bindparam("at")), changed)
        batch = [{"subject_key": k, "asset": asset, "partition": partition, "rows": n, "content_hash": content_hash,
                  "run_id": run_id, "recorded_at": now} for k, n in wanted.items() if k not in existing]
        for i in range(0, len(batch), 5000):
            conn.execute(t.provenance.insert(), batch[i : i + 5000])

    def record_provenance(self, asset: str, partition: str, rows_by_key: Mapping[str, int], content_hash: str, run_id: str) -> None:
        """Make what the ledger knows of one asset partition's subjects what it now holds."""
        with self._tx() as conn:
            self._update_provenance(conn, asset, partition, rows_by_key, None, content_hash, run_id)

    def tombstoned_in(self, asset: str, partition: str) -> set[str]:
        """Tombstoned subjects the ledger still records in an asset partition: what an erasure there must remove."""
        p = t.provenance.c
        held = sa.select(t.erasure_requests.c.subject_key).where(t.erasure_requests.c.status == "on_hold")
        q = (sa.select(p.subject_key).join(t.tombstones, t.tombstones.c.subject_key == p.subject_key)
             .where(p.asset == asset, p.partition == partition, p.subject_key.not_in(held)))
        with self.engine.connect() as conn:
            return {r.subject_key for r in conn.execute(q)}

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
        with self._tx() as conn:
            for i in range(0, len(keys), 500):
                conn.execute(t.provenance.delete().where(t.provenance.c.subject_key.in_(keys[i : i + 500])))

    # ------------------------------------------------------------------ batches, actions, certificates
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
        with self._tx() as conn:
            conn.execute(t.batches.update().where(t.batches.c.batch_id == batch_id).values(status=status, run_id=run_id, finished_at=utcnow()))
            self._audit(conn, "batch_" + status, None, {"batch_id": batch_id, "run_id": run_id})

    def batch_requests(self, batch_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.erasure_requests).where(t.erasure_requests.c.batch_id == batch_id).order_by(t.erasure_requests.c.seq))
            return [self._request(r) for r in rows]

    def record_actions(self, request_id: str, actions: list[Mapping[str, Any]]) -> None:
        now = utcnow()
        with self._tx() as conn:
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

    def certificates(self) -> list[tuple[str, dict]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.certificates.c.request_id, t.certificates.c.body).order_by(t.certificates.c.issued_at))
            return [(r.request_id, json.loads(r.body)) for r in rows]

    def outbox(self, *, unsent_only: bool = True) -> list[dict]:
        q = sa.select(t.outbox).order_by(t.outbox.c.id)
        if unsent_only:
            q = q.where(t.outbox.c.sent_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

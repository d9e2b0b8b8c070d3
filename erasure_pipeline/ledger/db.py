"""The ledger's database: one engine, one way a write starts, one lock for the audit chain, migrations.

Pure Python + SQLAlchemy, any SQLAlchemy URL (SQLite file by default, Postgres in production). Every
write is one transaction (``Database.tx``); on SQLite they are ``BEGIN IMMEDIATE`` and on Postgres
the audit chain takes a transaction-scoped advisory lock (``Database.lock_chain``), so two processes
filing, claiming and logging at once never interleave a chain or claim one request twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from erasure_pipeline.core.errors import BlockingError, PipelineError
from erasure_pipeline.ledger import schema as t

AUDIT_LOCK = 0x45524153  # "ERAS"
CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 120
SQLITE_BUSY_TIMEOUT_S = 60


class LedgerError(PipelineError):
    """A ledger operation that cannot be done (unknown request, wrong state...)."""


class LedgerUnavailable(LedgerError, BlockingError):
    """The ledger's database cannot be reached, or did not answer in time: nothing was written."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def chunks(items: Iterable, size: int = CHUNK) -> Iterator[list]:
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def insert_many(conn: Connection, table: sa.Table, rows: list[dict], *, or_ignore: bool = False) -> int | None:
    """Insert ``rows`` (dicts with the same keys); the driver's count of rows inserted. ``or_ignore``: leave a row
    another writer stored first. On SQLite through the driver's executemany, each column's bind processor applied
    once per distinct value: SQLAlchemy's per-row parameter handling was four fifths of making 200 000 data keys
    and a quarter of recording a build's provenance (3.22 -> 2.36 s at 50 000 subjects). Postgres keeps
    SQLAlchemy's batched ``INSERT ... VALUES`` (one round trip per batch)."""
    if not rows:
        return 0
    if conn.dialect.name != "sqlite":
        from sqlalchemy.dialects.postgresql import insert

        return conn.execute(insert(table).on_conflict_do_nothing() if or_ignore else table.insert(), rows).rowcount
    names = list(rows[0])
    prep = conn.dialect.identifier_preparer
    sql = ("INSERT OR IGNORE INTO " if or_ignore else "INSERT INTO ") + prep.quote(table.name) + " (" + ", ".join(
        prep.quote(n) for n in names) + ") VALUES (" + ", ".join("?" for _ in names) + ")"
    return conn.exec_driver_sql(sql, _driver_rows(conn, table, names, rows)).rowcount


def _driver_rows(conn: Connection, table: sa.Table, names: list[str], rows: list[dict]) -> list[tuple]:
    """``rows`` as the driver's parameter tuples (``names`` in order), each column's bind processor applied: once per
    distinct value (a build's rows share one timestamp: processed once, not once a row); binary values are passed as
    the bytes they are. Column by column (200 000 provenance rows 0.25 -> 0.13 s, data keys 0.70 -> 0.12 s)."""
    columns = []
    for n in names:
        values = [r[n] for r in rows]
        process = table.c[n].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if process is not None:
            if isinstance(table.c[n].type, sa.LargeBinary):  # the driver takes bytes as they are
                values = [v if v is None or type(v) is bytes else process(v) for v in values]
            else:
                done = {v: process(v) for v in set(values) if v is not None}
                values = [None if v is None else done[v] for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True))


def update_many(conn: Connection, table: sa.Table, key: str, rows: list[dict]) -> None:
    """Set each row's other columns where ``key`` equals its ``key`` value (dicts with the same keys). On SQLite through
    the driver's executemany, as ``insert_many`` (SQLAlchemy's per-row parameter handling was most of rewrapping a
    key group's data keys); elsewhere SQLAlchemy's executemany."""
    if not rows:
        return
    names = [n for n in rows[0] if n != key]
    if conn.dialect.name != "sqlite":
        conn.execute(table.update().where(table.c[key] == sa.bindparam("_key")).values({n: sa.bindparam("_" + n) for n in names}),
                     [{"_key": r[key], **{"_" + n: r[n] for n in names}} for r in rows])
        return
    prep = conn.dialect.identifier_preparer
    sql = ("UPDATE " + prep.quote(table.name) + " SET " + ", ".join(prep.quote(n) + " = ?" for n in names)
           + " WHERE " + prep.quote(key) + " = ?")
    conn.exec_driver_sql(sql, _driver_rows(conn, table, [*names, key], rows))


def _one_scan(asked: int, size: int, count: Callable[[], int]) -> bool:
    """Whether ``asked`` keys are many against a table of ``count()`` rows (counted only when they are more than one
    ``IN`` list of ``size``): then one scan kept to those wanted costs less than the lists (a build asks the key store
    for every subject at once: 40 lists of 5 000 cost more in SQLAlchemy's parameter expansion than the scan)."""
    return asked > size and asked * 4 >= (count() or 0)


def rows_by_subject(conn: Connection, table: sa.Table, keys: list[str], size: int, *columns) -> list:
    """Rows of ``table`` (``columns``, its ``subject_key`` first) whose subject key is one of ``keys``: by
    ``IN`` lists of ``size`` when they are few against the table, else one scan kept to those wanted (``_one_scan``)."""
    if _one_scan(len(keys), size, lambda: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()):
        wanted = set(keys)
        return [r for r in conn.execute(sa.select(*columns)) if r[0] in wanted]
    return [r for part in chunks(keys, size) for r in conn.execute(sa.select(*columns).where(table.c.subject_key.in_(part)))]


def held_keys(conn: Connection, table: sa.Table, keys: list[str], size: int = 5000) -> set[str]:
    """Which of ``keys`` ``table`` holds (by its ``subject_key``). On SQLite through the driver's own cursor: ``IN``
    lists of ``size``, or one scan when the keys are many against the table (``_one_scan``). 200 000 keys in 16 calls
    took 1.8 s through SQLAlchemy, its parameter expansion and row-by-row fetch most of it."""
    if not keys:
        return set()
    if conn.dialect.name != "sqlite":
        return {r[0] for r in rows_by_subject(conn, table, keys, size, table.c.subject_key)}
    # Only the schema's table name, quoted by the dialect, is written into the SQL (as ``insert_many`` does); every
    # key is a bound parameter.
    name = conn.dialect.identifier_preparer.quote(table.name)
    cursor = conn.connection.driver_connection.cursor()  # fetchall: SQLAlchemy's row-by-row fetch cost twice the query
    try:
        if _one_scan(len(keys), size, lambda: cursor.execute(f"SELECT count(*) FROM {name}").fetchone()[0]):
            return set(keys).intersection(r[0] for r in cursor.execute(f"SELECT subject_key FROM {name}").fetchall())
        out: set[str] = set()
        for part in chunks(keys, size):
            out.update(r[0] for r in cursor.execute(f"SELECT subject_key FROM {name} WHERE subject_key IN ({', '.join('?' * len(part))})",
                                                    part).fetchall())
        return out
    finally:
        cursor.close()


@contextlib.contextmanager
def page_cache(conn: Connection, mib: int) -> Iterator[None]:
    """SQLite: this connection's page cache at ``mib`` MiB for the block, then as it was (SQLite lets go of the pages
    over it). For one transaction that writes all over a big index: 200 000 skeletons, in no order of their index,
    cost 2.4-2.9 s with 64 MiB against 4.0-4.8 s with SQLite's default 2 MiB, which spills pages to the log
    mid-transaction and writes them again at its commit. Other engines: nothing."""
    if conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size={-int(mib) * 1024}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(before)}")


def describe_url(url: str) -> str:
    """Where a ledger lives, for messages: host:port/database, or the SQLite file; never a password."""
    u = sa.engine.make_url(url)
    if u.drivername.startswith("sqlite"):
        return u.database or ":memory:"
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


def _sqlite_engine(url: str) -> Engine:
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

    return engine


def make_engine(url: str) -> Engine:
    """An engine whose every wait is bounded, and whose connection failures read as one line:
    ``LedgerUnavailable("ledger unavailable: host:port/db (...), retry later")``."""
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url)
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


def _rebuild_provenance(conn: Connection, schema: str | None) -> None:
    """Versions 10 and 12: the provenance table rebuilt as ``schema.provenance`` is now (keyed partition first since
    10; its columns of each row's version, run and time dropped at 12), each subject's skeleton
    (kept on its raw rows until 10, where a ledger of version 4 or later has them) moved to ``subject_skeletons``.
    The old table is copied aside, dropped (SQLite's ``secure_delete`` overwrites its pages) and copied back."""
    old = sa.Table("provenance", sa.MetaData(), schema=schema, autoload_with=conn)
    aside = sa.Table("provenance_old", sa.MetaData(), *[sa.Column(c.name, c.type) for c in old.columns], schema=schema)
    aside.create(conn)
    conn.execute(aside.insert().from_select(list(old.c.keys()), sa.select(*old.columns)))
    old.drop(conn)
    t.provenance.create(conn)
    names = [c.name for c in t.provenance.columns]
    conn.execute(t.provenance.insert().from_select(names, sa.select(*[aside.c[n] for n in names])))
    if "skeleton_key" in aside.c:
        conn.execute(t.subject_skeletons.insert().from_select(
            ["subject_key", "skeleton_key"],
            sa.select(aside.c.subject_key, sa.func.min(aside.c.skeleton_key)).where(aside.c.skeleton_key.is_not(None))
            .group_by(aside.c.subject_key)))
    aside.drop(conn)


class Database:
    """The engine every ledger store shares (on Postgres, in its own schema)."""

    def __init__(self, url: str, schema: str = "erasure_ledger"):
        self.url = url
        base = make_engine(url)
        self.dialect = base.dialect.name
        self.schema = schema if self.dialect == "postgresql" else None
        self.engine = base.execution_options(schema_translate_map={None: self.schema}) if self.schema else base
        self._base_engine = base

    def tx(self):
        """The one way a write starts: a transaction (BEGIN IMMEDIATE on SQLite).

        Every write of every ledger store goes through here, so a test can fail or kill the process at the
        n-th write (``erasure_pipeline_tests/crash.py``) and show that any crash point is recoverable.
        """
        return self.engine.begin()

    def connect(self):
        return self.engine.connect()

    def checkpoint(self, *, truncate: bool = False) -> None:
        """SQLite: copy the write-ahead log into the database file, outside any transaction. ``truncate``: wait for
        writers and readers and empty the log file (deleted rows' bytes leave it); else take what no reader holds,
        without waiting. Other engines: nothing to do."""
        if self.dialect != "sqlite":
            return
        raw = self.engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)" if truncate else "PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            raw.close()

    def lock_chain(self, conn: Connection) -> None:
        """Serialise this transaction with every other writer of the chain (SQLite: BEGIN IMMEDIATE does)."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})

    def migrate(self) -> int:
        """Create or upgrade the ledger's tables; safe to call at every start."""
        with self._base_engine.begin() as conn:
            if self.schema:
                conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
        rebuilt = False
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK + 1})
            t.metadata.create_all(conn)  # new tables (and their indexes); migrations only add
            current = conn.execute(sa.select(sa.func.max(t.schema_version.c.version))).scalar()
            if current is not None and current < 2:
                for index in t.erasure_requests.indexes:  # create_all skips indexes of existing tables
                    index.create(conn, checkfirst=True)
            if current is not None:
                for version, columns in t.ADDED_COLUMNS.items():
                    if current < version:
                        _add_columns(conn, columns, self.schema)
                for version, names in t.ADDED_INDEXES.items():  # create_all skips indexes of tables that exist
                    if current < version:
                        for index in (i for table in t.metadata.tables.values() for i in table.indexes if i.name in names):
                            index.create(conn, checkfirst=True)
                for version, indexes in t.RECREATED_INDEXES.items():
                    if current < version:
                        for index in indexes:
                            index.drop(conn, checkfirst=True)
                            index.create(conn)
                if current < 12:
                    _rebuild_provenance(conn, self.schema)
                    rebuilt = True
            if current is None or current < t.CURRENT_VERSION:
                conn.execute(t.schema_version.insert().values(version=t.CURRENT_VERSION, applied_at=utcnow()))
                current = t.CURRENT_VERSION
        if rebuilt:
            self.compact()
        return int(current)

    def compact(self) -> None:
        """SQLite, after a migration rebuilt a large table: its write-ahead log emptied into the file and the file
        rewritten without the old table's freed pages. Left alone, the next runs read through and then checkpoint a
        log of the whole rebuild (312 MiB for a 200 000-subject ledger; erasures 1.03 x and 100-subject batches 1.07 x
        slower in two pairs) and the file keeps the freed half (429 MiB -> 170 MiB). Best effort: a database that another
        process keeps busy stays as it is, its log emptied by later checkpoints and its free pages reused."""
        if self.dialect != "sqlite":
            return  # Postgres returns a dropped table's files at once
        self.checkpoint(truncate=True)
        raw = self.engine.raw_connection()
        try:
            raw.cursor().execute("VACUUM")
        except sqlite3.OperationalError as exc:  # busy or locked: nothing was changed
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        finally:
            raw.close()
        self.checkpoint(truncate=True)

    def dispose(self) -> None:
        self._base_engine.dispose()

"""Dagster's SQLite storages with their connections kept open: the embedded default's instance storage.

Dagster's SQLite run, event log and schedule storages make a new SQLAlchemy engine for every query and close its
one connection after it (``NullPool``). Closing the last connection to a WAL database checkpoints it and deletes
its ``-wal`` file, and a new engine compiles every statement again: an event costs 2–4 such connections. On the
demo at 200 000 subjects one subject's erasure run took 1.60 and 1.79 s with Dagster's classes, 1.29 and 1.15 s
with these (medians of 7 erasures each, copies of one home; docs/ORCHESTRATION.md "The instance's SQLite
connections").

These subclasses keep one engine per database, with a small pool of open connections; nothing else changes (the
same files, schema and migrations, so a home can switch either way). What Dagster's close gave for free is kept:

- **Live run logs in the UI.** The webserver follows a running run by watching its ``<run_id>.db`` file for writes
  (``SqliteEventLogStorageWatchdog``); a write that stays in the ``-wal`` file would not wake it. So a transaction
  that wrote to a run's database ends with a passive checkpoint, which copies it into the watched file.
- **Forks.** A process forked from one holding open connections (the crash tests fork a run) drops its copies
  without closing them (``Engine.dispose(close=False)``): an SQLite connection must not cross a fork.
- **Bounded handles.** Engines of runs' databases are kept for the last ``RUN_ENGINES`` runs touched (a
  webserver reads many); an engine let go closes its connections, which checkpoints as before.

The project's ``instance.yaml`` names them, with ``dagster_home: {env: DAGSTER_HOME}``; an instance whose
``dagster.yaml`` does not keeps Dagster's classes.

``dagster-postgres`` keeps one engine per storage (statements compiled once) but opens a connection per query
(``NullPool``) outside the webserver: a TCP connection and its authentication each time. ``PooledPostgres*`` keep
one open per storage (checked before use, ``pool_pre_ping``: a server restarted meanwhile costs a reconnect, not
a failed query), and ``deploy/dagster.yaml`` names them: one subject's erasure run on a Postgres instance 2.15 and
2.30 s with dagster-postgres's classes, 1.41 and 1.38 s with these (medians of 7, copies of one 200 000-subject
home, the database emptied between; 1.14 and 1.18 s with the connection kept but not checked: the check is a
round trip per query, kept for the restart it survives). Each process of a deployment holds up to three idle
connections (run, event log, schedule storage): count them in the server's ``max_connections``.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import StringSource
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config
from sqlalchemy.engine import Connection, Engine

RUN_ENGINES = 8
"""Engines of runs' event databases kept open in one process (the index's is always kept)."""

_POOL = {"pool_size": 1, "max_overflow": -1}
"""One connection kept per database. The event log serialises its queries under its lock; a run or schedule
storage may be used by many threads at once (the webserver's): each one past the first opens a connection of its
own and closes it after, as Dagster's classes always do, rather than waiting for the kept one."""

_OPEN: weakref.WeakSet = weakref.WeakSet()


def _forget_after_fork() -> None:
    for storage in list(_OPEN):
        storage._forget_connections()


os.register_at_fork(after_in_child=_forget_after_fork)


INSTANCE_CONFIG = {"dagster_home": StringSource}
"""Each SQLite storage's config: the instance's home, under which it keeps Dagster's own layout."""


class _KeptEngine:
    """A storage with one database (``<dagster_home>/<DIRECTORY…>``) and one engine for it, made on first use."""

    DIRECTORY: tuple[str, ...] = ()
    _engine: Engine | None = None

    def __init__(self, conn_string: str, inst_data=None):
        self._engine_lock = threading.Lock()
        super().__init__(conn_string, inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return INSTANCE_CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls.from_local(os.path.join(config_value["dagster_home"], *cls.DIRECTORY), inst_data=inst_data)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self._engine_lock:
            if self._engine is None:
                self._engine = create_engine(self._conn_string, **_POOL)
                _OPEN.add(self)
            engine = self._engine
        with engine.connect() as conn, conn.begin():
            yield conn

    def _forget_connections(self) -> None:
        if self._engine is not None:
            self._engine.dispose(close=False)

    def dispose(self) -> None:
        super().dispose()
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


class PooledSqliteRunStorage(_KeptEngine, SqliteRunStorage):
    """Dagster's ``SqliteRunStorage`` (``<dagster_home>/history/runs.db``) with its connections kept open."""

    DIRECTORY = ("history", "")


class PooledSqliteScheduleStorage(_KeptEngine, SqliteScheduleStorage):
    """Dagster's ``SqliteScheduleStorage`` (``<dagster_home>/schedules/schedules.db``) with its connections kept open."""

    DIRECTORY = ("schedules",)


class _TablesSeen:
    """``has_table`` asked of the database once per table that exists, then answered from memory (Dagster asks it of
    every asset check event, ``supports_asset_checks``: the SQLite class with an engine made for the question). A
    table not there yet is asked again (a migration may add it); ``wipe`` forgets them all."""

    def has_table(self, table_name: str) -> bool:
        seen = self.__dict__.setdefault("_tables_seen", set())
        if table_name in seen:
            return True
        found = super().has_table(table_name)
        if found:
            seen.add(table_name)
        return found

    def wipe(self) -> None:
        self.__dict__.pop("_tables_seen", None)
        super().wipe()


class PooledSqliteEventLogStorage(_TablesSeen, SqliteEventLogStorage):
    """Dagster's ``SqliteEventLogStorage`` (``<dagster_home>/history/runs/``: ``index.db`` and one database per
    run) with its connections kept open, the index's always and the last ``RUN_ENGINES`` runs'."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: collections.OrderedDict[str, Engine] = collections.OrderedDict()
        super().__init__(base_dir, inst_data)
        _OPEN.add(self)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return INSTANCE_CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledSqliteEventLogStorage:
        return cls(os.path.join(config_value["dagster_home"], "history", "runs", ""), inst_data=inst_data)

    def _engine_for(self, shard: str) -> Engine:
        """The shard's engine, most recently used last; the oldest run's let go past ``RUN_ENGINES``."""
        engine = self._engines.get(shard)
        if engine is None:
            engine = self._engines[shard] = create_engine(
                self.conn_string_for_shard(shard), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}, **_POOL)
        self._engines.move_to_end(shard)
        runs = [s for s in self._engines if s != INDEX_SHARD_NAME]
        for old in runs[:max(0, len(runs) - RUN_ENGINES)]:
            self._engines.pop(old).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine_for(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                changes = raw.total_changes
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME and raw.total_changes != changes:
                    # into the watched <run_id>.db, as closing Dagster's one connection did: the UI's live log wakes
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _forget_connections(self) -> None:
        for engine in self._engines.values():
            engine.dispose(close=False)

    def _let_go(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._let_go()  # before Dagster deletes the runs' files under open connections
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._let_go()


class _KeptPostgres:
    """A dagster-postgres storage whose engine keeps one connection open instead of one per query; the same config
    and tables."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._engine.dispose()
        self._engine = create_pg_engine(self.postgres_url, self._token_provider, isolation_level="AUTOCOMMIT",
                                        pool_pre_ping=True, **_POOL)
        _OPEN.add(self)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   token_provider=get_token_provider_from_config(config_value))

    def _forget_connections(self) -> None:
        self._engine.dispose(close=False)

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()


class PooledPostgresRunStorage(_KeptPostgres, PostgresRunStorage):
    """dagster-postgres's ``PostgresRunStorage`` with one connection kept open."""


class PooledPostgresEventLogStorage(_TablesSeen, _KeptPostgres, PostgresEventLogStorage):
    """dagster-postgres's ``PostgresEventLogStorage`` with one connection kept open."""


class PooledPostgresScheduleStorage(_KeptPostgres, PostgresScheduleStorage):
    """dagster-postgres's ``PostgresScheduleStorage`` with one connection kept open."""

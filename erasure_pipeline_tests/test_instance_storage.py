"""The embedded default's instance storage: Dagster's SQLite storages with their connections kept open.

What Dagster's own classes give by closing every connection must still hold: a second process (the webserver)
following a run's log live, forked processes, deletion of a run's files, and Dagster's files and layout."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from erasure_pipeline.app.runner import INSTANCE_TEMPLATE
from erasure_pipeline.defs import instance_storage
from erasure_pipeline.defs.instance_storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
    PooledSqliteEventLogStorage,
    PooledSqliteRunStorage,
    PooledSqliteScheduleStorage,
)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A Dagster home with the project's instance file, as the CLI writes it."""
    root = tmp_path / "dagster"
    root.mkdir()
    (root / "dagster.yaml").write_text(INSTANCE_TEMPLATE.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(root))
    return root


REPO = Path(__file__).resolve().parents[1]


def _event(instance: dg.DagsterInstance, run_id: str, text: str) -> None:
    instance.report_engine_event(text, job_name="storage_test", run_id=run_id, engine_event_data=EngineEventData())


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [r.event_log_entry.message for r in instance.get_records_for_run(run_id).records]


def test_the_project_instance_uses_the_kept_connection_storages_in_dagsters_own_files(home):
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_storage, PooledSqliteRunStorage)
    assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
    assert isinstance(instance.schedule_storage, PooledSqliteScheduleStorage)
    _event(instance, "a" * 32, "one")
    for path in ("history/runs.db", "history/runs/index.db", f"history/runs/{'a' * 32}.db", "schedules/schedules.db"):
        assert (home / path).exists(), path  # where Dagster's SqliteStorage keeps them: a home can switch back
    # Dagster's own classes read what these wrote
    plain = dg.DagsterInstance.from_config(str(home), config_filename="absent.yaml")
    assert type(plain.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert _messages(plain, "a" * 32) == ["one"]


def test_a_run_written_over_kept_connections_wakes_another_instance_watching_its_log(home):
    """The UI follows a running run by watching its ``<run_id>.db`` file: writes must reach it, not stay in the WAL."""
    writer, watcher = dg.DagsterInstance.get(), dg.DagsterInstance.get()  # two storages, as two processes have
    assert writer.event_log_storage is not watcher.event_log_storage
    run_id = "b" * 32
    _event(writer, run_id, "started")
    seen, woke = [], threading.Event()

    def on_event(entry, _cursor):
        seen.append(entry.message)
        if entry.message == "third":
            woke.set()

    watcher.watch_event_logs(run_id, None, on_event)
    try:
        time.sleep(0.5)  # the observer thread is watching
        for text in ("first", "second", "third"):
            _event(writer, run_id, text)
        assert woke.wait(20), f"the watcher saw only {seen}"
    finally:
        watcher.end_watch_event_logs(run_id, on_event)
        watcher.dispose()
    assert seen[-3:] == ["first", "second", "third"]


def _write_in_child(run_id: str) -> None:
    instance = dg.DagsterInstance.get()
    _event(instance, run_id, "child")


def test_a_process_forked_from_one_holding_connections_writes_and_the_parent_goes_on(home):
    instance = dg.DagsterInstance.get()
    run_id = "c" * 32
    _event(instance, run_id, "before")
    assert instance.get_runs() == []  # the run storage's connection is open too
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(run_id,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    _event(instance, run_id, "after")
    assert _messages(instance, run_id) == ["before", "child", "after"]
    assert _messages(dg.DagsterInstance.get(), run_id) == ["before", "child", "after"]


def _open_run_databases(events_dir: Path) -> int:
    fds = Path("/proc/self/fd")
    targets = [Path(os.path.realpath(fds / fd)) for fd in os.listdir(fds)]
    return sum(1 for t in targets if t.parent == events_dir.resolve() and t.suffix == ".db" and t.name != "index.db")


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files through /proc")
def test_a_process_keeps_a_bounded_number_of_runs_databases_open_and_wipe_lets_them_go(home):
    instance = dg.DagsterInstance.get()
    runs = [f"{i:032d}" for i in range(instance_storage.RUN_ENGINES + 5)]
    for run_id in runs:
        _event(instance, run_id, run_id[-2:])
    assert 0 < _open_run_databases(home / "history" / "runs") <= instance_storage.RUN_ENGINES
    assert _messages(instance, runs[0]) == [runs[0][-2:]]  # a run let go opens again
    instance.event_log_storage.wipe()  # deletes the runs' files: nothing may write to the deleted ones
    assert _open_run_databases(home / "history" / "runs") == 0
    _event(instance, runs[1], "again")
    assert _messages(instance, runs[1]) == ["again"]
    assert (home / "history" / "runs" / f"{runs[1]}.db").exists()


def test_a_table_that_exists_is_asked_of_the_database_once(home, monkeypatch):
    """Dagster asks ``has_table`` of every asset check event it stores; once a table is there the answer is kept."""
    storage = dg.DagsterInstance.get().event_log_storage
    asked: list[str] = []
    real = SqliteEventLogStorage.has_table
    monkeypatch.setattr(SqliteEventLogStorage, "has_table", lambda self, name: asked.append(name) or real(self, name))
    assert storage.supports_asset_checks and storage.supports_asset_checks
    assert asked == ["asset_check_executions"]
    assert not storage.has_table("no_such_table") and not storage.has_table("no_such_table")
    assert asked.count("no_such_table") == 2  # not there yet: asked again (a migration may add it)
    storage.wipe()
    assert storage.supports_asset_checks and asked.count("asset_check_executions") == 2


def test_many_threads_hold_run_storage_connections_at_once_as_with_dagsters_classes(home):
    """The webserver's threads query the run storage at once: none waits for another's connection to come back."""
    storage = dg.DagsterInstance.get().run_storage
    inside, release = threading.Semaphore(0), threading.Event()

    def hold():
        with storage.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM runs").fetchall()
            inside.release()
            release.wait(30)

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert all(inside.acquire(timeout=10) for _ in threads), "a thread waited for another's connection"
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert dg.DagsterInstance.get().get_runs() == []  # and the storage still answers after


def test_the_deploy_instance_keeps_a_postgres_connection_and_replaces_one_the_server_closed(pg_database, tmp_path, monkeypatch):
    """deploy/dagster.yaml: one connection kept per storage; the server ending it (a restart, an idle timeout) costs
    a reconnect on the next query, not a failed query. A process forked from it writes with connections of its own."""
    import sqlalchemy as sa

    root = tmp_path / "dagster"
    root.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", root / "dagster.yaml")
    for name, value in (("DAGSTER_HOME", str(root)), ("DAGSTER_PG_URL", pg_database), ("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "logs"))):
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_storage, PooledPostgresRunStorage)
    assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PooledPostgresScheduleStorage)
    run_id = "d" * 32
    _event(instance, run_id, "before")
    assert instance.get_runs() == []
    admin = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        kept = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND pid <> pg_backend_pid()")).scalar()
        assert 1 <= kept <= 3  # the storages' kept connections, idle
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND pid <> pg_backend_pid()"))
    admin.dispose()
    _event(instance, run_id, "after")
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(run_id,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    _event(instance, run_id, "last")
    assert _messages(instance, run_id) == ["before", "after", "child", "last"]
    assert instance.get_runs() == []

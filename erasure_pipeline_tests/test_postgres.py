"""The production Postgres paths against a real server: the ledger in its own schema, two
processes filing and claiming at once, and the demo plus an erasure on dagster-postgres storage.

These need the PostgreSQL at 127.0.0.1:5432 (or ``ERASURE_PIPELINE_TEST_PG_URL``); they skip
with instructions where there is none, and fail in CI (``ERASURE_PIPELINE_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from erasure_pipeline.ledger import Ledger
from erasure_pipeline.ledger import schema as t
from erasure_pipeline_tests.conftest import build_demo, instance, project_env
from erasure_pipeline_tests.erasure_helpers import actions_keep_their_order

REPO = Path(__file__).resolve().parents[1]
SUBJECTS_PER_WORKER = 40
SHARED_SUBJECTS = 15  # both workers file for these: exactly one request each must exist


def _worker(url: str, worker: int, barrier, out) -> None:
    """File requests (some for subjects the other worker files too), then claim whatever is pending."""
    book = Ledger(url)
    book.migrate()
    barrier.wait()
    filed = []
    for i in range(SUBJECTS_PER_WORKER):
        subject = f"shared-{i}" if i < SHARED_SUBJECTS else f"w{worker}-{i}"
        key = subject.encode().hex().ljust(64, "0")[:64]
        rid, _ = book.requests.file(key, i % 4, due_days=30)
        filed.append(rid)
        pending = [r["request_id"] for r in book.requests.list(status=["pending"])]
        _claim(book, f"eb-w{worker}-{i}", pending, worker)
    won = _claim(book, f"eb-w{worker}-final", [r["request_id"] for r in book.requests.list(status=["pending"])], worker)
    book.dispose()
    out.put((worker, filed, list(won.request_ids)))


def _claim(book: Ledger, batch: str, rids: list[str], worker: int):
    """Both workers' runs are alive: neither may take what the other claimed."""
    return book.runs.claim_erasure(batch, rids, f"run-w{worker}", is_live=lambda _run, _rec: True, host="h", pid=worker)


def _run_two_workers(url: str) -> list[tuple[int, list[str], list[str]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, w, barrier, out)) for w in (0, 1)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _assert_no_double_no_loss(book: Ledger, results) -> None:
    expected_subjects = SHARED_SUBJECTS + 2 * (SUBJECTS_PER_WORKER - SHARED_SUBJECTS)
    requests = book.requests.list()
    assert len(requests) == expected_subjects  # one request per subject: none duplicated, none lost
    assert len({r["subject_key"] for r in requests}) == expected_subjects
    filed = {rid for _, rids, _ in results for rid in rids}
    assert filed == {r["request_id"] for r in requests}  # every id handed out is a real request
    assert all(r["status"] == "in_progress" and r["batch_id"] and r["run_id"] in ("run-w0", "run-w1") for r in requests)
    claimed = [e["request_id"] for e in book.audit.entries() if e["event"] == "in_progress"]
    assert sorted(claimed) == sorted(r["request_id"] for r in requests)  # each claimed exactly once
    assert book.audit.verify_chain() == (True, None)
    assert len(book.tombstones.active()) == expected_subjects


def test_ledger_lives_in_its_own_schema_and_migrates_itself(pg_database):
    book = Ledger(pg_database)
    assert book.migrate() == t.CURRENT_VERSION
    assert book.migrate() == t.CURRENT_VERSION  # idempotent at every start
    insp = sa.inspect(book.db._base_engine)
    assert "erasure_ledger" in insp.get_schema_names()
    assert {"erasure_requests", "tombstones", "provenance", "audit_log", "certificates"} <= set(insp.get_table_names(schema="erasure_ledger"))
    assert not {"erasure_requests", "audit_log"} & set(insp.get_table_names(schema="public"))
    rid, created = book.requests.file("c" * 64, 2, due_days=30)
    assert created and _claim(book, "eb-1", [rid], 1).request_ids == (rid,)
    actions_keep_their_order(book, rid)
    book.certificates.complete(rid, {"request_id": rid})
    assert book.requests.get(rid)["status"] == "completed" and book.audit.verify_chain() == (True, None)
    book.dispose()


def test_two_processes_filing_and_claiming_on_postgres(pg_database):
    Ledger(pg_database).migrate()
    results = _run_two_workers(pg_database)
    _assert_no_double_no_loss(Ledger(pg_database), results)


def test_two_processes_filing_and_claiming_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger(url).migrate()
    results = _run_two_workers(url)
    _assert_no_double_no_loss(Ledger(url), results)


def _cli(*args):
    from erasure_pipeline.app.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_demo_and_erasure_on_dagster_postgres_with_the_ledger_on_postgres(pg_database, tmp_path):
    from erasure_pipeline.defs.instance_storage import (
        PooledPostgresEventLogStorage,
        PooledPostgresRunStorage,
        PooledPostgresScheduleStorage,
    )
    from erasure_pipeline_tests.erasure_helpers import pick_subjects, scan_for
    from erasure_pipeline_tests.stores import default_ledger

    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {
        "DAGSTER_PG_URL": pg_database,
        "DAGSTER_COMPUTE_LOG_DIR": str(home / "compute_logs"),
        "ERASURE_PIPELINE_LEDGER_URL": pg_database,
    }
    with project_env(home, **env):
        with instance() as inst:
            assert isinstance(inst.run_storage, PooledPostgresRunStorage)
            assert isinstance(inst.event_log_storage, PooledPostgresEventLogStorage)
            assert isinstance(inst.schedule_storage, PooledPostgresScheduleStorage)
            assert type(inst.run_coordinator).__name__ == "QueuedRunCoordinator"
        build_demo(home, n_subjects=200)
        assert default_ledger().dialect == "postgresql"
        (sid, _shard), = pick_subjects(4, with_tickets=1)
        rid = _cli("erase", sid, "--reason", "asked by email").stdout.strip()
        assert _cli("process").exit_code == 0
        assert default_ledger().requests.get(rid)["status"] == "completed"
        assert _cli("verify", rid).exit_code == 0
        assert json.loads(_cli("certificate", rid, "--json").stdout)["request_id"] == rid
        with instance() as inst:
            assert [r.job_name for r in inst.get_runs()] == ["erasure_job", "ingest_job"]  # one run each
        # Nothing in the database (Dagster's runs, events, ledger) nor the home holds the raw id.
        dump = subprocess.run(
            ["pg_dump", "--data-only", sa.engine.make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)],
            capture_output=True, check=True,
        ).stdout
        assert b"erasure_requests" in dump or b"erasure_ledger" in dump
        assert sid.encode() not in dump
        assert scan_for(home, [sid]) == []


def test_a_version_2_ledger_is_migrated_in_place_on_postgres(pg_database):
    """Columns added since version 2 are added in the ledger's own schema, rows kept."""
    import datetime as dt

    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA erasure_ledger"))
        for name in ("erasure_requests", "landing_batches"):
            table = t.metadata.tables[name]
            keep = [c.copy() for c in table.columns if c.name not in ("run_id", "status") or name == "erasure_requests" and c.name == "status"]
            sa.Table(name, sa.MetaData(schema="erasure_ledger"), *keep).create(conn)
        conn.execute(sa.text("INSERT INTO erasure_ledger.landing_batches (batch_id, kind, shards, as_of, created_at) "
                             "VALUES ('lb-1', 'cycle', '[]', now(), now())"))
        sa.Table("ledger_schema_version", sa.MetaData(schema="erasure_ledger"),
                 *[c.copy() for c in t.schema_version.columns]).create(conn)
        conn.execute(sa.text("INSERT INTO erasure_ledger.ledger_schema_version VALUES (2, :at)"), {"at": dt.datetime.now(dt.UTC)})
    engine.dispose()
    book = Ledger(pg_database)
    assert book.migrate() == t.CURRENT_VERSION
    (batch,) = book.runs.landing_batches()
    assert batch["status"] == "done"
    rid, _ = book.requests.file("d" * 64, 1, due_days=30)
    assert _claim(book, "eb-1", [rid], 0).outcome == "claimed"
    book.dispose()


@pytest.mark.parametrize("version", [3, 9, 11])
def test_an_old_ledger_is_migrated_to_the_current_version_in_its_schema_on_postgres(pg_database, version):
    from erasure_pipeline_tests.test_ledger import KEY_A, KEY_B, SKELETON, make_old_ledger, provenance_key

    make_old_ledger(pg_database, version, schema="erasure_ledger")
    book = Ledger(pg_database)
    assert book.migrate() == t.CURRENT_VERSION == 12
    insp = sa.inspect(book.db._base_engine)
    assert {"skeleton_key", "blocked_by", "review", "footprint"} <= {c["name"] for c in insp.get_columns("erasure_requests", schema="erasure_ledger")}
    assert provenance_key(book, "erasure_ledger") == ["partition", "subject_key", "asset"]
    assert "ix_data_keys_grp" in {i["name"] for i in insp.get_indexes("data_keys", schema="erasure_ledger")}
    assert {"policy_snapshots", "subject_skeletons", "shard_leases"} <= set(insp.get_table_names(schema="erasure_ledger"))
    assert [r["rows"] for r in book.nodes.provenance_for([KEY_A, KEY_B])] == [1, 1]
    assert book.nodes.look_alikes(SKELETON, KEY_B) == ({KEY_A} if version >= 4 else set())
    assert {"notices", "sealed_ids", "drp_tokens", "drp_requests"} <= set(insp.get_table_names(schema="erasure_ledger"))
    # The live-subject index was re-created so that a revoked request is not live: the subject can file again.
    rid, _ = book.requests.file("c" * 64, 0, due_days=30)
    book.requests.revoke(rid, None)
    again, created = book.requests.file("c" * 64, 0, due_days=30)
    assert created and again != rid
    book.dispose()

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from erasure_pipeline.ledger import Ledger, LedgerError, utcnow
from erasure_pipeline.ledger import schema as t

KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture
def book(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assert ledger.migrate() == t.CURRENT_VERSION
    assert ledger.migrate() == t.CURRENT_VERSION  # idempotent
    return ledger


def test_intake_writes_tombstone_then_request_and_dedupes_live_requests(book):
    rid, created = book.requests.file(KEY_A, 3, due_days=30, reason="asked by email")
    assert created and rid.startswith("er-")
    again, created2 = book.requests.file(KEY_A, 3, due_days=30)
    assert (again, created2) == (rid, False)
    req = book.requests.get(rid)
    assert req["status"] == "pending" and req["due_at"] - req["received_at"] == dt.timedelta(days=30)
    events = [e["event"] for e in book.audit.entries()]
    assert events[:3] == ["tombstone", "received", "pending"]
    assert book.tombstones.active() == {KEY_A} and book.tombstones.active(3) == {KEY_A} and book.tombstones.active(2) == set()


def test_lifecycle_hold_release_extend_once(book):
    rid, _ = book.requests.file(KEY_A, 0, due_days=30)
    with pytest.raises(LedgerError, match="needs a reason"):
        book.requests.hold(rid, " ")
    book.requests.hold(rid, "Art.17(3)(e) legal claim pending")
    assert book.requests.get(rid)["status"] == "on_hold"
    assert book.tombstones.active() == set()  # held data must be kept, not filtered away
    book.requests.release(rid)
    assert book.requests.get(rid)["status"] == "pending" and book.tombstones.active() == {KEY_A}
    due = book.requests.get(rid)["due_at"]
    assert book.requests.extend(rid, "complex request", days=60) == due + dt.timedelta(days=60)
    with pytest.raises(LedgerError, match="already extended"):
        book.requests.extend(rid, "again", days=60)
    with pytest.raises(LedgerError, match="cannot move"):
        book.requests.release(rid)
    with pytest.raises(LedgerError, match="no erasure request"):
        book.requests.get("er-missing")


ALIVE = {"run-1"}


def live(run_id, _record=None):
    return run_id in ALIVE


def claim(book, batch, rids, run_id):
    return book.runs.claim_erasure(batch, rids, run_id, is_live=live, host="h", pid=1)


def test_claims_are_exclusive_and_completion_writes_certificate_and_notices(book):
    rid, _ = book.requests.file(KEY_A, 0, due_days=30)
    assert claim(book, "eb-1", [rid], "run-1").request_ids == (rid,)
    busy = claim(book, "eb-1", [rid], "run-2")
    assert (busy.outcome, busy.holder) == ("busy", "run-1")  # a live run holds the batch
    assert claim(book, "eb-2", [rid], "run-2").request_ids == ()  # ... and its requests
    assert claim(book, "eb-1", [rid], "run-1").request_ids == (rid,)  # the holder again (a retried step): reentrant
    req = book.requests.get(rid)
    assert req["status"] == "in_progress" and req["run_id"] == "run-1" and req["attempts"] == 1
    with book.db.tx() as conn:
        book.notices.seal(conn, [(rid, "crm", "c2VhbGVk"), (rid, "search", "c2VhbGVk")])
    notice = {"notice_id": "n-1", "request_id": rid, "recipient": "crm", "kind": "erasure", "endpoint": "https://crm.example.com/e",
              "body": '{"subject":{"sealed_id":"c2VhbGVk"}}', "body_sha256": "0" * 64, "signature": "ab"}
    book.certificates.complete(rid, {"request_id": rid, "anonymised_data_subject": KEY_A}, [notice])
    book.runs.finish_batch("eb-1", "certified", "run-1")
    assert claim(book, "eb-1", [rid], "run-3").outcome == "done"
    assert book.requests.get(rid)["status"] == "completed"
    body, digest = book.certificates.get(rid)
    assert body["request_id"] == rid and len(digest) == 64
    (queued,) = book.notices.for_request(rid)
    assert queued["status"] == "pending" and queued["attempts"] == 0
    assert book.notices.sealed(rid) == {"crm": "c2VhbGVk"}  # the id sealed to a recipient no notice goes to is destroyed
    (leased,) = book.notices.lease_due(utcnow(), dt.timedelta(seconds=30))
    assert leased["attempts"] == 1 and book.notices.lease_due(utcnow(), dt.timedelta(seconds=30)) == []  # leased: not taken twice
    assert book.notices.settle(leased, "confirmed", at=utcnow()) and not book.notices.settle(leased, "confirmed", at=utcnow())
    assert book.notices.sealed(rid) == {} and "c2VhbGVk" not in book.notices.for_request(rid)[0]["body"]
    # a new request for the same subject after completion is a new request
    rid2, created = book.requests.file(KEY_A, 0, due_days=30)
    assert created and rid2 != rid


def test_requests_of_a_dead_run_are_resumed_with_an_audit_row(book):
    rid, _ = book.requests.file(KEY_A, 0, due_days=30)
    claim(book, "eb-1", [rid], "run-dead")  # claimed, then the run's process died
    won = claim(book, "eb-2", [rid], "run-1")
    assert won.request_ids == (rid,) and won.resumed == (rid,)
    req = book.requests.get(rid)
    assert req["run_id"] == "run-1" and req["attempts"] == 2 and req["batch_id"] == "eb-2"
    assert [e["event"] for e in book.audit.entries(rid)][-2:] == ["resumed", "in_progress"]
    assert json.loads(book.audit.entries(rid)[-2]["detail"])["from_run"] == "run-dead"
    assert book.runs.fail_run("run-1", "boom") == [rid]
    assert book.requests.get(rid)["status"] == "failed" and book.runs.job_run("run-1")["outcome"] == "failed"
    assert book.runs.fail_run("run-1", "boom") == []  # safe to call twice
    assert book.audit.verify_chain() == (True, None)


def test_batch_claim_over_many_chunks_keeps_order_and_one_audit_row_per_request(book):
    """Claims move up to 500 ids per statement; the chain stays valid and in input order."""
    rids = [r for r, _ in book.requests.file_many([(f"{i:064x}", i % 16) for i in range(1203)], due_days=30)]
    book.requests.hold(rids[7], "legal hold")  # not pending: not claimable
    first = claim(book, "eb-1", rids[:600] + rids[:3], "run-1").request_ids  # duplicates count once
    assert list(first) == [r for r in rids[:600] if r != rids[7]]
    assert list(claim(book, "eb-2", rids, "run-2").request_ids) == rids[600:]  # run-1 is alive: its requests stay
    book.runs.fail_run("run-1", "boom")
    statuses = {r["request_id"]: r["status"] for r in book.requests.list()}
    assert [statuses[r] for r in rids[:10]] == ["failed"] * 7 + ["on_hold", "failed", "failed"]
    claimed = [e["request_id"] for e in book.audit.entries() if e["event"] == "in_progress"]
    assert claimed == list(first) + rids[600:]
    assert book.audit.verify_chain() == (True, None)


def test_bulk_intake_is_one_transaction_per_chunk(book, monkeypatch):
    calls = []
    original = book.db.tx
    monkeypatch.setattr(book.db, "tx", lambda: calls.append(1) or original())
    results = book.requests.file_many([(f"{i:064x}", 0) for i in range(1200)], due_days=30)
    assert len(calls) == 3 and all(created for _, created in results)
    assert len(book.tombstones.active()) == 1200 and book.audit.verify_chain() == (True, None)


def test_a_version_2_ledger_is_migrated_in_place(tmp_path):
    """Ledgers written before runs claimed their own work get the new columns, and keep their rows."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name in ("erasure_requests", "landing_batches"):
            table = t.metadata.tables[name]
            old = sa.Table(name, sa.MetaData(), *[c.copy() for c in table.columns if c.name not in ("run_id", "status")
                                                   or name == "erasure_requests" and c.name == "status"])
            old.create(conn)
        conn.execute(sa.text("INSERT INTO landing_batches (batch_id, kind, shards, as_of, created_at) "
                             "VALUES ('lb-1', 'cycle', '[]', '2026-01-01', '2026-01-01')"))
        t.schema_version.create(conn)
        conn.execute(t.schema_version.insert().values(version=2, applied_at=dt.datetime(2026, 1, 1)))
    engine.dispose()
    book = Ledger(url)
    assert book.migrate() == t.CURRENT_VERSION
    (batch,) = book.runs.landing_batches()
    assert batch["status"] == "done" and batch["run_id"] is None
    rid, _ = book.requests.file(KEY_A, 0, due_days=30)
    assert claim(book, "eb-1", [rid], "run-1").outcome == "claimed"


def test_audit_chain_detects_tampering(book):
    for key in (KEY_A, KEY_B):
        book.requests.file(key, 0, due_days=30)
    assert book.audit.verify_chain() == (True, None)
    with book.db.engine.begin() as conn:
        conn.execute(t.audit_log.update().where(t.audit_log.c.seq == 2).values(detail='{"forged":true}'))
    ok, bad = book.audit.verify_chain()
    assert not ok and bad == 2


def test_provenance_is_replaced_per_partition(book):
    book.nodes.record_provenance("raw_events", "shard_01", {KEY_A: 3, KEY_B: 1})
    book.nodes.record_provenance("raw_events", "shard_02", {KEY_B: 4})
    book.nodes.record_provenance("raw_events", "shard_01", {KEY_B: 2})
    rows = book.nodes.provenance_for([KEY_A, KEY_B])
    assert [(r["subject_key"], r["partition"], r["rows"]) for r in rows] == [(KEY_B, "shard_01", 2), (KEY_B, "shard_02", 4)]


def test_a_subject_is_found_in_every_asset_and_partition_that_holds_them(book):
    """Lookups by subject walk the partitions of the key and find every asset there: none is missed, none made up."""
    assets = ["cohort_partials", "raw_events", "raw_subjects", "training_shards", "vector_index"]
    for n, asset in enumerate(assets):
        for shard in range(3):
            book.nodes.record_provenance(asset, f"shard_{shard:02d}", {KEY_A: n + 1} if (n + shard) % 2 else {KEY_B: 1, "c" * 64: 2})
    book.nodes.record_provenance("ensemble_model", "all", {KEY_A: 9})
    held = {(r["asset"], r["partition"], r["rows"]) for r in book.nodes.provenance_for([KEY_A])}
    assert held == {(a, f"shard_{s:02d}", n + 1) for n, a in enumerate(assets) for s in range(3) if (n + s) % 2} | {("ensemble_model", "all", 9)}
    book.nodes.forget_provenance([KEY_A])
    assert book.nodes.provenance_for([KEY_A]) == [] and len(book.nodes.provenance_for([KEY_B, "c" * 64])) == 16


def test_no_raw_identifier_columns(book):
    cols = {c.name for table in t.metadata.tables.values() for c in table.columns}
    assert "subject_id" not in cols
    insp = sa.inspect(book.db.engine)
    assert "erasure_requests" in insp.get_table_names()


SKELETON = "5" * 64


def make_old_ledger(url: str, version: int, schema: str | None = None) -> None:
    """A ledger as ``version`` (3, 9 or 11) left it: its tables without the columns added since, the provenance
    table keyed by subject first (its skeleton column from version 4; partition first and no skeletons at 10 and
    11) with each row's version, run and time, two provenance rows."""
    engine = sa.create_engine(url)
    later = {(table.name, name) for v, added in t.ADDED_COLUMNS.items() if v > version for table, name in added}
    old = sa.MetaData(schema=schema)
    with engine.begin() as conn:
        if schema:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))  # a fixed test name, not input
        for table in t.metadata.sorted_tables:
            if (table.name == "subject_skeletons" and version < 10) or (table.name == "shard_leases" and version < 11):
                continue
            if table.name == "provenance":
                columns = [sa.Column("subject_key", sa.String(64), nullable=False), sa.Column("asset", sa.String(64), nullable=False),
                           sa.Column("partition", sa.String(32), nullable=False), sa.Column("rows", sa.Integer, nullable=False),
                           sa.Column("content_hash", sa.String(64), nullable=False), sa.Column("run_id", sa.String(64), nullable=False),
                           sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
                           *([sa.Column("skeleton_key", sa.String(64))] if 4 <= version < 10 else [])]
                if version >= 10:
                    sa.Table(table.name, old, *columns, sa.PrimaryKeyConstraint("partition", "subject_key", "asset"), sqlite_with_rowid=False).create(conn)
                    continue
                sa.Table(table.name, old, *columns, sa.PrimaryKeyConstraint("subject_key", "asset", "partition"),
                         sa.Index("ix_provenance_asset_partition", "asset", "partition"),
                         *([sa.Index("ix_provenance_skeleton", "skeleton_key")] if version >= 4 else [])).create(conn)
                continue
            sa.Table(table.name, old, *[c.copy() for c in table.columns if (table.name, c.name) not in later]).create(conn)
        since = {name for v, names in t.ADDED_INDEXES.items() if v <= version for name in names}
        for made in old.tables.values():
            for index in t.metadata.tables[made.name].indexes:
                if index.name in since:
                    sa.Index(index.name, *[made.c[c.name] for c in index.columns]).create(conn)
        prefix = f'"{schema}".' if schema else ""
        for key, asset, part in ((KEY_A, "raw_subjects", "shard_00"), (KEY_B, "raw_events", "shard_01")):
            conn.execute(sa.text(f"INSERT INTO {prefix}provenance (subject_key, asset, partition, rows, content_hash, run_id, recorded_at"
                                 + (", skeleton_key" if 4 <= version < 10 else "") + ") VALUES (:k, :a, :p, 1, 'h', 'r', :at"
                                 + (", :s" if 4 <= version < 10 else "") + ")"),
                         {"k": key, "a": asset, "p": part, "at": dt.datetime(2026, 1, 1), "s": SKELETON})
        if version >= 10:
            conn.execute(sa.text(f"INSERT INTO {prefix}subject_skeletons (subject_key, skeleton_key) VALUES (:k, :s)"), {"k": KEY_A, "s": SKELETON})
        conn.execute(sa.text(f"INSERT INTO {prefix}ledger_schema_version VALUES (:v, :at)"), {"v": version, "at": dt.datetime(2026, 1, 1)})
    engine.dispose()


def provenance_key(book: Ledger, schema: str | None = None) -> list[str]:
    return sa.inspect(book.db._base_engine).get_pk_constraint("provenance", schema=schema)["constrained_columns"]


def test_a_version_3_ledger_gains_look_alike_and_blocked_columns_in_place(tmp_path):
    url = f"sqlite:///{tmp_path / 'v3.sqlite'}"
    make_old_ledger(url, 3)
    book = Ledger(url)
    assert book.migrate() == t.CURRENT_VERSION == 12
    insp = sa.inspect(book.db.engine)
    assert {"policy_snapshots", "notices", "sealed_ids", "drp_tokens", "drp_requests", "subject_skeletons"} <= set(insp.get_table_names())
    assert {"skeleton_key", "blocked_by", "review", "footprint"} <= {c["name"] for c in insp.get_columns("erasure_requests")}
    assert "stamp" in {c["name"] for c in insp.get_columns("landing_files")}
    assert "ix_data_keys_grp" in {i["name"] for i in insp.get_indexes("data_keys")}  # 9: an erasure's rekey reads its group alone
    assert provenance_key(book) == ["partition", "subject_key", "asset"]  # 10
    assert [r["rows"] for r in book.nodes.provenance_for([KEY_A, KEY_B])] == [1, 1]  # rows kept
    assert book.nodes.look_alikes(SKELETON, KEY_B) == set()  # no skeletons before 4 ...
    book.nodes.record("raw_subjects", "shard_00", data_version="d", code_version="c", inputs={}, run_id="r",
                      provenance={KEY_A: 1}, skeletons={KEY_A: SKELETON})
    assert book.nodes.look_alikes(SKELETON, KEY_B) == {KEY_A}  # ... their skeleton comes with the next ingest
    rid, _ = book.requests.file(KEY_B, 0, due_days=30, skeleton_key="s" * 64)
    assert book.requests.get(rid)["skeleton_key"] == "s" * 64
    assert book.migrate() == t.CURRENT_VERSION  # idempotent


@pytest.mark.parametrize("version", [9, 11])
def test_an_older_ledger_keeps_its_provenance_and_skeletons_keyed_by_partition_first_and_counts_alone(tmp_path, version):
    url = f"sqlite:///{tmp_path / f'v{version}.sqlite'}"
    make_old_ledger(url, version)
    book = Ledger(url)
    assert book.migrate() == t.CURRENT_VERSION
    assert provenance_key(book) == ["partition", "subject_key", "asset"]
    assert {c["name"] for c in sa.inspect(book.db.engine).get_columns("provenance")} == {"subject_key", "asset", "partition", "rows"}
    with book.db.connect() as conn:  # compacted after the rebuild: no freed page kept, the log emptied into the file
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    assert not (tmp_path / f"v{version}.sqlite-wal").exists() or (tmp_path / f"v{version}.sqlite-wal").stat().st_size == 0
    assert {i["name"] for i in sa.inspect(book.db.engine).get_indexes("provenance")} == set()  # the key is the only one
    assert [(r["subject_key"], r["partition"], r["rows"]) for r in book.nodes.provenance_for([KEY_A, KEY_B])] == [
        (KEY_A, "shard_00", 1), (KEY_B, "shard_01", 1)]
    assert book.nodes.look_alikes(SKELETON, KEY_B) == {KEY_A}
    assert "shard_leases" in sa.inspect(book.db.engine).get_table_names()  # 11
    assert book.migrate() == t.CURRENT_VERSION


def test_a_skeleton_is_kept_while_its_subject_holds_data_anywhere(book):
    """A subject's skeleton (look-alikes) goes with their last provenance row, not before."""
    def record(asset, part, rows):
        book.nodes.record(asset, part, data_version="d", code_version="c", inputs={}, run_id="r", provenance=rows,
                          skeletons={k: SKELETON for k in rows})

    record("raw_subjects", "shard_00", {KEY_A: 1})
    record("training_shards", "shard_00", {KEY_A: 1})
    record("raw_subjects", "shard_01", {KEY_B: 2})
    assert book.nodes.look_alikes(SKELETON, KEY_B) == {KEY_A} and book.nodes.look_alikes(SKELETON, KEY_A) == {KEY_B}
    record("raw_subjects", "shard_00", {})
    assert book.nodes.look_alikes(SKELETON, KEY_B) == {KEY_A}  # still in a training shard
    record("training_shards", "shard_00", {})
    assert book.nodes.look_alikes(SKELETON, KEY_B) == set()
    with book.db.connect() as conn:
        assert list(conn.execute(sa.select(t.subject_skeletons.c.subject_key)).scalars()) == [KEY_B]
    book.nodes.forget_provenance([KEY_B])
    assert book.nodes.provenance_for([KEY_A, KEY_B]) == []
    with book.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.subject_skeletons)).scalar() == 0


def test_the_claim_keeps_staged_skeletons_once_never_an_erased_subjects_and_a_certificate_forgets_them(book):
    """An ingest's claim stores the skeletons of the subjects it staged (``keep_skeletons``) before a raw step records
    their rows: never for a tombstoned subject, and a raw record after it stores none twice. A staged subject whose rows
    no raw step kept is no look-alike, and their certificate forgets their skeleton; a subject holding data keeps it."""
    key_c = "c" * 64

    def held() -> list[str]:
        with book.db.connect() as conn:
            return list(conn.execute(sa.select(t.subject_skeletons.c.subject_key).order_by(t.subject_skeletons.c.subject_key)).scalars())

    book.requests.file(KEY_B, 0, due_days=30)  # tombstoned before the claim
    assert book.nodes.keep_skeletons({KEY_A: SKELETON, KEY_B: SKELETON, key_c: SKELETON}) == 2
    assert book.nodes.keep_skeletons({KEY_A: SKELETON, key_c: SKELETON}) == 0 and held() == [KEY_A, key_c]
    book.nodes.record("raw_subjects", "shard_00", data_version="d", code_version="c", inputs={}, run_id="r", provenance={KEY_A: 1},
                      skeletons={KEY_A: SKELETON})
    assert held() == [KEY_A, key_c]
    assert book.nodes.look_alikes(SKELETON, KEY_B) == {KEY_A}  # c was staged and holds nothing: no look-alike
    for n, subject in enumerate([key_c, KEY_A]):
        rid, _ = book.requests.file(subject, 0, due_days=30)
        claim(book, f"eb-{n}", [rid], "run-1")
        book.certificates.complete(rid, {"request_id": rid, "anonymised_data_subject": subject})
        book.runs.finish_batch(f"eb-{n}", "certified", "run-1")
    assert held() == [KEY_A]  # c's certificate forgot theirs; A still holds a row (the ledger alone is asked here)


@pytest.mark.parametrize("size", [2, 5000])
def test_held_keys_by_lists_or_one_scan_and_a_page_cache_set_back(book, size):
    """``db.held_keys`` answers alike whether it asks by ``IN`` lists or scans the table (many keys against it: the
    ``size`` of 2 makes 9 keys many against 5); ``db.page_cache`` puts the connection's cache back as it was."""
    from erasure_pipeline.ledger.db import held_keys, page_cache

    stored = [f"{i:064x}" for i in range(5)]
    book.requests.file_many([(k, 0) for k in stored], due_days=30)
    asked = [f"{i:064x}" for i in range(3, 12)]
    with book.db.tx() as conn:
        before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        with page_cache(conn, 64):
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -64 * 1024
            assert held_keys(conn, t.tombstones, asked, size) == set(stored[3:])
            assert held_keys(conn, t.tombstones, [], size) == set()
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == before


def test_a_request_is_revoked_only_before_anything_acted_on_it(book):
    rid, _ = book.requests.file(KEY_A, 0, due_days=30)
    with book.db.tx() as conn:
        book.notices.seal(conn, [(rid, "crm", "c2VhbGVk")])
    book.requests.revoke(rid, "changed their mind")
    assert book.requests.get(rid)["status"] == "revoked"
    assert KEY_A not in book.tombstones.active() and book.notices.sealed(rid) == {}
    assert book.requests.live_for(KEY_A) is None
    with pytest.raises(LedgerError, match="can no longer be revoked"):
        book.requests.revoke(rid, None)  # revoked is final
    claimed, _ = book.requests.file(KEY_B, 0, due_days=30)
    claim(book, "eb-9", [claimed], "run-9")
    with pytest.raises(LedgerError, match="in_progress: it can no longer be revoked"):
        book.requests.revoke(claimed, None)
    late, _ = book.requests.file(KEY_A, 0, due_days=30)
    book.runs.claim_landing("lb-1", "cycle", [], utcnow(), "run-10", is_live=lambda _r: True, host="h", pid=1)
    with pytest.raises(LedgerError, match="an ingest has run since"):
        book.requests.revoke(late, None)  # that ingest may have dropped the subject's rows already


def test_bulk_inserts_through_the_driver_keep_timestamps_skeletons_and_first_writers(book):
    """Provenance and data keys are inserted through SQLite's executemany (``db.insert_many``): the rows read back
    as SQLAlchemy wrote them, and ``or_ignore`` leaves a row another writer stored first."""
    from erasure_pipeline.ledger.db import insert_many

    book.nodes.record("raw_events", "shard_01", data_version="v1", code_version="c1", inputs={}, run_id="run1",
                      provenance={KEY_B: 2, KEY_A: 3}, skeletons={KEY_A: "s" * 64})
    rows = sorted(book.nodes.provenance_for([KEY_A, KEY_B]), key=lambda r: r["subject_key"])
    assert [(r["subject_key"], r["asset"], r["partition"], r["rows"]) for r in rows] == [(KEY_A, "raw_events", "shard_01", 3),
                                                                                        (KEY_B, "raw_events", "shard_01", 2)]
    assert book.nodes.look_alikes("s" * 64, KEY_B) == {KEY_A}
    with book.db.connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.select(t.subject_skeletons))] == [(KEY_A, "s" * 64)]
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    first = {"subject_key": KEY_A, "grp": 1, "gen": 1, "wrapped": b"first", "created_at": at}
    with book.db.tx() as conn:
        assert insert_many(conn, t.data_keys, [first]) == 1
        assert insert_many(conn, t.data_keys, [{**first, "wrapped": b"second"}, {**first, "subject_key": KEY_B}], or_ignore=True) == 1
        stored = {r.subject_key: (r.wrapped, r.created_at) for r in conn.execute(sa.select(t.data_keys))}
    assert stored == {KEY_A: (b"first", at.replace(tzinfo=None)), KEY_B: (b"first", at.replace(tzinfo=None))}


def test_a_certificates_actions_keep_their_order(book):
    from erasure_pipeline_tests.erasure_helpers import actions_keep_their_order

    rid, _ = book.requests.file(KEY_A, 3, due_days=30)
    actions_keep_their_order(book, rid)

import datetime as dt

import pytest
import sqlalchemy as sa

from erasure_pipeline.ledger import Ledger, LedgerError
from erasure_pipeline.ledger import schema as t

KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture
def book(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assert ledger.migrate() == t.CURRENT_VERSION
    assert ledger.migrate() == t.CURRENT_VERSION  # idempotent
    return ledger


def test_intake_writes_tombstone_then_request_and_dedupes_live_requests(book):
    rid, created = book.file_request(KEY_A, 3, due_days=30, reason="asked by email")
    assert created and rid.startswith("er-")
    again, created2 = book.file_request(KEY_A, 3, due_days=30)
    assert (again, created2) == (rid, False)
    req = book.get_request(rid)
    assert req["status"] == "pending" and req["due_at"] - req["received_at"] == dt.timedelta(days=30)
    events = [e["event"] for e in book.audit_entries()]
    assert events[:3] == ["tombstone", "received", "pending"]
    assert book.tombstoned_keys() == {KEY_A} and book.tombstoned_keys(3) == {KEY_A} and book.tombstoned_keys(2) == set()


def test_lifecycle_hold_release_extend_once(book):
    rid, _ = book.file_request(KEY_A, 0, due_days=30)
    with pytest.raises(LedgerError, match="needs a reason"):
        book.hold(rid, " ")
    book.hold(rid, "Art.17(3)(e) legal claim pending")
    assert book.get_request(rid)["status"] == "on_hold"
    assert book.tombstoned_keys() == set()  # held data must be kept, not filtered away
    book.release(rid)
    assert book.get_request(rid)["status"] == "pending" and book.tombstoned_keys() == {KEY_A}
    due = book.get_request(rid)["due_at"]
    assert book.extend(rid, "complex request", days=60) == due + dt.timedelta(days=60)
    with pytest.raises(LedgerError, match="already extended"):
        book.extend(rid, "again", days=60)
    with pytest.raises(LedgerError, match="cannot move"):
        book.release(rid)
    with pytest.raises(LedgerError, match="no erasure request"):
        book.get_request("er-missing")


def test_claims_are_exclusive_and_completion_writes_certificate_and_outbox(book):
    rid, _ = book.file_request(KEY_A, 0, due_days=30)
    assert book.claim([rid], "eb-1") == [rid]
    assert book.claim([rid], "eb-2") == []
    book.start([rid], "run-1")
    book.complete(rid, {"request_id": rid, "anonymised_data_subject": KEY_A})
    assert book.get_request(rid)["status"] == "completed"
    body, digest = book.certificate(rid)
    assert body["request_id"] == rid and len(digest) == 64
    assert [o["request_id"] for o in book.outbox()] == [rid]
    # a new request for the same subject after completion is a new request
    rid2, created = book.file_request(KEY_A, 0, due_days=30)
    assert created and rid2 != rid


def test_batch_claim_over_many_chunks_keeps_order_and_one_audit_row_per_request(book):
    """Claims move up to 500 ids per UPDATE ... RETURNING; the chain stays valid and in input order."""
    rids = [book.file_request(f"{i:064x}", i % 16, due_days=30)[0] for i in range(1203)]
    book.hold(rids[7], "legal hold")  # not pending: not claimable
    first = book.claim(rids[:600] + rids[:3], "eb-1")  # duplicates count once
    assert first == [r for r in rids[:600] if r != rids[7]]
    assert book.claim(rids, "eb-2") == rids[600:]
    book.start(rids[:10], "run-1")
    book.fail(rids[:5], "boom")
    statuses = {r["request_id"]: r["status"] for r in book.requests()}
    assert [statuses[r] for r in rids[:10]] == ["failed"] * 5 + ["in_progress", "in_progress", "on_hold", "in_progress", "in_progress"]
    scheduled = [e["request_id"] for e in book.audit_entries() if e["event"] == "scheduled"]
    assert scheduled == first + rids[600:]
    assert book.verify_audit_chain() == (True, None)


def test_audit_chain_detects_tampering(book):
    for key in (KEY_A, KEY_B):
        book.file_request(key, 0, due_days=30)
    assert book.verify_audit_chain() == (True, None)
    with book.engine.begin() as conn:
        conn.execute(t.audit_log.update().where(t.audit_log.c.seq == 2).values(detail='{"forged":true}'))
    ok, bad = book.verify_audit_chain()
    assert not ok and bad == 2


def test_provenance_is_replaced_per_partition(book):
    book.record_provenance("raw_events", "shard_01", {KEY_A: 3, KEY_B: 1}, "h1", "run1")
    book.record_provenance("raw_events", "shard_01", {KEY_B: 2}, "h2", "run2")
    rows = book.provenance_for([KEY_A, KEY_B])
    assert [(r["subject_key"], r["rows"], r["content_hash"]) for r in rows] == [(KEY_B, 2, "h2")]


def test_no_raw_identifier_columns(book):
    cols = {c.name for table in t.metadata.tables.values() for c in table.columns}
    assert "subject_id" not in cols
    insp = sa.inspect(book.engine)
    assert "erasure_requests" in insp.get_table_names()

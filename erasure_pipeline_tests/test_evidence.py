"""Evidence an auditor can trust, and an identity a source cannot slip past (issue: evidence)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.core import identity
from erasure_pipeline.core.tombstones import Tombstones
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.ledger.audit import chain_hash as _chain_hash
from erasure_pipeline.stores import lake as lk
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import PEPPER, build_demo, defs_and_policy, instance, project_env
from erasure_pipeline_tests.erasure_helpers import key, landing_frames, pick_subjects, scan_for
from erasure_pipeline_tests.stores import default_ledger


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- one erased state, copied per tampering
@pytest.fixture(scope="module")
def erased(built_demo, tmp_path_factory):
    """A demo home after one subject's erasure, with the objects it had before, for the restore attacks."""
    root = tmp_path_factory.mktemp("erased")
    state = root / "home"
    shutil.copytree(built_demo, state)
    with project_env(state):
        from erasure_pipeline.app.process import drain

        _defs, policy = defs_and_policy()
        (sid, shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
        part = identity.partition_key(shard)
        store = stores.lake()
        before = {name: store.read_bytes(name) for name in (
            lk.model_name("ensemble_model"), lk.table_name("cohort_partials", part), lk.table_name("anonymised_cohorts", "all"),
            lk.model_name("cohort_model"))}
        rid, _ = erase(sid)
        assert not drain(_defs, instance()).failed_runs
        assert _cli("verify", rid).exit_code == 0
    return {"home": state, "sid": sid, "rid": rid, "part": part, "before": before}


@pytest.fixture
def tampered(erased, tmp_path):
    home_copy = tmp_path / "home"
    shutil.copytree(erased["home"], home_copy)
    with project_env(home_copy):
        yield {**erased, "home": home_copy}


def _db(state) -> sqlite3.Connection:
    return sqlite3.connect(state["home"] / "ledger.sqlite")


def _rechain_from(conn: sqlite3.Connection, seq: int) -> None:
    """What someone with write access to the ledger's database can do: recompute the chain after a row."""
    rows = conn.execute("SELECT seq, at, event, request_id, detail FROM audit_log WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
    prev = conn.execute("SELECT row_hash FROM audit_log WHERE seq < ? ORDER BY seq DESC LIMIT 1", (seq,)).fetchone()
    prev = prev[0] if prev else "0" * 64
    import datetime as dt

    for s, at, event, request_id, detail in rows:
        when = dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC)
        row_hash = _chain_hash(prev, when, event, request_id, detail)
        conn.execute("UPDATE audit_log SET prev_hash = ?, row_hash = ? WHERE seq = ?", (prev, row_hash, s))
        prev = row_hash
    conn.commit()


def _fails(args, *needles):
    out = _cli(*args)
    assert out.exit_code == 1, out.output
    for needle in needles:
        assert needle in out.output, out.output
    return out.output


def test_deleting_the_last_audit_row_is_caught_by_the_runs_anchor(tampered):
    with _db(tampered) as conn:
        (last,) = conn.execute("SELECT max(seq) FROM audit_log").fetchone()
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (last,))
    _fails(["audit-log", "verify"], f"audit log row {last}: it is missing, but erasure run")
    _fails(["verify", tampered["rid"]], "FAIL audit log is intact")


def test_deleting_a_completed_row_and_rechaining_after_it_is_caught_by_the_signatures(tampered):
    with _db(tampered) as conn:
        (seq,) = conn.execute("SELECT seq FROM audit_log WHERE event = 'completed' AND request_id = ?", (tampered["rid"],)).fetchone()
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
        _rechain_from(conn, seq + 1)
    # the first row that disagrees is the one after the gap: re-chained, so neither its signature nor
    # the hash the erasure run anchored match any more
    _fails(["audit-log", "verify"], f"audit log row {seq + 1}: its")


def test_editing_a_middle_row_and_rechaining_is_caught(tampered):
    with _db(tampered) as conn:
        (seq,) = conn.execute("SELECT seq FROM audit_log WHERE event = 'received' AND request_id = ?", (tampered["rid"],)).fetchone()
        conn.execute("UPDATE audit_log SET detail = '{\"forged\":true}' WHERE seq = ?", (seq,))
        _rechain_from(conn, seq)
    _fails(["audit-log", "verify"], f"audit log row {seq}: its signature does not match")


def test_a_row_appended_through_the_ledgers_own_audit_function_without_the_key_is_caught(tampered):
    from erasure_pipeline.ledger import Ledger

    forger = Ledger(f"sqlite:///{tampered['home'] / 'ledger.sqlite'}")  # the database, not the key
    with forger.db.tx() as conn:
        forger.audit.append(conn, [("completed", "er-forged", {"certificate_sha256": "0" * 64})])
    (seq,) = sqlite3.connect(tampered["home"] / "ledger.sqlite").execute("SELECT max(seq) FROM audit_log").fetchone()
    _fails(["audit-log", "verify"], f"audit log row {seq}: it is not signed")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from erasure_pipeline.core.signing import Signer

    impostor = Ledger(f"sqlite:///{tampered['home'] / 'ledger.sqlite'}", sign=Signer(Ed25519PrivateKey.generate()).sign)
    with _db(tampered) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
    with impostor.db.tx() as conn:
        impostor.audit.append(conn, [("completed", "er-forged", {"certificate_sha256": "0" * 64})])
    _fails(["audit-log", "verify"], "its signature does not match")


def test_editing_a_certificate_and_recomputing_its_sha256_is_caught(tampered):
    import hashlib

    with _db(tampered) as conn:
        (body,) = conn.execute("SELECT body FROM certificates WHERE request_id = ?", (tampered["rid"],)).fetchone()
        cert = json.loads(body)
        cert["residual_risk"] = []
        forged = json.dumps(cert, sort_keys=True, separators=(",", ":"))
        conn.execute("UPDATE certificates SET body = ?, sha256 = ? WHERE request_id = ?",
                     (forged, hashlib.sha256(forged.encode()).hexdigest(), tampered["rid"]))
    _fails(["verify", tampered["rid"]], "FAIL certificate is signed with the evidence key", "does not match its contents")


@pytest.mark.parametrize("restored", ["ensemble_model", "cohort_partials", "anonymised_cohorts+cohort_model"])
def test_restoring_pre_erasure_objects_is_caught(tampered, restored):
    store = stores.lake()
    names = {"ensemble_model": [lk.model_name("ensemble_model")],
             "cohort_partials": [lk.table_name("cohort_partials", tampered["part"])],
             "anonymised_cohorts+cohort_model": [lk.table_name("anonymised_cohorts", "all"), lk.model_name("cohort_model")]}[restored]
    for name in names:
        store.write_bytes(name, tampered["before"][name])
    out = _fails(["verify", tampered["rid"]])
    assert "FAIL stored partition is what its last materialisation recorded" in out or "FAIL published merge was built" in out
    assert any(n.split("/")[0] in line for n in names for line in out.splitlines() if line.startswith("FAIL"))


def test_corrupting_raw_bytes_is_caught(tampered):
    path = min((tampered["home"] / "lake" / "raw_events" / tampered["part"]).glob("b_*.parquet"))  # any bucket file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _fails(["verify", tampered["rid"]], f"FAIL stored partition is what its last materialisation recorded [raw_events[{tampered['part']}]]")


# ---------------------------------------------------------------- offline checks, anchors
def test_a_certificate_file_is_verified_offline_with_only_the_public_key(tampered, tmp_path):
    cert_file, pub = tmp_path / "cert.json", tmp_path / "evidence.pem"
    cert_file.write_text(_cli("certificate", tampered["rid"], "--json").output)
    assert _cli("signing-key", "--out", pub).exit_code == 0
    with project_env(tmp_path / "auditor"):  # no ledger, no lake, no key of their own
        ok = _cli("verify", "--certificate", cert_file, "--public-key", pub)
        assert ok.exit_code == 0 and "ok   certificate is signed with the evidence key" in ok.output, ok.output
        doc = json.loads(cert_file.read_text())
        doc["completion_date"] = "2020-01-01T00:00:00+00:00"
        cert_file.write_text(json.dumps(doc))
        _fails(["verify", "--certificate", cert_file, "--public-key", pub], "does not match its contents")
        assert not (tmp_path / "auditor" / "ledger.sqlite").exists()


def test_anchors_are_in_the_certificate_and_in_dagsters_event_log(tampered):
    import dagster as dg

    cert = default_ledger().certificates.get(tampered["rid"])[0]
    assert cert["audit_anchor"]["seq"] > 0 and cert["signature"]["algorithm"] == "Ed25519"
    meta = instance().get_latest_materialization_event(dg.AssetKey("erasure_certificates")).asset_materialization.metadata
    assert meta["audit_anchor_seq"].value >= cert["audit_anchor"]["seq"]
    out = _cli("audit-log", "verify")
    assert out.exit_code == 0 and "2 anchors agree" in out.output, out.output


# ---------------------------------------------------------------- identity a source cannot slip past
def test_an_erased_id_sent_again_with_another_case_and_spacing_stays_out_everywhere(demo_home):
    import datetime as dt

    from erasure_pipeline.app.process import drain, run_cycle

    defs, policy = defs_and_policy()
    (sid, shard), (other, _other_shard) = pick_subjects(policy.shards, with_tickets=2)
    rid, _ = erase(sid)
    drain(defs, instance())
    variant = sid.upper() + " "  # A.B@EXAMPLE.COM and a trailing space
    subjects, _ = landing_frames(policy.shards)
    row = subjects[subjects["subject_id"] == other].drop(columns=["subject_key", "shard"]).iloc[0].to_dict()
    resend = pd.DataFrame([{**row, "subject_id": variant}])
    stores.landing().write_bytes("subjects/resend.csv", resend.to_csv(index=False).encode())
    events = pd.DataFrame({"event_id": ["e-resend"], "subject_id": [variant], "ts": ["2026-11-01T00:00:00Z"], "event_type": ["purchase"]})
    stores.landing().write_bytes("events/resend.csv", events.to_csv(index=False).encode())
    fullwidth = sid.replace("@", "\uff20").upper()  # ＠ and upper case: NFKC and case-folding make it the id again
    tickets = pd.DataFrame({
        "ticket_id": ["t-resend", "t-mention"], "subject_id": [variant, other],
        "created_at": ["2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"],
        "text": [f"It is me again, {variant}", f"Please forward this to {sid}, or {fullwidth}."],
    })
    stores.landing().write_bytes("tickets/resend.csv", tickets.to_csv(index=False).encode())
    result = run_cycle(defs, instance(), dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    assert result.summary.success
    part = identity.partition_key(shard)
    for asset in ("raw_subjects", "raw_events", "raw_tickets"):
        assert key(sid) not in set(stores.table(stores.lake(), asset, part)["subject_key"])
    assert stores.vectors().count_subjects(shard, [key(sid)]) == 0
    mention = stores.table(stores.lake(), "raw_tickets", identity.partition_key(_other_shard))
    text = mention.loc[mention["ticket_id"] == "t-mention", "text"].iloc[0]
    assert text == "Please forward this to [erased], or [erased]."
    out = _cli("verify", rid)
    assert out.exit_code == 0, out.output
    assert "ok   no text column of the lake or landing holds the subject's id" in out.output
    assert scan_for(demo_home, [sid, variant.strip(), fullwidth]) == []


def test_tombstones_filed_under_an_earlier_rule_still_match_after_the_rule_changes():
    keyer_old = identity.Keyer(PEPPER.encode(), 4, ("strip",))
    keyer_new = identity.Keyer(PEPPER.encode(), 4, ("strip", "lowercase"))
    stones = Tombstones(keyer_new, frozenset(), {"strip": frozenset({keyer_old.key("User-7")})})
    frame = pd.DataFrame({"subject_id": ["User-7", "user-8"], "subject_key": keyer_new.keys(["User-7", "user-8"])})
    assert stones.keys_in([frame]) == {keyer_new.key("User-7")}
    redacted, n = stones.redact(pd.DataFrame({"text": ["ask User-7@x.io or user-8"]}), ["text"])
    assert n == 0  # only e-mail-like tokens are ids in text; "User-7" alone is a word
    mail = Tombstones(keyer_new, frozenset({keyer_new.key("a.b@example.com")}))
    redacted, n = mail.redact(pd.DataFrame({"text": ["write to A.B@Example.com."]}), ["text"])
    assert n == 1 and redacted["text"].iloc[0] == "write to [erased]."


def test_changing_the_identity_rule_warns_that_it_is_a_reshard(demo_home, tmp_path):
    proposed = tmp_path / "p.yaml"
    proposed.write_text((demo_home / "policy.yaml").read_text() + "identity:\n  normalise: [strip, casefold]\n")
    out = _cli("policy", "diff", "--proposed", proposed)
    assert out.exit_code == 0 and "identity.normalise changes how every subject id becomes its key: this is a reshard" in out.output
    assert "| raw_subjects | all 4 |" in out.output


# ---------------------------------------------------------------- the ledger's database goes away
@pytest.mark.postgres
def test_ledger_outage_mid_run_is_one_line_and_the_request_completes_after(pg_database, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from erasure_pipeline.kinds import raw
    from erasure_pipeline_tests.tcp_proxy import Proxy

    pg = sa.engine.make_url(pg_database)
    proxy = Proxy((pg.host, pg.port or 5432)).start()
    url = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    state = tmp_path / "home"
    with project_env(state, ERASURE_PIPELINE_LEDGER_URL=url):
        build_demo(state, n_subjects=200)
        book = default_ledger()
        _defs, policy = defs_and_policy()
        (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
        filed = _cli("erase", sid)
        assert filed.exit_code == 0, filed.output
        rid = filed.output.strip()
        original = raw.Raw.compute

        def cut_then_compute(self, run):
            proxy.stop()  # the ledger's database goes away in the middle of the erasure run
            return original(self, run)

        monkeypatch.setattr(raw.Raw, "compute", cut_then_compute)
        out = _cli("process")
        assert out.exit_code == 1 and "Traceback" not in out.output, out.output
        errors = [line for line in out.output.splitlines() if line.startswith("error:")]
        assert errors == [f"error: ledger unavailable: 127.0.0.1:{proxy.port}/{pg.database} (OperationalError), retry later"], out.output
        monkeypatch.undo()
        import os

        os.environ["ERASURE_PIPELINE_PEPPER"] = PEPPER
        os.environ["ERASURE_PIPELINE_LEDGER_URL"] = url
        proxy.start()
        again = _cli("process")
        assert again.exit_code == 0, again.output
        assert default_ledger().requests.get(rid)["status"] == "completed"
        assert _cli("verify", rid).exit_code == 0
        assert not [r for r in instance().get_runs() if not r.is_finished]
        book.dispose()
        proxy.stop()


def test_home_holds_no_signing_material_in_the_ledger(tampered):
    """The key lives beside the ledger only in the embedded default; never inside its database."""
    key_file = stores.settings().home / "signing.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    secret = key_file.read_text().splitlines()[1]
    assert secret.encode() not in (tampered["home"] / "ledger.sqlite").read_bytes()


def test_the_evidence_key_comes_from_the_environment_as_pem_or_base64_and_errors_never_echo_it(tmp_path, caplog):
    import base64
    import logging

    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from erasure_pipeline.core.signing import SigningKeyError, load_signer

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode()
    raw = base64.b64encode(private.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())).decode()
    assert load_signer(pem, tmp_path).key_id == load_signer(raw, tmp_path).key_id
    assert not (tmp_path / "signing.key").exists()
    with pytest.raises(SigningKeyError) as err:
        load_signer("not-a-key-but-a-secret-value", tmp_path)
    assert "not-a-key" not in str(err.value) and "$ERASURE_PIPELINE_SIGNING_KEY" in str(err.value)
    with caplog.at_level(logging.WARNING):
        local = load_signer(None, tmp_path)
    assert "ERASURE_PIPELINE_SIGNING_KEY is not set" in caplog.text
    assert load_signer(None, tmp_path).key_id == local.key_id  # generated once


def test_a_batch_is_proven_one_read_per_partition_and_a_subject_found_again_is_named_alone(demo_home, monkeypatch):
    """Two subjects of one shard erased in one batch: `verify` reads each raw partition's keys once for both (their
    buckets together) and the vector shard's files once; a bucket of one of them restored afterwards fails that
    subject's "no rows" claim and not the other's."""
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.app.runner import env_of
    from erasure_pipeline.erasure.evidence import verify_certificates
    from erasure_pipeline.stores import buckets as bk

    defs, policy = defs_and_policy()
    subjects, tickets = landing_frames(policy.shards)
    held = subjects[subjects["subject_id"].isin(set(tickets["subject_id"]))]
    held = held.assign(bucket=[bk.bucket_of(key(s), policy.lake.buckets) for s in held["subject_id"]])
    shard, group = next((s, g.drop_duplicates("bucket")) for s, g in held.groupby("shard") if g["bucket"].nunique() >= 2)
    (a, b), part = group["subject_id"].iloc[:2].tolist(), identity.partition_key(int(shard))
    lake = stores.lake()
    bucket_a = bk.object_name("raw_events", part, bk.bucket_of(key(a), policy.lake.buckets))
    saved = lake.read_bytes(bucket_a)
    rids = [erase(a)[0], erase(b)[0]]
    assert not drain(defs, instance()).failed_runs
    env = env_of(defs, policy, instance())
    reads, scans = [], []
    read_buckets, stored_keys = bk.read_buckets, type(env.vectors).stored_keys
    monkeypatch.setattr(bk, "read_buckets", lambda store, asset, p, *a, **k: reads.append((asset, p)) or read_buckets(store, asset, p, *a, **k))
    monkeypatch.setattr(type(env.vectors), "stored_keys", lambda self, s, wanted=None: scans.append((s, sorted(wanted))) or stored_keys(self, s, wanted))
    found = verify_certificates(rids, env)
    assert all(f.ok for fs in found.values() for f in fs), [f for fs in found.values() for f in fs if not f.ok]
    assert sorted(r for r in reads if r[1] == part) == [(n, part) for n in ("raw_events", "raw_subjects", "raw_tickets")]
    assert scans == [(int(shard), sorted([key(a), key(b)]))]

    lake.write_bytes(bucket_a, saved)  # an old copy of one of them restored behind the pipeline's back
    found = verify_certificates(rids, env)
    rows_claim = {rid: [f for f in found[rid] if f.claim == "no rows of the subject" and f.target == f"raw_events[{part}]"] for rid in rids}
    assert [f.ok for f in rows_claim[rids[0]]] == [False] and rows_claim[rids[0]][0].detail != "0 rows"
    assert [f.ok for f in rows_claim[rids[1]]] == [True]

"""Backups that go dark: declared personal fields sealed per subject, the key destroyed first at erasure, the
key-encryption key rotated after, so copies we cannot rewrite (a copy of the whole home, an old S3 object
version, an old copy of the key store) stop being readable for the erased subject, and only for them."""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from erasure_pipeline.core import crypto, identity
from erasure_pipeline.core.errors import DamagedObject
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.ledger.keys import KeyRing, group_of
from erasure_pipeline.ledger.pending_keys import KeysRaced, PendingKeys
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.kms import AwsKms, KekUnusable, LocalKms
from erasure_pipeline.stores.lake_backends import LocalLake
from erasure_pipeline.stores.vectors import EdgeStore
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import SMALL_POLICY, project_env
from erasure_pipeline_tests.erasure_helpers import decoded, scan_for

SEALED_POLICY = SMALL_POLICY.replace(
    """  subjects: {id: subject_id, subject: subject_id}
  events: {id: event_id, subject: subject_id, timestamp: ts}
  tickets: {id: ticket_id, subject: subject_id, timestamp: created_at, text: [text]}""",
    """  subjects: {id: subject_id, subject: subject_id, personal: [full_name, phone]}
  events: {id: event_id, subject: subject_id, timestamp: ts, personal: []}
  tickets: {id: ticket_id, subject: subject_id, timestamp: created_at, text: [text], personal: []}""") + "landing: {keep_days: 0}\n"
RAW = ("raw_subjects", "raw_events", "raw_tickets")
PARTITIONS = [f"shard_{i:02d}" for i in range(4)]


class Keys:
    """A key source in memory, for the pure sealing tests."""

    def __init__(self):
        self.held: dict[str, bytes] = {}

    def data_keys(self, subject_keys, *, create):
        if create:
            for k in subject_keys:
                self.held.setdefault(k, os.urandom(crypto.DATA_KEY_BYTES))
        return {k: self.held[k] for k in subject_keys if k in self.held}


# ---------------------------------------------------------------- sealing (pure)
def test_sealing_round_trips_every_type_deterministically_and_a_destroyed_key_opens_nothing():
    df = pd.DataFrame({"subject_key": ["a", "a", "b", "c"], "subject_id": ["x@y", "x@y", "z@w", None], "age": [1.0, 2.0, 3.0, None],
                       "ts": pd.to_datetime(["2024-01-01", "2024-02-01 10:00:01.5", "2024-03-01", None], utc=True, format="ISO8601"),
                       "flag": [True, False, None, True], "n": [1, 2, 3, 4]})
    keys, table = Keys(), pa.Table.from_pandas(df, preserve_index=False)
    sealed = crypto.seal_table(table, ["subject_id", "age", "ts", "flag"], keys)
    assert {sealed.schema.field(c).type for c in ("subject_id", "age", "ts", "flag")} == {pa.binary()}
    assert sealed.column("subject_id")[0] == sealed.column("subject_id")[1]  # deterministic: files keep their hashes
    assert crypto.seal_table(table, ["subject_id", "age", "ts", "flag"], keys).equals(sealed)
    assert crypto.open_table(sealed, keys).table.to_pandas().equals(df)
    assert b"x@y" not in sealed.column("subject_id")[0].as_py()
    del keys.held["a"]  # the subject's key destroyed
    opened = crypto.open_table(sealed, keys)
    assert opened.unreadable == {"a": 8}
    assert opened.table.column("subject_id").to_pylist() == [None, None, "z@w", None]
    with pytest.raises(crypto.SealedWithoutKeys):
        crypto.open_table(sealed, None)


def test_the_sealing_lookups_stay_within_their_bound_and_give_what_sealing_afresh_gives(monkeypatch):
    """Cells sealed or opened before are found by lookup (both ways), never more than ``MEMO_MAX`` of them are kept,
    and what a lookup gives is byte for byte what sealing without one gives."""
    keys = Keys()
    table = pa.table({"subject_key": [f"s{i}" for i in range(5)], "phone": [f"+44 20 7946 000{i}" for i in range(5)]})
    crypto.forget_ciphers()
    fresh = crypto.seal_table(table, ["phone"], keys)
    assert len(crypto._SEALED) == len(crypto._OPENED) == 5
    assert crypto.seal_table(table, ["phone"], keys).equals(fresh)  # by lookup
    crypto.forget_ciphers()
    assert crypto.open_table(fresh, keys).table.equals(table)  # opened afresh, then kept both ways
    assert crypto.seal_table(table, ["phone"], keys).equals(fresh)
    monkeypatch.setattr(crypto, "MEMO_MAX", 3)
    crypto.forget_ciphers()
    assert crypto.seal_table(table, ["phone"], keys).equals(fresh)
    assert len(crypto._SEALED) == len(crypto._OPENED) == 3
    assert crypto.open_table(fresh, keys).table.equals(table)
    assert len(crypto._SEALED) <= 3
    monkeypatch.setattr(crypto, "MEMO_MAX", 0)  # no lookups at all
    crypto.forget_ciphers()
    assert crypto.seal_table(table, ["phone"], keys).equals(fresh) and not crypto._SEALED and not crypto._OPENED
    monkeypatch.setattr(crypto, "MEMO_MAX", 100)
    crypto.forget_ciphers()  # only the columns a later step opens are kept (and looked up); the others sealed afresh
    both = table.append_column("name", pa.array([f"N{i}" for i in range(5)]))
    sealed = crypto.seal_table(both, ["phone", "name"], keys, remember={"name"})
    assert sealed.column("phone").equals(fresh.column("phone")) and len(crypto._SEALED) == 5
    looked = []
    monkeypatch.setattr(crypto, "_SEALED", _Spy(crypto._SEALED, looked))
    assert crypto.seal_table(both, ["phone", "name"], keys, remember={"name"}).equals(sealed) and len(crypto._SEALED) == 5
    assert len(looked) == 5 and {aad.split(b"\x00")[0] for _nonce, aad, _value in looked} == {b"name"}  # phone: not looked up
    assert crypto.seal_table(both, ["phone", "name"], keys, remember=set()).equals(sealed) and len(looked) == 5
    monkeypatch.undo()
    crypto.forget_ciphers()


class _Spy(dict):
    """A sealing lookup that records what it was asked."""

    def __init__(self, held: dict, asked: list):
        super().__init__(held)
        self.asked = asked

    def get(self, key, default=None):
        self.asked.append(key)
        return super().get(key, default)


def test_a_sealed_cell_moved_to_another_subject_or_column_does_not_open():
    keys = Keys()
    sealed = crypto.seal_table(pa.table({"subject_key": ["a", "b"], "phone": ["1", "2"], "name": ["n1", "n2"]}), ["phone", "name"], keys)
    phones = sealed.column("phone").to_pylist()
    swapped = sealed.set_column(1, "phone", pa.array([phones[1], phones[0]], pa.binary()))
    with pytest.raises(DamagedObject, match="does not open"):
        crypto.open_table(swapped, keys)
    moved = sealed.set_column(2, "name", pa.array(phones, pa.binary()))
    with pytest.raises(DamagedObject, match="does not open"):
        crypto.open_table(moved, keys)


def test_two_key_stores_in_one_process_never_share_a_sealed_cell():
    """Sealing remembers what it sealed and opened (a lookup the second time): per data key, so the same subject
    key under another key store (another home in the same process) seals afresh, and a cell of one does not
    open under the other."""
    table = pa.table({"subject_key": ["a", "b"], "phone": ["1", "2"]})
    first, second = Keys(), Keys()
    sealed = crypto.seal_table(table, ["phone"], first)
    assert crypto.open_table(sealed, first).table.equals(table)  # remembered both ways now
    other = crypto.seal_table(table, ["phone"], second)
    assert other.column("phone").to_pylist() != sealed.column("phone").to_pylist()
    assert crypto.open_table(other, second).table.equals(table)
    with pytest.raises(DamagedObject, match="does not open"):
        crypto.open_table(sealed, second)


def test_carried_cells_stay_as_stored_and_are_written_back_as_sealing_them_again_would():
    """A writer that moves rows without reading some sealed columns carries them: not opened, not sealed again,
    and what it writes is byte for byte what opening and sealing them would have written (sealing is deterministic)."""
    keys = Keys()
    table = pa.table({"subject_key": ["a", "b", "a"], "id": ["1", "2", "3"], "phone": ["p1", None, "p1"], "name": ["n1", "n2", "n3"]})
    stored = pa.Table.from_pandas(table.to_pandas(), preserve_index=False).replace_schema_metadata(None)  # as a lake file holds it
    sealed = crypto.seal_table(stored, ["phone", "name"], keys)
    opened = crypto.open_table(sealed, keys, carry=["phone", "absent"])
    assert set(opened.carried) == {"phone"} and opened.table.column("phone").equals(sealed.column("phone"))
    assert opened.table.column("name").to_pylist() == ["n1", "n2", "n3"]
    moved = opened.table.to_pandas().iloc[[2, 0]]  # rows moved through pandas, as a raw step moves them
    carried = crypto.seal_table(pa.Table.from_pandas(moved, preserve_index=False), ["phone", "name"], keys, carried=opened.carried)
    resealed = crypto.seal_table(pa.Table.from_pandas(crypto.open_table(sealed, keys).table.to_pandas().iloc[[2, 0]], preserve_index=False),
                                 ["phone", "name"], keys)
    assert lk.arrow_to_bytes(carried) == lk.arrow_to_bytes(resealed)
    # a carried column holding only nulls comes back from pandas untyped: written as sealed cells all the same
    nulls = crypto.seal_table(pa.Table.from_pandas(opened.table.to_pandas().iloc[[1]], preserve_index=False), ["phone", "name"], keys,
                              carried=opened.carried)
    assert nulls.schema.field("phone").type == pa.binary() and set(crypto.sealed_columns(nulls.schema)) == {"phone", "name"}
    assert crypto.open_table(nulls, keys).table.to_pylist() == [{"subject_key": "b", "id": "2", "phone": None, "name": "n2"}]


def test_a_subjects_skeleton_is_made_once_per_process_and_their_carried_id_is_not_opened_for_it_again():
    """One subject key is one normalised id, so one skeleton: a second dataset of the same subjects gets theirs
    without opening the id it carries sealed; a subject met for the first time has theirs opened and made."""
    from erasure_pipeline.core.contracts import TableContract
    from erasure_pipeline.core.identity import Keyer
    from erasure_pipeline.kinds.raw_rows import skeletons

    keyer, keys = Keyer(os.urandom(32), 4), Keys()
    ids = ["Ava@Example.com", "bob@example.com", "cat@example.com"]
    subjects = pd.DataFrame({"subject_key": keyer.keys(ids), "subject_id": ids})
    events = TableContract("events", "event_id", sealed=("subject_id",))
    expected = dict(zip(subjects["subject_key"], keyer.skeleton_keys(ids), strict=True))
    assert skeletons(subjects.iloc[:2], TableContract("subjects", "subject_id"), keyer, keys, {}) == dict(list(expected.items())[:2])
    stored = crypto.seal_table(pa.Table.from_pandas(subjects, preserve_index=False).replace_schema_metadata(None), ["subject_id"], keys)
    opened = crypto.open_table(stored, keys, carry=["subject_id"])
    frame = opened.table.to_pandas()
    assert skeletons(frame.iloc[:2], events, keyer, None, opened.carried) == dict(list(expected.items())[:2])  # no key store: none opened
    assert skeletons(frame, events, keyer, keys, opened.carried) == expected  # the third opened and made
    with pytest.raises(crypto.SealedWithoutKeys):
        skeletons(frame.assign(subject_key=keyer.keys(["dan@example.com"] * 3)), events, keyer, None, opened.carried)


def test_the_staged_skeleton_sits_on_each_subjects_last_row_so_an_id_sent_twice_in_a_file_keeps_it():
    """The staging pass stages each subject's skeleton once per file (``landing.SKELETON``); ``read_staged`` keeps the
    last row of an id, so the skeleton rides on the subject's last row and a repeated id does not drop it."""
    from erasure_pipeline.core.identity import Keyer
    from erasure_pipeline.stores.landing import _skeleton_column

    keyer = Keyer(os.urandom(32), 4)
    df = pd.DataFrame({"event_id": ["e1", "e2", "e1", "e3"], "subject_id": ["a@x.com", "b@x.com", "a@x.com", "A@X.com "]})
    df["subject_key"] = keyer.keys(df["subject_id"])  # rows 0, 2, 3: one subject under the default rule
    column, made = _skeleton_column(df, "subject_id", keyer)
    assert column.notna().tolist() == [False, True, False, True]
    kept = df.assign(skeleton=column).drop_duplicates("event_id", keep="last").dropna()
    expected = dict(zip(keyer.keys(["a@x.com", "b@x.com"]), keyer.skeleton_keys(["a@x.com", "b@x.com"]), strict=True))
    assert dict(zip(kept["subject_key"], kept["skeleton"], strict=True)) == expected
    assert made == expected  # what the claim stores (``Staged.skeletons``)


def test_a_personal_column_the_files_lack_is_an_error_naming_the_field():
    import yaml

    from erasure_pipeline.core.contracts import LandingContractError, contracts_for, validate
    from erasure_pipeline.core.policy import Policy

    policy = Policy.model_validate(yaml.safe_load(SEALED_POLICY.replace("personal: [full_name, phone]", "personal: [full_name, phon]")))
    contract = contracts_for(policy)["subjects"]
    frame = pd.DataFrame({c: ["1"] for c in contract.required if c != "phon"} | {"phone": ["1"]})  # "phone" is there; "phon" is not
    with pytest.raises(LandingContractError, match="column 'phon': column named by datasets.subjects.personal is missing"):
        validate(frame, contract, "subjects/x.csv")


# ---------------------------------------------------------------- the key store (sqlite and postgres)
def _ring(url: str, kms, schema: str = "erasure_ledger") -> KeyRing:
    book = Ledger(url, schema=schema)
    book.migrate()
    return KeyRing(book.db, book.audit, kms)


@pytest.fixture(params=["sqlite", "postgres"])
def key_store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("pg_database")


def test_destroying_a_key_rekeys_its_group_rotates_the_kek_and_an_old_store_copy_opens_nothing(key_store_url, tmp_path):
    kms = LocalKms(tmp_path / "kek.json")
    ring = _ring(key_store_url, kms)
    same_group = [f"ab{i:062x}" for i in range(3)]
    other = "cd" + "0" * 62
    made = ring.data_keys([*same_group, other], create=True)
    assert len(made) == 4 and all(len(k) == crypto.DATA_KEY_BYTES for k in made.values())
    assert ring.data_keys([*same_group, other], create=False) == made  # read back, not made again
    old = _snapshot(key_store_url, tmp_path)

    victim = same_group[0]
    destroyed = ring.destroy([victim])[victim]
    assert destroyed.had_key and destroyed.rotated_to == 2
    after = ring.data_keys([*same_group, other], create=True)  # a destroyed key is never made again
    assert victim not in after and after == {k: v for k, v in made.items() if k != victim}
    status = ring.status()
    assert [v["state"] for v in status["versions"]] == ["destroyed", "active"] and status["rotations_pending"] == 0
    assert ring.has_key(victim) is False and ring.destroy([victim])[victim].rotated_to == 2  # idempotent

    # The copy of the store from before the erasure, restored: its root is wrapped under a destroyed version.
    stale = _ring(old[0], kms, old[1])
    with pytest.raises(KekUnusable, match="not in"):
        stale.data_keys([victim], create=False)
    with pytest.raises(KekUnusable):
        stale.data_keys([other], create=False)

    if key_store_url.startswith("postgresql"):  # the engine was made to let go of the deleted rows
        import sqlalchemy as sa

        with ring.db.connect() as conn:
            vacuumed = conn.execute(sa.text("SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'erasure_ledger' "
                                            "AND relname IN ('data_keys', 'key_groups') AND last_vacuum IS NOT NULL")).scalars().all()
        assert sorted(vacuumed) == ["data_keys", "key_groups"]
    assert ring.rotate() == 3  # a rotation touches no data key: every kept one reads the same
    assert _ring(key_store_url, kms).data_keys([*same_group, other], create=False) == after
    assert group_of(victim) == group_of(same_group[1])


def test_a_staging_passs_new_keys_are_stored_together_at_its_end_and_never_for_a_subject_erased_meanwhile(key_store_url, tmp_path):
    """A staging pass gives kept subjects their stored key and new ones a key of its own, stores nothing until it
    commits, never keys a subject erased before or meanwhile, and fails (``KeysRaced``) where another writer won."""
    kms = LocalKms(tmp_path / "kek.json")
    ring = _ring(key_store_url, kms)
    kept, fresh, erased_before, erased_meanwhile = (f"{g}{'0' * 62}" for g in ("0a", "1b", "2c", "3d"))
    stored = ring.data_keys([kept, erased_before], create=True)
    ring.destroy([erased_before])

    pending = PendingKeys(ring)
    got = pending.data_keys([kept, fresh, erased_before, erased_meanwhile], create=True)
    assert got[kept] == stored[kept] and erased_before not in got  # keyed already: its key; destroyed: none ever
    assert set(got) == {kept, fresh, erased_meanwhile} and pending.data_keys([fresh], create=True) == {fresh: got[fresh]}
    reader = _ring(key_store_url, kms)  # another process: sees nothing made until the pass commits
    assert reader.data_keys([fresh, erased_meanwhile], create=False) == {}
    ring.destroy([erased_meanwhile])  # an erasure while the batch is staged
    assert pending.commit() == 1
    assert _ring(key_store_url, kms).data_keys([kept, fresh, erased_meanwhile], create=False) == {kept: got[kept], fresh: got[fresh]}

    # Another writer stored a key for a subject this pass sealed under its own: the pass fails, theirs stays.
    late = "4e" + "0" * 62
    racing = PendingKeys(ring)
    mine = racing.data_keys([late], create=True)[late]
    theirs = _ring(key_store_url, kms).data_keys([late], create=True)[late]
    with pytest.raises(KeysRaced, match="staged again"):
        racing.commit()
    assert mine != theirs and _ring(key_store_url, kms).data_keys([late], create=False) == {late: theirs}


def test_the_key_stores_first_version_forgets_nothing_a_staging_pass_sealed(tmp_path, monkeypatch):
    """A build's staging pass makes the store's first KEK version when it stores its keys; the readers after it keep
    the keys and sealing lookups it left (that version is no rotation), and an erasure's rotation still empties them."""
    from erasure_pipeline.ledger import keys as key_store

    monkeypatch.setattr(key_store, "EPOCH_CHECK_SECONDS", 0.0)  # every call reads the newest version
    crypto.forget_ciphers()
    ring = _ring(f"sqlite:///{tmp_path / 'ledger.sqlite'}", LocalKms(tmp_path / "kek.json"))
    subjects = [f"{g:02x}{'0' * 62}" for g in range(4)]
    pending = PendingKeys(ring)
    crypto.seal_table(pa.table({"subject_key": subjects, "phone": ["1", "2", "3", "4"]}), ["phone"], pending)
    held = dict(crypto._SEALED)
    assert len(held) == 4 and pending.commit() == 4 and ring.status()["versions"][0]["version"] == 1
    assert ring.data_keys(subjects, create=False) == pending.made and crypto._SEALED == held
    assert set(crypto._CIPHERS) == set(subjects)
    ring.destroy(subjects[:1])
    assert not crypto._SEALED
    # the erased subject's cipher is gone; the others' stay (freeing every one after a build cost most of a claim)
    assert set(crypto._CIPHERS) == set(subjects[1:]) and set(ring.data_keys(subjects, create=False)) == set(subjects[1:])


def test_a_process_forgets_its_lookups_once_for_its_own_erasure_and_again_for_another_processs(tmp_path):
    """``destroy`` empties this process's key cache and sealing lookups before its rotation, so the rotation it
    makes itself is no news to it; a rotation made elsewhere (another process's erasure) empties them again."""
    kms = LocalKms(tmp_path / "kek.json")
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    ring, elsewhere = _ring(url, kms), _ring(url, kms)
    victim, kept = "ab" + "0" * 62, "cd" + "0" * 62
    ring.data_keys([victim, kept], create=True)
    table = pa.table({"subject_key": [kept], "phone": ["+44 20 7946 0000"]})

    def lookups_after_a_read() -> int:
        ring._checked = float("-inf")  # the next call reads the newest KEK version now, not within a second
        ring.data_keys([kept], create=False)
        return len(crypto._SEALED)

    lookups_after_a_read()  # the process has seen the KEK version its keys were made under
    ring.destroy([victim])
    crypto.seal_table(table, ["phone"], ring)
    assert lookups_after_a_read() == 1  # its own rotation: kept
    elsewhere.destroy(["ef" + "0" * 62])  # another process's erasure rotates the KEK
    assert lookups_after_a_read() == 0


def _snapshot(url: str, tmp_path: Path) -> tuple[str, str]:
    """A copy of the key store as a backup would take it: the SQLite file, or the key tables copied into another
    Postgres schema. Returns (url, schema)."""
    if url.startswith("sqlite"):
        src = Path(url.removeprefix("sqlite:///"))
        dst = tmp_path / "backup.sqlite"
        with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
            a.backup(b)
        return f"sqlite:///{dst}", "erasure_ledger"
    import sqlalchemy as sa

    Ledger(url, schema="erasure_ledger_backup").migrate()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in ("kek_versions", "key_groups", "data_keys", "key_erasures"):
            conn.execute(sa.text(f"INSERT INTO erasure_ledger_backup.{table} SELECT * FROM erasure_ledger.{table}"))
    engine.dispose()
    return url, "erasure_ledger_backup"


def test_sqlite_key_store_keeps_no_byte_of_a_destroyed_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    ring = _ring(url, LocalKms(tmp_path / "kek.json"))
    keys = [f"{i:02x}" + "e" * 62 for i in range(40)]
    ring.data_keys(keys, create=True)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        wrapped = conn.execute("SELECT wrapped FROM data_keys WHERE subject_key = ?", (keys[7],)).fetchone()[0]
    ring.destroy([keys[7]])
    files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.sqlite")]
    assert files and not any(wrapped in p.read_bytes() for p in files)  # secure_delete zeroed it; the WAL is truncated


# ---------------------------------------------------------------- end to end: a copy of the whole home
def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI in its own process, as an operator runs it (nothing cached from an earlier command)."""
    done = subprocess.run([sys.executable, "-c", "from erasure_pipeline.app.cli import main; main()", *args], check=False,
                          capture_output=True,
                          text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _load_demo(n: int = 120) -> dict:
    from erasure_pipeline.app import demo

    data = demo.generate(n, 5)
    demo.write_landing(stores.landing(), data)
    return data


def _victim(data: dict) -> tuple[str, list[str]]:
    """A subject with a ticket, and their declared fields as the source sent them."""
    s, t = data["subjects"], data["tickets"]
    row = s[s["subject_id"].isin(t["subject_id"])].iloc[0]
    return row["subject_id"], [row["subject_id"], row["full_name"], row["phone"]]


def _sealed_view(lake, keys) -> dict[str, dict]:
    """Every raw row's declared fields as the project's readers open them: id column -> fields."""
    out = {}
    for name in RAW:
        for p in PARTITIONS:
            df = bk.read_buckets(lake, name, p, keys=keys)
            if df is None:
                continue
            fields = [c for c in ("subject_id", "full_name", "phone", "text") if c in df]
            ids = df[{"raw_subjects": "subject_id", "raw_events": "event_id", "raw_tickets": "ticket_id"}[name]]
            if name == "raw_subjects":  # the id column is sealed here: key the row by its subject_key
                ids = df["subject_key"]
            for i, row in zip(ids, df[fields].to_dict("records"), strict=True):
                out[f"{name}/{i}"] = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    return out


def _payload_texts(root: Path, keys) -> dict[str, str | None]:
    from erasure_pipeline.kinds.vectors import open_payload

    store = EdgeStore(root=root)
    return {f"{p['record_id']}/{p['chunk']}": open_payload(p, keys)["text"] for s in range(4) for p in store.payloads(s)}


@pytest.mark.slow
def test_a_copy_of_the_whole_home_restored_after_an_erasure_is_dark_for_the_subject_only(tmp_path):
    from erasure_pipeline.erasure.intake import erase  # noqa: F401  (the CLI files it; this only checks the import)
    from erasure_pipeline_tests.erasure_helpers import key

    home = tmp_path / "home"
    with project_env(home, SEALED_POLICY):
        data = _load_demo()
        _cli("materialize")
        assert stores.landing().list() == []  # ingested: removed (landing.keep_days: 0)
        sid, needles = _victim(data)
        victim = key(sid)
        live_keys = stores.keys()
        before = _sealed_view(stores.lake(), live_keys)
        texts_before = _payload_texts(home / "qdrant", live_keys)
        assert before[f"raw_subjects/{victim}"]["full_name"] == needles[1]
        _let_go()
        assert scan_for(home, needles) == []  # sealed even before: no plaintext of theirs anywhere in the home

        backup = tmp_path / "backup"
        shutil.copytree(home, backup)  # lake, landing, vectors, ledger (its key store) and Dagster's databases
        assert not (backup.parent / "backup.kek.json").exists() and (home.parent / "home.kek.json").exists()

        rid = _cli("erase", sid).stdout.strip()
        _cli("process")
        assert "all" in _cli("verify", rid).stdout
        cert = _cli("certificate", rid, "--json").stdout
        assert "data key destroyed at" in cert and "key-encryption key rotated to version" in cert
        assert "unreadable: the subject's data key was destroyed at" in cert
        assert "sealed fields: every kept subject's fields open" in _cli("keys", "verify").stdout

        restored = tmp_path / "restored"
        shutil.copytree(backup, restored)  # put back beside the live home
        lake = LocalLake(restored / "lake")
        # 1. the project's readers with the live key store: the subject's fields open nowhere, everyone else's do.
        view = _sealed_view(lake, stores.keys())
        theirs = {k: v for k, v in before.items() if _belongs(k, v, victim, sid, data)}
        assert theirs and all(all(x is None for x in view[k].values()) for k in theirs)
        assert {k: v for k, v in view.items() if k not in theirs} == {k: v for k, v in before.items() if k not in theirs}
        payloads = _payload_texts(restored / "qdrant", stores.keys())
        lost = {k for k, v in payloads.items() if v is None}
        assert lost and all(texts_before[k] is not None for k in lost)
        assert {k: v for k, v in payloads.items() if k not in lost} == {k: v for k, v in texts_before.items() if k not in lost}
        assert all(any(n in texts_before[k] for n in needles) for k in lost)
        # 2. the project's readers with the copy's own (old) key store: nothing opens at all.
        old_book = Ledger(f"sqlite:///{restored / 'ledger.sqlite'}")
        old_keys = KeyRing(old_book.db, old_book.audit, LocalKms(home.parent / "home.kek.json"))
        with pytest.raises(KekUnusable):
            bk.read_buckets(lake, "raw_subjects", PARTITIONS[0], keys=old_keys)
        old_book.dispose()
        # 3. an independent byte scan (Parquet decoded, everything else raw): none of their fields, in either home.
        _let_go()
        assert scan_for(restored, needles) == []
        assert scan_for(home, needles) == []


def _let_go() -> None:
    """Close this process's ledger connections before reading its files as plain files: closing any descriptor of
    a SQLite file drops every POSIX lock the process holds on it, and another process may then truncate the WAL
    under a connection that believes it still holds its read lock (it then reads a malformed database)."""
    stores.default_ledger().dispose()


def _belongs(row_key: str, fields: dict, victim: str, sid: str, data: dict) -> bool:
    """Rows of the subject: their own (by key, or by id in the text's owner column)."""
    name, ident = row_key.split("/", 1)
    if name == "raw_subjects":
        return ident == victim
    return fields.get("subject_id") == sid


# ---------------------------------------------------------------- S3 with versioning, AWS KMS (moto)
@pytest.mark.slow
@pytest.mark.s3
def test_an_old_s3_object_version_restored_after_erasure_is_unreadable_for_the_subject(s3_bucket, tmp_path):
    import boto3

    from erasure_pipeline_tests.erasure_helpers import key

    bucket, env = s3_bucket
    home = tmp_path / "home"
    with project_env(home, SEALED_POLICY, ERASURE_PIPELINE_LAKE_URL=f"s3://{bucket}/lake",
                     ERASURE_PIPELINE_LANDING_URL=f"s3://{bucket}/landing", ERASURE_PIPELINE_KMS=f"aws-kms:alias/ep-{bucket}", **env):
        data = _load_demo()
        _cli("materialize")
        sid, needles = _victim(data)
        victim = key(sid)
        client = boto3.client("s3")
        saved = {}  # what a replica or a backup of the bucket holds: every object version, as bytes
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="lake/raw_"):
            for v in page.get("Versions", []):
                saved[(v["Key"], v["VersionId"])] = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        before = _sealed_view(stores.lake(), stores.keys())
        _let_go()
        old_store = tmp_path / "ledger-backup.sqlite"
        with sqlite3.connect(home / "ledger.sqlite") as a, sqlite3.connect(old_store) as b:
            a.backup(b)

        rid = _cli("erase", sid).stdout.strip()
        _cli("process")
        _cli("verify", rid)
        kms = AwsKms(f"alias/ep-{bucket}")
        assert len(saved) > 1
        for (name, _version), body in saved.items():  # every old version put back as the current object
            client.put_object(Bucket=bucket, Key=name, Body=body)
        restored = _sealed_view(stores.lake(), stores.keys())
        theirs = {k for k, v in before.items() if _belongs(k, v, victim, sid, data)}
        assert theirs and all(all(x is None for x in restored[k].values()) for k in theirs)
        assert {k: v for k, v in restored.items() if k not in theirs} == {k: v for k, v in before.items() if k not in theirs}
        for (name, _version), body in saved.items():  # independently: no cell or byte of any old version holds their fields
            table = decoded(name, body)
            if table is None:
                assert not any(n.encode() in body for n in needles)
                continue
            cells = {str(v) for c in table.column_names for v in table.column(c).to_pylist()}
            assert not any(n in c for n in needles for c in cells)
        old = Ledger(f"sqlite:///{old_store}")
        with pytest.raises(KekUnusable, match="PendingDeletion|unusable"):
            bk.read_buckets(stores.lake(), "raw_subjects", PARTITIONS[0], keys=KeyRing(old.db, old.audit, kms))
        old.dispose()


# ---------------------------------------------------------------- KMS faults
@pytest.mark.slow
@pytest.mark.s3
def test_kms_unreachable_or_disabled_is_one_line_and_the_request_resumes_on_the_next_tick(s3_bucket, tmp_path, monkeypatch):
    import boto3
    from click.testing import CliRunner

    from erasure_pipeline.app.cli import main
    from erasure_pipeline.core import names

    def next_tick() -> str:
        """The tick after the blocked-request backoff (a minute under the daemon), in this process."""
        monkeypatch.setattr(names, "BLOCKED_RETRY", dt.timedelta(0))
        out = CliRunner().invoke(main, ["process"])
        assert out.exit_code == 0, out.output
        return out.output

    from erasure_pipeline_tests.stores import default_ledger

    _bucket, env = s3_bucket
    alias = f"alias/ep-faults-{_bucket}"
    home = tmp_path / "home"
    with project_env(home, SEALED_POLICY, ERASURE_PIPELINE_KMS=f"aws-kms:{alias}", **env):
        data = _load_demo()
        dead = {"AWS_ENDPOINT_URL_KMS": "http://127.0.0.1:9"}  # nothing listens there
        os.environ.update(dead)
        try:
            first = _cli("materialize", check=False)
        finally:
            os.environ.pop("AWS_ENDPOINT_URL_KMS")
        assert first.returncode != 0 and f"KMS unavailable: aws-kms:{alias} (EndpointConnectionError), retry later" in first.stderr
        assert "Traceback" not in first.stderr + first.stdout
        _cli("materialize")  # the KMS is back: the ingest runs as if nothing happened
        sid, _needles = _victim(data)
        others = data["subjects"]["subject_id"].tolist()

        # Unreachable mid-erasure: the claim step stops before anything is written; the request waits.
        rid = _cli("erase", sid).stdout.strip()
        os.environ.update(dead)
        try:
            out = _cli("process", check=False)
        finally:
            os.environ.pop("AWS_ENDPOINT_URL_KMS")
        assert f"KMS unavailable: aws-kms:{alias}" in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
        request = default_ledger().requests.get(rid)
        assert request["status"] in ("pending", "blocked") or request.get("blocked_by"), request
        assert stores.keys().has_key(default_ledger().requests.get(rid)["subject_key"])  # nothing half-done
        assert "1 blocked by claim_requests: KMS unavailable" in _cli("process").stdout  # within the backoff: says why
        next_tick()
        assert default_ledger().requests.get(rid)["status"] == "completed"
        _cli("verify", rid)

        # The key-encryption key disabled by an operator: one line naming it; enabled again, the next tick completes.
        second = next(o for o in others if o != sid)
        rid2 = _cli("erase", second).stdout.strip()
        kms = boto3.client("kms")
        active = kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"]
        kms.disable_key(KeyId=active)
        out = _cli("process", check=False)
        assert f"key-encryption key {active} unusable in aws-kms:{alias} (Disabled)" in out.stdout + out.stderr
        assert default_ledger().requests.get(rid2)["status"] != "completed"
        kms.enable_key(KeyId=active)
        next_tick()
        assert default_ledger().requests.get(rid2)["status"] == "completed"
        _cli("verify", rid2)
        assert "every kept subject's fields open" in _cli("keys", "verify").stdout


def _opened_in_raw_steps(monkeypatch) -> dict[str, set[str]]:
    """Raw node -> the sealed columns its steps open from now on (readers below raw open what they read, not counted).
    Each raw step starts with no subject's skeleton met, as in a step process of the multiprocess executor."""
    from erasure_pipeline.kinds.raw import Raw

    opened: dict[str, set[str]] = {}
    steps: list[str] = []
    real_open, real_compute = crypto.open_table, Raw.compute

    def spy(table, keys, name="a lake object", *args, **kwargs):
        out = real_open(table, keys, name, *args, **kwargs)
        columns = set(crypto.sealed_columns(table.schema)) - set(out.carried)
        if steps and columns:
            opened.setdefault(steps[-1], set()).update(columns)
        return out

    def raw_step(self, run):
        steps.append(run.node.name)
        identity._SKELETONS.clear()
        try:
            return real_compute(self, run)
        finally:
            steps.pop()

    monkeypatch.setattr(crypto, "open_table", spy)
    monkeypatch.setattr(Raw, "compute", raw_step)
    return opened


@pytest.mark.slow
def test_an_erasure_carries_the_other_rows_of_a_sealed_bucket_as_stored_and_opens_none_of_them(tmp_path, monkeypatch):
    """Removing a subject from the buckets of datasets without text columns keeps every other row as it was
    stored, sealed cells byte for byte: the raw step opens no sealed cell there and seals none again."""
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.app.runner import get_instance, materialize_all
    from erasure_pipeline.core.identity import partition_key, shard_of
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.erasure.intake import erase
    from erasure_pipeline_tests.erasure_helpers import key

    with project_env(tmp_path / "home", SEALED_POLICY):
        data = _load_demo()
        policy = load_policy()
        defs, instance = build_definitions(policy), get_instance()
        assert materialize_all(defs, instance).success
        sid, _needles = _victim(data)
        victim = key(sid)
        part, bucket = partition_key(shard_of(victim, policy.shards)), bk.bucket_of(victim, policy.lake.buckets)
        lake = stores.lake()
        names = {t: bk.object_name(t, part, bucket) for t in ("raw_subjects", "raw_events")}
        before = {t: pq.read_table(io.BytesIO(lake.read_bytes(n))) for t, n in names.items()}
        assert before["raw_subjects"].schema.field("full_name").type == pa.binary()  # stored sealed
        opened = _opened_in_raw_steps(monkeypatch)
        rid = erase(sid)[0]
        assert not drain(defs, instance).failed_runs
        assert stores.default_ledger().requests.get(rid)["status"] == "completed"
        # tickets has a text column (an id inside another subject's text is redacted): opened there only
        assert set(opened) <= {"raw_tickets"}
        for t, n in names.items():
            after = pq.read_table(io.BytesIO(lake.read_bytes(n)))
            hit = pc.equal(before[t].column("subject_key"), victim)
            assert after.equals(before[t].filter(pc.invert(hit)), check_metadata=True)
            assert pc.sum(hit).as_py() >= (1 if t == "raw_subjects" else 0)
        # what was carried still opens for everyone else, and not for the subject (their key is gone)
        rows = bk.read_buckets(lake, "raw_subjects", part, [bucket], keys=stores.keys())
        assert len(rows) and victim not in set(rows["subject_key"]) and rows["full_name"].notna().all()


@pytest.mark.slow
def test_declaring_personal_fields_on_a_built_home_reseals_it_and_leaves_no_plaintext_behind(tmp_path):
    from erasure_pipeline_tests.erasure_helpers import key

    home = tmp_path / "home"
    with project_env(home, SMALL_POLICY):
        data = _load_demo()
        _cli("materialize")
        sid, needles = _victim(data)
        _let_go()
        texts = [p["text"] for s in range(4) for p in EdgeStore(root=home / "qdrant").payloads(s)]
        assert scan_for(home / "lake", needles) and any(sid in t for t in texts)  # in the clear, as declared
        (home / "policy.yaml").write_text(SEALED_POLICY)
        _cli("materialize")  # the raw partitions are stale (datasets changed): rebuilt sealed, vectors replaced
        _let_go()
        assert scan_for(home, needles) == []  # lake, Qdrant's segments, landing (removed: keep_days 0), ledger
        texts = [p["text"] for s in range(4) for p in EdgeStore(root=home / "qdrant").payloads(s)]
        assert texts and all(t.startswith(crypto.PAYLOAD_PREFIX) for t in texts)  # every point replaced, sealed
        assert _sealed_view(stores.lake(), stores.keys())[f"raw_subjects/{key(sid)}"]["full_name"] == needles[1]
        assert "every kept subject's fields open" in _cli("keys", "verify").stdout


def test_an_ingest_whose_new_keys_could_not_be_stored_writes_nothing_and_the_next_one_stages_again(tmp_path, monkeypatch):
    """Staging seals new subjects' fields under keys held in memory until every file is staged; when storing them
    fails (another writer raced it, or the process died), no raw bucket was written under them and the next ingest
    stages the batch afresh: every subject's fields open."""
    from erasure_pipeline.app.runner import RunFailed, get_instance, materialize_all
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions

    with project_env(tmp_path / "home", SEALED_POLICY.replace("landing: {keep_days: 0}\n", "")):
        data = _load_demo()
        defs, instance = build_definitions(load_policy()), get_instance()
        real = PendingKeys.commit

        def raced(self):
            raise KeysRaced("1 data key(s) were made by another writer while this batch was staged; it is staged again on its next attempt")

        monkeypatch.setattr(PendingKeys, "commit", raced)
        with pytest.raises(RunFailed, match="staged again"):
            materialize_all(defs, instance)
        lake, ring = stores.lake(), stores.keys()
        assert not [n for n in lake.list("") if n.startswith(RAW)] and ring.status()["data_keys"] == 0
        monkeypatch.setattr(PendingKeys, "commit", real)
        assert materialize_all(defs, instance).success
        view = _sealed_view(lake, ring)
        subjects = {k: v for k, v in view.items() if k.startswith("raw_subjects/")}
        assert len(subjects) == len(data["subjects"]) and all(v["full_name"] and v["phone"] for v in subjects.values())
        assert ring.status()["data_keys"] == len(data["subjects"])


def test_the_training_set_orders_by_the_sealed_id_as_stored_and_trains_on_what_opening_it_gives(tmp_path, monkeypatch):
    """The training step reads the features dataset's sealed id only to order a subject's rows: it gets it as stored
    (no cell opened) and builds the same training set as when it opened it."""
    from erasure_pipeline.app.runner import get_instance, materialize_all
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.kinds import raw_rows
    from erasure_pipeline.ml import features as ft

    with project_env(tmp_path / "home", SEALED_POLICY):
        _load_demo()
        policy = load_policy()
        assert materialize_all(build_definitions(policy), get_instance()).success
        env, tables = stores.default_env(), ("subjects", "events", "tickets")
        stored = {p: {t: env.read_rows(f"raw_{t}", p) for t in tables} for p in PARTITIONS}
        monkeypatch.setattr(raw_rows, "ordered_by", lambda contract: frozenset())  # as before: the id opened
        opened = {p: {t: env.read_rows(f"raw_{t}", p) for t in tables} for p in PARTITIONS}
        for p in PARTITIONS:
            ids = stored[p]["subjects"]
            assert ids.attrs["carried"].keys() == {"subject_id"} and ids["subject_id"].map(type).eq(bytes).all()
            assert "full_name" not in ids and opened[p]["subjects"]["subject_id"].map(type).eq(str).all()
            for model in policy.models:
                pd.testing.assert_frame_equal(ft.training_rows(stored[p], policy, model, where=p).rows,
                                              ft.training_rows(opened[p], policy, model, where=p).rows)


@pytest.mark.slow
def test_a_raw_step_carries_the_personal_fields_it_does_not_read_and_writes_what_opening_them_would(tmp_path, monkeypatch):
    """An ingest opens only the sealed columns its rewrite reads (the id, unless it is the subject column, texts,
    timestamp, a reader's columns) and carries the others from staging and the lake into the buckets it writes as
    stored. Ingesting the same files again writes nothing new, carried or with every column opened and sealed
    again: the same bytes either way (the subjects' rows matched and ordered on their subject key and sealed id
    as on their plaintext id)."""
    from erasure_pipeline.app.runner import get_instance, materialize_all
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.kinds import raw

    with project_env(tmp_path / "home", SEALED_POLICY.replace("landing: {keep_days: 0}\n", "")):
        _load_demo()
        defs, instance = build_definitions(load_policy()), get_instance()
        lake = stores.lake()
        def manifests() -> dict[str, bytes]:
            return {f"{n}/{p}": lake.read_bytes(bk.manifest_name(n, p)) for n in RAW for p in PARTITIONS}

        opened = _opened_in_raw_steps(monkeypatch)
        assert materialize_all(defs, instance).success
        built = manifests()
        assert all(built.values())
        # full_name, phone, events' subject_id and the subjects' id (their subject column, ``raw_rows.row_key``) carried;
        # the skeletons made by the staging pass (``landing.SKELETON``): no raw step opens an id, even in a process
        # that met none of these subjects (a step process of the multiprocess executor)
        assert opened == {"raw_tickets": {"text"}}
        opened.clear()
        assert materialize_all(defs, instance).success  # the same files again: staged and lake rows carried
        assert manifests() == built and opened == {"raw_tickets": {"text"}}
        opened.clear()
        monkeypatch.setattr(raw, "carried_in_step", lambda contract, stones: frozenset())
        assert materialize_all(defs, instance).success  # every sealed column opened and sealed again
        assert manifests() == built
        assert opened["raw_events"] == {"subject_id"} and opened["raw_subjects"] == {"subject_id", "full_name", "phone"}
        view = _sealed_view(lake, stores.keys())
        assert view and all(v.get("full_name") for k, v in view.items() if k.startswith("raw_subjects/"))

"""Lake, landing scrub and the Qdrant vector store (embedded mode)."""

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from erasure_pipeline.app.demo import demo_graph, demo_policy
from erasure_pipeline.core import identity
from erasure_pipeline.core.contracts import TableContract, contracts_for
from erasure_pipeline.core.errors import DamagedObject, PipelineError
from erasure_pipeline.core.identity import Keyer
from erasure_pipeline.core.tombstones import Tombstones
from erasure_pipeline.ml.embed import chunk_text, embed, point_id
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores import superseded
from erasure_pipeline.stores.lake_backends import LocalLake
from erasure_pipeline.stores.landing import STAGING, read_landing_table, read_staged, scrub_landing, scrub_staging, staged_files
from erasure_pipeline_tests import stores

TICKETS = contracts_for(demo_policy())["tickets"]


def test_local_lake_is_atomic_and_refuses_path_tricks(tmp_path):
    lake = LocalLake(tmp_path)
    df = pd.DataFrame({"subject_key": ["a", "b"], "x": [1, 2]})
    h1 = lk.write_table(lake, "raw_events", "shard_00", df)
    assert h1 == lk.write_table(lake, "raw_events", "shard_00", df.copy())  # deterministic bytes
    pd.testing.assert_frame_equal(lk.read_table(lake, "raw_events", "shard_00"), df)
    assert lake.list() == ["raw_events/shard_00.parquet"]
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            lake.write_bytes(bad, b"")


def test_a_column_the_object_does_not_store_is_named_not_called_damage(tmp_path):
    """A reader asking for a column written under an earlier declaration learns which one, and that the
    object is readable; bytes that are not Parquet stay "damaged"."""
    lake = LocalLake(tmp_path)
    lk.write_table(lake, "raw_subjects", "shard_00", pd.DataFrame({"subject_key": ["a"], "age": [30]}))
    data = lake.read_bytes("raw_subjects/shard_00.parquet")
    with pytest.raises(PipelineError, match="has no column region") as caught:
        lk.read_parquet(data, ["subject_key", "region"], "raw_subjects/shard_00.parquet")
    assert not isinstance(caught.value, DamagedObject)
    assert lk.read_parquet(data, ["age"]).table.column("age").to_pylist() == [30]
    with pytest.raises(DamagedObject, match="cannot be read as Parquet"):
        lk.read_parquet(data[: len(data) // 2], ["age"], "raw_subjects/shard_00.parquet")


def test_flagged_rows_written_last_are_read_from_their_own_row_group_and_any_other_layout_reads_the_same_rows(tmp_path):
    """A table written with its flagged rows last (``split``) keeps them in a row group of their own, which
    ``read_flagged`` reads alone; a table of one mixed row group (written before) reads the same rows by filtering;
    a missing column is named, bytes that are not Parquet are damage."""
    import pyarrow.parquet as pq

    df = pd.DataFrame({"subject_key": list("abcdef"), "holdout": [False, False, False, False, True, True], "x": [1.0, 2, 3, 4, 5, 6]})
    split = lk.table_to_bytes(df, split=4)
    mixed = lk.table_to_bytes(df.sample(frac=1.0, random_state=1).sort_values("subject_key", ascending=False))
    meta = pq.ParquetFile(io.BytesIO(split)).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [4, 2]
    assert pq.ParquetFile(io.BytesIO(mixed)).metadata.num_row_groups == 1
    assert lk.read_flagged(split, ["x"], "holdout").column("x").to_pylist() == [5.0, 6.0]
    assert lk.read_flagged(mixed, ["x", "subject_key"], "holdout").to_pydict() == {"x": [6.0, 5.0], "subject_key": ["f", "e"]}
    assert lk.table_to_bytes(df, split=0) == lk.table_to_bytes(df) == lk.table_to_bytes(df, split=6)  # one side empty: one group
    none = lk.table_to_bytes(df.assign(holdout=False), split=6)
    assert lk.read_flagged(none, ["x"], "holdout").num_rows == 0
    with pytest.raises(PipelineError, match="has no column label"):
        lk.read_flagged(split, ["label"], "holdout", "training/shard_00.parquet")
    with pytest.raises(DamagedObject, match="cannot be read as Parquet"):
        lk.read_flagged(split[: len(split) // 2], ["x"], "holdout", "training/shard_00.parquet")


def test_landing_scrub_removes_only_tombstoned_rows(tmp_path):
    landing = LocalLake(tmp_path)
    landing.write_bytes("tickets/t.csv", b"ticket_id,subject_id,created_at,text\nt1,a@x,2026-01-01,hi a@x\nt2,b@x,2026-01-01,hi b@x\n")
    pepper = b"p"
    keyer = Keyer(pepper, 4)
    assert list(scrub_landing(landing, TICKETS, Tombstones(keyer, frozenset({keyer.key("a@x")})))) == ["tickets/t.csv"]
    text = landing.read_bytes("tickets/t.csv").decode()
    assert "a@x" not in text and "b@x" in text
    assert read_landing_table(landing, TICKETS, keyer)["ticket_id"].tolist() == ["t2"]


def test_staging_files_on_two_threads_writes_what_one_thread_writes_byte_for_byte(tmp_path):
    """The claim stages landing files two at a time; the staged objects (sealed cells included: sealing is
    deterministic under one key store) and what the batch records are those of one file at a time."""
    from erasure_pipeline.app import demo
    from erasure_pipeline.app.runner import env_of
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.stores.landing import STAGING, landing_files, stage
    from erasure_pipeline_tests.conftest import project_env

    with project_env(tmp_path / "home", demo.DEMO_POLICY.read_text()):
        demo.write_landing(stores.landing(), demo.generate(300, 5), subjects_per_file=50)
        env = env_of(build_definitions(load_policy()))
        files = landing_files(env.landing, contracts_for(env.policy))
        stones = Tombstones.load(env.ledger, env.keyer)
        one, two = (stage(env.lake, env.landing, files, env.keyer, batch, env.policy.lake.buckets, None, stones, env.keys, workers=n)
                    for batch, n in (("one", 1), ("two", 2)))
        assert len(files) >= 12 and one.rows == two.rows > 0 and one.shards == two.shards
        assert (one.index_entries, one.without_subject, one.scrubbed) == (two.index_entries, two.without_subject, two.scrubbed)
        staged = {n.removeprefix(f"{STAGING}/one/"): env.lake.read_bytes(n) for n in env.lake.list(f"{STAGING}/one/")}
        assert staged == {n.removeprefix(f"{STAGING}/two/"): env.lake.read_bytes(n) for n in env.lake.list(f"{STAGING}/two/")}


def test_chunking_and_embedding_are_deterministic():
    text = "First sentence here. " * 40
    chunks = chunk_text(text, 100)
    assert all(len(c) <= 100 for c in chunks) and "".join(chunks).replace(" ", "") == text.replace(" ", "")
    v = embed(["billing problem", "billing problem", "login fails"], 64)
    assert v.shape == (3, 64) and np.allclose(np.linalg.norm(v, axis=1), 1)
    np.testing.assert_array_equal(v[0], v[1])
    assert point_id("t1", 0, "x") == point_id("t1", 0, "x") != point_id("t1", 0, "y")


def _store(kind: str, root):
    from erasure_pipeline.stores.qdrant import ClientStore
    from erasure_pipeline.stores.vectors import EdgeStore

    return {"edge": lambda: EdgeStore(root), "client-per-shard": lambda: ClientStore(root=root, shared=False),
            "client-shared-collection": lambda: ClientStore(root=root, shared=True)}[kind]()


def _points(ids, texts, payloads, dims=32):
    from erasure_pipeline.stores.vectors import PointData

    return [PointData(i, v, p) for i, v, p in zip(ids, embed(texts, dims), payloads, strict=True)]


@pytest.mark.parametrize("kind", ["edge", "client-per-shard", "client-shared-collection"])
def test_vector_store_apply_delete_by_subject_and_physical_removal(tmp_path, kind):
    """Every back-end behind one interface: Qdrant Edge (the embedded default), and qdrant-client in
    per-shard local stores and in the server's layout (one collection filtered by shard)."""
    store = _store(kind, tmp_path)
    other = [point_id(f"o{i}", 0, "billing other shard") for i in range(5)]
    store.apply(0, [], _points(other, ["billing other shard"] * 5,
                               [{"subject_key": "k0", "group": "t/b_000", "shard": 0, "text": "x"} for _ in range(5)]), 32)
    texts = [f"ticket {i} from person-{i}@secret.example about billing" for i in range(30)]
    ids = [point_id(f"t{i}", 0, t) for i, t in enumerate(texts)]
    payloads = [{"subject_key": f"k{i % 3}", "group": f"t/b_00{i % 2}", "shard": 1, "text": t} for i, t in enumerate(texts)]
    store.apply(1, [], _points(ids, texts, payloads), 32)
    assert len(store.point_ids(1)) == 30 and len(store.group_ids(1, "t/b_001")) == 15
    assert store.count_subjects(1, ["k0"]) == 10
    assert store.delete_subjects(1, ["k0"]) == (10, 0)
    assert store.count_subjects(1, ["k0"]) == 0 and len(store.point_ids(1)) == 20
    assert store.count_subjects(0, ["k0"]) == 5 and len(store.point_ids(0)) == 5  # the other shard is untouched
    store.apply(1, sorted(store.group_ids(1, "t/b_001")), [], 32)  # a group's points removed by id
    assert len(store.point_ids(1)) == 10 and len(store.point_ids(0)) == 5
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"person-0@secret.example" not in on_disk and b"person-1@secret.example" not in on_disk  # deleted: gone from disk
    assert b"person-2@secret.example" in on_disk
    hits = store.search(embed(["billing"], 32)[0], [1], limit=3)
    assert len(hits) == 3 and all(h[1]["subject_key"] != "k0" and h[1]["shard"] == 1 for h in hits)


def test_the_byte_scan_finds_keys_across_blocks_and_holes_and_searches_for_wanted_keys_alone(tmp_path):
    """The proof's scan of a vector store's files: every key (the pattern) or only the wanted ones (a search),
    the same answer, in a sparse file whose key straddles the 8 MiB read blocks."""
    from erasure_pipeline.stores.vectors import MIB, keys_in_files

    a, b, c, absent = ("a" * 63 + "1"), ("b" * 63 + "2"), ("c" * 63 + "3"), ("d" * 64)
    with open(tmp_path / "segment.dat", "wb") as f:
        head = b"payload " + a.encode()
        f.write(head + b"x" * (8 * MIB - 30 - len(head)))  # data from 0: the 8 MiB block boundary cuts the next key
        f.write(b.encode())
        f.seek(40 * MIB)  # a hole of 32 MiB, then a key
        f.write(c.encode() + b"\0")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text(f'{{"k": "{a}"}}')
    assert keys_in_files(tmp_path) == {a, b, c}
    assert keys_in_files(tmp_path, [b, absent]) == {b}
    assert keys_in_files(tmp_path, [c]) == {c} and keys_in_files(tmp_path, [absent]) == set()
    assert keys_in_files(tmp_path / "nowhere", [a]) == set()


def test_the_vector_stores_room_check_counts_what_is_there_when_other_processes_remove_files_beside_it(tmp_path, monkeypatch):
    """``ensure_room`` walks the store's folder while a multiprocess run's other steps write and compact their
    shards (Edge makes and removes folders): a folder or file gone between listing and reading is not counted,
    never an error (a ``Path.rglob`` walk failed a build with FileNotFoundError)."""
    import os

    from erasure_pipeline.stores import vectors

    for folder, size in (("shard_00", 8192), ("shard_01/segments", 4096), ("shard_02/tmp", 4096)):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "data").write_bytes(b"x" * size)
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(path=".", *a):  # shard_02/tmp removed by its process after its parent was listed
        if str(path).endswith("tmp"):
            raise FileNotFoundError(path)
        return real_scandir(path, *a)

    def stat(path, *a, **k):  # shard_01's segment file compacted away after its folder was listed
        if str(path).endswith(os.path.join("segments", "data")):
            raise FileNotFoundError(path)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    assert vectors.blocks_used(tmp_path) == real_stat(tmp_path / "shard_00" / "data").st_blocks * 512
    vectors.ensure_room(tmp_path, "vector store")  # room enough: no error


def test_graph_table_derives_order_merges_and_the_fields_behind_each_code_version():
    graph = demo_graph()
    assert [n.name for n in graph.raw_nodes] == ["raw_subjects", "raw_events", "raw_tickets"]
    assert {n.name for n in graph.merge_nodes} == {"anonymised_cohorts", "cohort_model", "ensemble_model"}
    assert {n.name for n in graph.subject_nodes} == {"raw_subjects", "raw_events", "raw_tickets", "training_shards", "vector_index"}
    assert graph.descendants(["raw_tickets"]) == {"vector_index"}
    assert graph.descendants(["raw_events"]) == {"training_shards", "shard_models", "ensemble_model"}
    # a node's code version reads its own fields and its ancestors'
    assert graph.policy_fields("cohort_model") == ("cohorts", "datasets.subjects", "identity", "k_min", "lake", "seed", "shards")
    assert set(graph.policy_fields("ensemble_model")) >= {"models.model.estimator", "models.model.label", "consent", "features",
                                                         "datasets.events", "shards"}
    assert "datasets.tickets" not in graph.policy_fields("ensemble_model")
    names = graph.names
    for node in graph.nodes:
        assert all(names.index(p) < names.index(node.name) for p in node.parents)


def test_certificate_marks_affected_only_what_held_the_subject_or_changed_below_it():
    from types import SimpleNamespace

    from erasure_pipeline.erasure.certify import affected_nodes

    env = SimpleNamespace(graph=demo_graph())
    changed = lambda: SimpleNamespace(changed=True)
    same = SimpleNamespace(changed=False)
    # a subject without consent: raw rows only; training_shards was rebuilt but did not change
    outcomes = {("raw_subjects", "shard_01"): changed(), ("raw_events", "shard_01"): changed(),
                ("cohort_partials", "shard_01"): changed(), ("training_shards", "shard_01"): same,
                ("anonymised_cohorts", None): changed(), ("cohort_model", None): changed()}
    footprint = {"raw_subjects": {"shard_01": 1}, "raw_events": {"shard_01": 12}}
    assert affected_nodes(env, footprint, outcomes, "shard_01") == {
        "raw_subjects", "raw_events", "cohort_partials", "anonymised_cohorts", "cohort_model"}
    # another subject's change in the same run is not this subject's: nothing held it
    assert affected_nodes(env, {}, outcomes, "shard_01") == set()


@pytest.mark.parametrize("name", ["logistic_regression", "random_forest", "hist_gradient_boosting", "ridge",
                                  "random_forest_regressor", "sklearn.svm.LinearSVC"])
def test_model_fingerprint_survives_a_pickle_round_trip_for_every_estimator(name):
    """A model's data version is its state, not its pickle bytes or any memory address (tree objects included)."""
    from erasure_pipeline.core.policy import ModelSpec
    from erasure_pipeline.ml.estimators import build_estimator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    task = "regression" if name in ("ridge", "random_forest_regressor") else "binary"
    y = X[:, 0] + rng.normal(size=120) if task == "regression" else (X[:, 0] > 0).astype(int)
    model = build_estimator(ModelSpec(label="y", task=task, estimator=name, params={"random_state": 0} if "forest" in name else {}))
    model.fit(X, y)
    saved = {"model": model, "features": ["a", "b", "c"]}
    assert lk.model_fingerprint(saved) == lk.model_fingerprint(lk.loads_model(lk.dumps_model(saved)))


# ---------------------------------------------------------------- ids sent again under another subject
def _people_file(number: int, pairs: list[tuple[str, str]], shards: int = 2):
    contract = TableContract("people", "person_id", "email")
    keys = [k * 64 for _i, k in pairs]
    frame = pd.DataFrame({"person_id": [i for i, _k in pairs], "subject_key": keys, "shard": identity.shards_of(pd.Series(keys), shards)})
    return contract, superseded.Sighting.of(number, frame, contract)


def test_retractions_name_each_older_attribution_of_an_id_in_its_own_shard_and_never_the_id(tmp_path):
    keyer = identity.Keyer(b"p" * 32, 2, ())
    lake = stores.lake_at(str(tmp_path))
    shard = {k: identity.shard_of(k * 64, 2) for k in "abcd"}
    contract, first = _people_file(0, [("p1", "a"), ("p2", "b"), ("p3", "d")])
    _, second = _people_file(1, [("p1", "c"), ("p2", "b")])
    _, third = _people_file(2, [("p3", "a")])
    in_lake = pd.DataFrame({"id": ["p3", "p9"], "subject_key": ["b" * 64, "d" * 64], "shard": [shard["b"], shard["d"]]})

    def held():
        return pa.Table.from_pandas(in_lake, preserve_index=False)

    got = superseded.resolve(lake, "_staging", "b1", contract, [third, first, second], keyer, held)  # any order: by number
    retracted = {s: superseded.read(lake, "_staging", "b1", "people", s) for s in (0, 1)}
    pairs = {(s, k[0], h) for s, df in retracted.items() if df is not None for k, h in zip(df["subject_key"], df["id_hash"], strict=True)}
    h = dict(zip(["p1", "p3"], superseded.id_hashes(keyer, ["p1", "p3"]), strict=True))
    # p1: a -> c (a's copy goes); p2: b twice (nothing); p3: d in the batch and b in the lake, then a (both go)
    assert pairs == {(shard["a"], "a", h["p1"]), (shard["d"], "d", h["p3"]), (shard["b"], "b", h["p3"])}
    assert got == {s for s, _k, _h in pairs}
    for s in got:
        data = lake.read_bytes(superseded.retracted_name("_staging", "b1", "people", s))
        assert b"p1" not in data and b"p3" not in data  # a keyed hash of the id, never the id


def test_an_id_sent_again_under_its_own_subject_or_a_dataset_keyed_by_the_subject_retracts_nothing(tmp_path):
    keyer = identity.Keyer(b"p" * 32, 2, ())
    lake = stores.lake_at(str(tmp_path))
    contract, seen = _people_file(0, [("p1", "a"), ("p2", "b")])
    held = lambda: pa.table({"id": ["p1"], "subject_key": ["a" * 64], "shard": [identity.shard_of("a" * 64, 2)]})
    assert superseded.resolve(lake, "_staging", "b1", contract, [seen], keyer, held) == set()
    assert superseded.resolve(lake, "_staging", "b1", contract, [], keyer, held) == set()
    by_subject = TableContract("people", "email", "email")
    assert superseded.resolve(lake, "_staging", "b1", by_subject, [seen], keyer, held) == set()
    assert lake.list("_staging/") == []


def test_a_batch_of_a_million_ids_finds_the_one_sent_twice_and_retracts_it(tmp_path):
    """Past 1 000 000 ids the batch's ids are checked for repeats a group at a time (by their last bytes), not in
    one hash table: the one id sent again, in another file under another subject, is still found."""
    keyer = identity.Keyer(b"p" * 32, 2, ())
    lake = stores.lake_at(str(tmp_path))
    contract = TableContract("people", "person_id", "email")
    n = 1_100_000
    ids = [f"p{i}" for i in range(n)]
    frame = pd.DataFrame({"person_id": ids, "subject_key": ["a" * 64] * n, "shard": identity.shard_of("a" * 64, 2)})
    first = superseded.Sighting.of(0, frame, contract)
    assert superseded.resolve(lake, "_staging", "b1", contract, [first], keyer, None) == set()  # all distinct
    _, again = _people_file(1, [("p765432", "c")])
    assert superseded.resolve(lake, "_staging", "b1", contract, [first, again], keyer, None) == {identity.shard_of("a" * 64, 2)}
    retracted = superseded.read(lake, "_staging", "b1", "people", identity.shard_of("a" * 64, 2))
    assert retracted["id_hash"].tolist() == superseded.id_hashes(keyer, ["p765432"])


def test_dropping_retracted_rows_takes_the_pair_only():
    keyer = identity.Keyer(b"p" * 32, 2, ())
    frame = pd.DataFrame({"person_id": ["p1", "p2", "p1", "p3"], "subject_key": ["a" * 64, "a" * 64, "c" * 64, "b" * 64]})
    frame.attrs["carried"] = {"x": "y"}
    retracted = pd.DataFrame({"subject_key": ["a" * 64, "b" * 64], "id_hash": superseded.id_hashes(keyer, ["p1", "p9"])})
    out, n = superseded.drop(frame, retracted, "person_id", keyer)
    assert n == 1 and out["person_id"].tolist() == ["p2", "p1", "p3"] and out["subject_key"].tolist() == ["a" * 64, "c" * 64, "b" * 64]
    assert out.attrs["carried"] == {"x": "y"}
    assert superseded.drop(frame, None, "person_id", keyer) == (frame, 0)
    assert superseded.drop(None, retracted, "person_id", keyer) == (None, 0)


def test_an_erasure_scrubs_a_staged_retraction_of_the_subject_and_reading_the_shards_rows_skips_it(tmp_path):
    keyer = identity.Keyer(b"p" * 32, 2, ())
    lake = stores.lake_at(str(tmp_path))
    contract, first = _people_file(0, [("p1", "a"), ("p2", "b")])
    _, second = _people_file(1, [("p1", "c"), ("p2", "d")])
    shards = superseded.resolve(lake, STAGING, "b1", contract, [first, second], keyer, None)
    assert shards and all(superseded.retracted_name(STAGING, "b1", "people", s) in staged_files(lake) for s in shards)
    assert all(read_staged(lake, "b1", contract, s) is None for s in shards)  # a retraction is not a staged row
    assert scrub_staging(lake, {"a" * 64}) == 1  # the erased subject's retraction goes, the other's stays
    left = pd.concat([superseded.read(lake, STAGING, "b1", "people", s) for s in shards])
    assert left["subject_key"].tolist() == ["b" * 64]


def test_split_by_bucket_gives_each_buckets_rows_in_the_frames_order():
    from erasure_pipeline.stores.buckets import split_by_bucket

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"id": [f"e{i:04d}" for i in range(500)], "v": rng.random(500)}).astype({"id": "string[pyarrow]"})
    in_bucket = rng.choice([0, 2, 3, 7], size=500)  # buckets 1, 4, 5 and 6 hold no row
    got = split_by_bucket(frame, in_bucket, range(8))
    for b in range(8):
        want = frame[in_bucket == b].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[b], want)
    assert split_by_bucket(frame.iloc[0:0], np.zeros(0, dtype=np.int64), [0, 1])[1].columns.tolist() == ["id", "v"]

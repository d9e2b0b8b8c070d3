"""Erasure end to end: one run per tick over exactly the partitions its subjects touched, proof, certificate."""

import json

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain
from erasure_pipeline.core import identity, names
from erasure_pipeline.defs import runtime
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.kinds.cohorts import noise_key
from erasure_pipeline.ml import cohorts as cm
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import PEPPER, defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import (
    key,
    landing_frames,
    materialised_partitions,
    max_storage_id,
    pick_subjects,
    provenance_mismatches,
    scan_for,
)
from erasure_pipeline_tests.injected import certify_outage, injected
from erasure_pipeline_tests.stores import default_ledger

NEVER_SEEN = "nobody.ever@nowhere.example"
MERGES = {"anonymised_cohorts", "cohort_model", "ensemble_model"}


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_sensor_asks_for_one_run_per_tick_naming_request_ids_only(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    subjects, _ = landing_frames(policy.shards)
    shard0 = subjects[subjects["shard"] == 0]["subject_id"].tolist()[:2]
    shard1 = subjects[subjects["shard"] == 1]["subject_id"].tolist()[:1]
    rids = [erase(s)[0] for s in [*shard0, *shard1, NEVER_SEEN]]
    sensor = defs.resolve_sensor_def("erasure_sensor")
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        first = sensor.evaluate_tick(ctx)
    (request,) = first.run_requests
    assert request.job_name == names.ERASURE_JOB and request.run_key == request.tags[names.BATCH]
    config = request.run_config["ops"]["claim_requests"]["config"]
    assert sorted(config["request_ids"]) == sorted(rids) and config["batch_id"] == request.run_key
    assert set(request.tags[names.REQUESTS].split(",")) == set(rids)
    blob = json.dumps([request.tags, request.run_key, request.run_config])
    assert "@" not in blob and not any(key(s) in blob for s in [*shard0, *shard1])
    # evaluating wrote nothing: every request is still pending, the no-data one too
    book = default_ledger()
    assert {book.requests.get(r)["status"] for r in rids} == {"pending"}
    # a second tick is repeat-safe: the same run again
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        second = sensor.evaluate_tick(ctx)
    assert [r.run_key for r in second.run_requests] == [request.run_key]


@pytest.mark.executor
def test_acceptance_five_requests_one_run_exact_partitions_certificates_and_no_identifier_left(demo_home):
    inst = instance()
    _defs, policy = defs_and_policy()
    chosen = pick_subjects(policy.shards, with_tickets=3, without_tickets=1)
    assert len({s for _, s in chosen}) == 4
    no_ticket_shard = chosen[3][1]
    ids = [sid for sid, _ in chosen] + [NEVER_SEEN]
    qdrant_bytes = b"".join(p.read_bytes() for p in (demo_home / "qdrant").rglob("*") if p.is_file())
    assert all(key(sid).encode() in qdrant_bytes for sid, _ in chosen[:3])  # the byte scan below can see keys
    start = max_storage_id(inst)
    rids = []
    for sid in ids:
        out = _cli("erase", sid, "--reason", "asked by email")
        assert out.exit_code == 0
        rids.append(out.stdout.strip())
    dup = _cli("erase", ids[0])
    assert dup.stdout.strip() == rids[0] and "already exists" in dup.stderr
    out = _cli("process")
    assert out.exit_code == 0, out.output
    assert "1 runs, 0 failed" in out.output
    book = default_ledger()
    for rid in rids:
        assert book.requests.get(rid)["status"] == "completed"
        assert book.requests.get(rid)["attempts"] == 1  # claimed once by its run, not once per raw step
        assert [e["event"] for e in book.audit.entries(rid)].count("in_progress") == 1
        v = _cli("verify", rid)
        assert v.exit_code == 0, v.output
        cert = json.loads(_cli("certificate", rid, "--json").output)
        assert {"request_id", "request_date", "anonymised_data_subject", "datasets", "completion_date", "residual_risk", "exception"} <= set(cert)
    # one run: exactly the touched shards' partitions, and each merge once
    runs = [r for r in inst.get_runs() if r.job_name == names.ERASURE_JOB]
    assert len(runs) == 1 and runs[0].is_success
    touched = {identity.partition_key(s) for _, s in chosen}
    done = materialised_partitions(inst, start)
    assert {p for _, p in done if p is not None} == touched
    assert {a for a, p in done if p is None} == {*MERGES, "erasure_certificates"}
    merge_events = [e for e in inst.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                    if e.dagster_event.asset_key.to_user_string() in MERGES]
    assert len(merge_events) == 3
    assert ("vector_index", identity.partition_key(no_ticket_shard)) not in done
    assert ("raw_tickets", identity.partition_key(no_ticket_shard)) not in done
    cert_no_tickets = book.certificates.get(rids[3])[0]
    vec = next(d for d in cert_no_tickets["datasets"] if d["dataset"].startswith("vector_index"))
    assert vec["action"] == "NO_DATA" and vec["data_present"] == "no"
    cert_with_tickets = book.certificates.get(rids[0])[0]
    actions = {d["dataset"].split("[")[0]: d["action"] for d in cert_with_tickets["datasets"]}
    assert actions["vector_index"] == "VECTOR_DELETE" and actions["raw_events"] == "RAW_REWRITE"
    assert book.certificates.get(rids[4])[0]["data_present"] is False  # the never-seen subject: NO_DATA, same run
    # certificates are on the run as Markdown metadata
    cert_md = inst.get_latest_materialization_event(dg.AssetKey("erasure_certificates")).asset_materialization.metadata["certificates"]
    assert "Erasure certificate" in cert_md.value
    # nothing anywhere in the project home still holds the raw ids
    assert scan_for(demo_home, ids) == []
    # and the Qdrant Edge shards' files (segments, payload storage) do not hold their keys either
    # (the ledger does, as tombstones: it is what keeps them out)
    qdrant = [p for p in (demo_home / "qdrant").rglob("*") if p.is_file()]
    assert qdrant and not any(key(i).encode() in p.read_bytes() for p in qdrant for i in ids)


@pytest.mark.executor
def test_two_shards_in_one_tick_merge_once_from_both_post_erasure_partials(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    (a, sa_), (b, sb) = pick_subjects(policy.shards, with_tickets=2)
    erase(a), erase(b)
    result = drain(defs, inst)
    assert len(result.runs) == 1 and not result.failed_runs
    store = stores.lake()
    partials = [stores.table(store, "cohort_partials", p) for p in identity.partition_keys(policy.shards)]
    merged = cm.merge_partials(partials)
    c = policy.cohorts
    expected = cm.publish(merged, k_min=policy.k_min, measures=c.measures, clip=c.measure_clip, epsilon=c.noise_epsilon,
                          noise_key=noise_key(PEPPER.encode()))
    pd.testing.assert_frame_equal(stores.table(store, "anonymised_cohorts", "all"), expected, check_dtype=False)
    for _sid, shard in ((a, sa_), (b, sb)):
        part = stores.table(store, "cohort_partials", identity.partition_key(shard))
        assert int(part[cm.COUNT].sum()) == len(stores.table(store, "raw_subjects", identity.partition_key(shard)))
    # the ensemble holds both retrained shard models, and records the inputs it was built from
    saved = lk.loads_model(store.read_bytes(lk.model_name("ensemble_model")))
    for shard in (sa_, sb):
        blob = store.read_bytes(lk.model_name("shard_models", identity.partition_key(shard)))
        assert lk.model_fingerprint(saved["model"].estimators_[shard]) == lk.model_fingerprint(lk.loads_model(blob)["model"])
        assert saved["inputs"][f"shard_models[{identity.partition_key(shard)}]"] == lk.content_hash(blob)


def test_the_project_sets_the_pool_limits_whatever_the_instance_file_says(demo_home):
    (demo_home / "dagster" / "dagster.yaml").unlink()  # DAGSTER_HOME without the project's instance file
    inst = instance()
    inst.event_log_storage.set_concurrency_slots(names.shard_pool("shard_01"), 5)
    assert runtime.ensure_pools(inst, ["shard_00", "shard_01"])
    limits = runtime.pool_limits(inst)
    assert {p: limits[p] for p in names.pools(["shard_00", "shard_01"])} == dict.fromkeys(names.pools(["shard_00", "shard_01"]), names.POOL_LIMIT)
    assert not runtime.ensure_pools(inst, ["shard_00", "shard_01"])


def test_held_request_is_not_processed_and_released_one_is(demo_home):
    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = _cli("erase", sid).stdout.strip()
    assert _cli("hold", rid, "--reason", "Art.17(3)(e): legal claim").exit_code == 0
    drain(defs, instance())
    assert default_ledger().requests.get(rid)["status"] == "on_hold"
    assert _cli("release", rid).exit_code == 0
    drain(defs, instance())
    assert default_ledger().requests.get(rid)["status"] == "completed"
    ext = _cli("extend", rid, "--reason", "complex")
    assert ext.exit_code != 0 and "nothing to extend" in ext.output


@pytest.mark.executor
def test_failed_run_leaves_requests_failed_retries_once_then_waits_for_the_operator(demo_home):
    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = erase(sid)[0]
    with injected(certify_outage):  # in whichever process certifies (a step process on the multiprocess executor)
        result = drain(defs, instance())
    request = default_ledger().requests.get(rid)
    assert len(result.failed_runs) == 2 and request["status"] == "failed" and request["attempts"] == 2  # retried once at once
    assert "run" in (request["error"] or "")
    assert _cli("retry", rid).exit_code == 0
    result = drain(defs, instance())
    assert not result.failed_runs and default_ledger().requests.get(rid)["status"] == "completed"
    assert _cli("verify", rid).exit_code == 0
    assert not [r for r in instance().get_runs() if not r.is_finished]


def test_verify_fails_when_data_comes_back(demo_home):
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = erase(sid)[0]
    drain(defs, instance())
    store = stores.lake()
    part = identity.partition_key(shard)
    # the subject's row written back into the bucket file that would hold it
    bucket = bk.object_name("raw_subjects", part, bk.bucket_of(key(sid), policy.lake.buckets))
    raw = lk.table_from_bytes(store.read_bytes(bucket))
    store.write_bytes(bucket, lk.table_to_bytes(pd.concat([raw, raw.head(1).assign(subject_key=key(sid))], ignore_index=True)))
    out = _cli("verify", rid)
    assert out.exit_code == 1 and "FAIL no rows of the subject [raw_subjects" in out.output
    assert f"FAIL stored partition is what its last materialisation recorded [raw_subjects[{part}]]" in out.output


def test_a_batchs_proof_reads_staging_and_provenance_once_per_shard_and_still_finds_each_subject(demo_home, monkeypatch):
    """Subjects proved together share one read of their shard's staging area and one provenance query; what each
    finds is still their own (rows staged by an ingest still running count against the subject they belong to)."""
    import pyarrow as pa

    from erasure_pipeline.erasure.verify import prove_together, verify_subject
    from erasure_pipeline.stores import landing

    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    erase(sid)
    drain(defs, instance())
    env = stores.default_env()
    subjects, _ = landing_frames(policy.shards)
    kept = next(key(s) for s, sh in zip(subjects["subject_id"], subjects["shard"]) if sh == shard and s != sid)
    # an ingest still running staged two rows of the erased subject (as a restore of old landing files would)
    env.lake.write_bytes(landing.staged_name("lb-test", "events", shard, 0),
                         lk.arrow_to_ipc_bytes(pa.table({"subject_key": [key(sid), kept, key(sid)]})))
    reads, queries = [], []
    monkeypatch.setattr(env.lake, "read_bytes", lambda name, _real=env.lake.read_bytes: reads.append(name) or _real(name))
    monkeypatch.setattr(env.ledger.nodes, "provenance_for", lambda keys, _real=env.ledger.nodes.provenance_for: queries.append(1) or _real(keys))
    cache = prove_together([key(sid), kept], env, {})
    staged = {k: next(f for f in verify_subject(k, env, cache) if f.target == "lake/_staging") for k in (key(sid), kept)}
    assert (staged[key(sid)].ok, staged[key(sid)].detail) == (False, "2 rows")
    assert (staged[kept].ok, staged[kept].detail) == (False, "1 rows")
    held = {k: next(f for f in verify_subject(k, env, cache) if f.target == "ledger.provenance") for k in (key(sid), kept)}
    assert held[key(sid)].ok and not held[kept].ok  # the kept subject's rows are still listed
    assert sum(name.startswith(landing.STAGING) for name in reads) == 1 and len(queries) == 1


def test_the_certificate_takes_the_shard_steps_retrain_of_the_same_bytes_and_verify_retrains_other_bytes(demo_home):
    """The certificate step's proof that the shard model equals an independent retrain is the shard step's check
    of the same stored bytes (in one process); a model written over since, in the same process, is retrained."""
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = erase(sid)[0]
    drain(defs, instance())
    part, other = identity.partition_key(shard), identity.partition_key((shard + 1) % policy.shards)
    claim = "shard model equals an independent retrain without the subject"
    found = [f for f in default_ledger().certificates.get(rid)[0]["verification"] if f["claim"] == claim]
    assert [(f["target"], f["ok"]) for f in found] == [(f"shard_models[{part}]", True)]
    assert "(retrained by the shard step from the same stored bytes)" in found[0]["detail"]
    store = stores.lake()
    store.write_bytes(lk.model_name("shard_models", part), store.read_bytes(lk.model_name("shard_models", other)))
    out = _cli("verify", rid)
    assert out.exit_code == 1 and f"FAIL {claim} [shard_models[{part}]]" in out.output


def test_verify_fails_when_a_merge_was_not_built_from_the_current_shards(demo_home):
    """A pre-erasure ensemble restored into the lake passes every per-subject claim; its inputs do not."""
    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
    store = stores.lake()
    before = store.read_bytes(lk.model_name("ensemble_model"))
    rid = erase(sid)[0]
    drain(defs, instance())
    assert _cli("verify", rid).exit_code == 0
    store.write_bytes(lk.model_name("ensemble_model"), before)
    out = _cli("verify", rid)
    assert out.exit_code == 1 and "FAIL published merge was built from the current shard partitions [ensemble_model/all.pkl]" in out.output


@pytest.mark.parametrize("bad", ["", "   ", "x" * 1000])
def test_bad_subject_id_is_a_clear_error_and_files_nothing(demo_home, bad):
    out = CliRunner().invoke(main, ["erase", bad])
    assert out.exit_code != 0 and "subject id" in out.output and "Traceback" not in out.output
    assert default_ledger().requests.list() == []


def test_drain_and_the_jobs_use_the_ledger_resource_they_are_given(demo_home, tmp_path):
    """A deployment that configures the ledger resource (not the environment) gets that ledger everywhere."""
    import sqlite3

    from erasure_pipeline.core.settings import Settings
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.defs.resources import LedgerResource, resources_for

    moved = tmp_path / "elsewhere.sqlite"
    with sqlite3.connect(demo_home / "ledger.sqlite") as src, sqlite3.connect(moved) as dst:
        src.backup(dst)  # the WAL's pages too
    for f in demo_home.glob("ledger.sqlite*"):
        f.unlink()  # the default ledger is gone: only the resource can find the records
    url = f"sqlite:///{moved}"
    configured = resources_for(Settings.from_environ())
    ledger = LedgerResource(url=url)
    pipeline = configured["pipeline"]
    defs = build_definitions(resources={"ledger": ledger, "pipeline": type(pipeline)(
        home=pipeline.home, lake=pipeline.lake, landing=pipeline.landing, evidence=pipeline.evidence, ledger=ledger, vectors=pipeline.vectors,
        secrets=pipeline.secrets)})
    _policy = defs_and_policy()[1]
    (sid, _shard), = pick_subjects(_policy.shards, with_tickets=1)
    from erasure_pipeline.defs.resources import resolve

    book = resolve(defs.resources["pipeline"]).book()
    rid = erase(sid, ledger=book)[0]
    result = drain(defs, instance())
    assert len(result.runs) == 1 and not result.failed_runs
    assert book.requests.get(rid)["status"] == "completed"
    assert default_ledger().requests.list() == []  # nothing went to the environment's ledger


def test_an_erasure_rewrites_only_the_lake_files_that_hold_the_subject(demo_home):
    """From the lake's listing before and after: raw data changes in the subject's bucket files only (and
    their manifests); everything else that changed is derived per shard or merged."""
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
    store = stores.lake()

    def listing() -> dict[str, str]:
        return {n: lk.content_hash(store.read_bytes(n)) for n in store.list()}

    before = listing()
    rid = erase(sid)[0]
    assert not drain(defs, instance()).failed_runs and _cli("verify", rid).exit_code == 0
    after = listing()
    changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    part, bucket = identity.partition_key(shard), bk.bucket_of(key(sid), policy.lake.buckets)
    raw_files = {n for n in changed if n.startswith("raw_")}
    assert raw_files == {bk.object_name(t, part, bucket) for t in ("raw_subjects", "raw_events", "raw_tickets")} | \
        {bk.manifest_name(t, part) for t in ("raw_subjects", "raw_events", "raw_tickets")}
    untouched_raw = [n for n in before if n.startswith("raw_") and n not in raw_files]
    assert len(untouched_raw) > 10 * len(raw_files)  # the rest of the raw lake: not one byte rewritten
    derived = {n.split("/")[0] for n in changed - raw_files if not n.startswith("_")}
    assert derived <= {"cohort_partials", "anonymised_cohorts", "cohort_model", "training_shards", "shard_models",
                       "ensemble_model", "vector_index"}
    assert all(part in n or "/all" in n or "/candidate" in n for n in changed - raw_files if not n.startswith("_"))
    assert {n for n in changed if n.startswith("_")} <= {n for n in before if n.startswith("_landing_index/")}  # its index entries


def test_a_change_of_lake_buckets_keeps_erasures_exact_before_and_after_the_backfill(demo_home):
    """lake.buckets 16 -> 6: a subject's bucket moves. An erasure before the backfill lays the partition
    out anew rather than looking in the wrong file; the backfill then rewrites the rest; verify holds."""
    policy_file = demo_home / "policy.yaml"
    policy_file.write_text(policy_file.read_text() + "lake: {buckets: 6}\n")
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
    part = identity.partition_key(shard)
    assert bk.read_manifest(stores.lake(), "raw_events", part).of == 16
    rid = erase(sid)[0]
    assert not drain(defs, instance()).failed_runs
    assert _cli("verify", rid).exit_code == 0
    assert bk.read_manifest(stores.lake(), "raw_events", part).of == 6  # laid out anew by the erasure
    assert scan_for(demo_home, [sid]) == []
    out = _cli("backfill", "--stale")
    assert out.exit_code == 0, out.output
    store = stores.lake()
    for p in identity.partition_keys(policy.shards):
        m = bk.read_manifest(store, "raw_events", p)
        assert m.of == 6 and set(m.buckets) <= set(range(6))
        assert {n.rsplit("/", 1)[1] for n in store.list(f"raw_events/{p}/")} == \
            {bk.MANIFEST, *(f"{bk.bucket_name(b)}.parquet" for b in m.buckets)}
    assert _cli("verify", rid).exit_code == 0


def test_an_erasure_changes_the_provenance_of_the_erased_subject_only(demo_home):
    """The ledger's provenance rows before and after one erasure differ in the erased subject's rows only
    (no partition's provenance is rewritten wholesale)."""
    import sqlalchemy as sa

    from erasure_pipeline.ledger import schema

    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
    book = default_ledger()

    def rows() -> set[tuple]:
        with book.db.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(sa.select(schema.provenance))}

    before = rows()
    rid = erase(sid)[0]
    assert not drain(defs, instance()).failed_runs and _cli("verify", rid).exit_code == 0
    after = rows()
    assert {r[0] for r in before ^ after} == {key(sid)}
    assert not any(r[0] == key(sid) for r in after) and len(before) - len(after) >= 3  # raw rows, training, vectors
    assert provenance_mismatches(policy.shards) == []

"""Erasure end to end: sensor, runs that touch exactly one subject's partitions, proof, certificate."""

import json

import dagster as dg
import pytest
from click.testing import CliRunner

from erasure_pipeline import identity, settings
from erasure_pipeline.anonymise import cohorts as cm
from erasure_pipeline.assets.cohorts import noise_key
from erasure_pipeline.cli import main
from erasure_pipeline.erasure.service import BATCH_TAG, REQUESTS_TAG, default_ledger, erase
from erasure_pipeline.process import drain
from erasure_pipeline.storage import lake as lk
from erasure_pipeline_tests.conftest import PEPPER, defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import key, pick_subjects, scan_for

NEVER_SEEN = "nobody.ever@nowhere.example"


def _cli(*args):
    out = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return out


def _materialised_partitions(inst, after_storage_id):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one query over every asset's materialisations since a point
        records = inst.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, after_cursor=after_storage_id), limit=10_000)
    return {(r.asset_key.to_user_string(), r.partition_key) for r in records}


def _max_storage_id(inst):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = inst.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION), limit=1, ascending=False)
    return records[0].storage_id


def test_sensor_coalesces_per_shard_and_tags_only_request_ids(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    subjects, _ = __import__("erasure_pipeline_tests.erasure_helpers", fromlist=["x"]).landing_frames(policy.shards)
    shard0 = subjects[subjects["shard"] == 0]["subject_id"].tolist()[:2]
    shard1 = subjects[subjects["shard"] == 1]["subject_id"].tolist()[:1]
    rids = [erase(s)[0] for s in [*shard0, *shard1, NEVER_SEEN]]
    sensor = defs.resolve_sensor_def("erasure_sensor")
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        first = sensor.evaluate_tick(ctx)
    assert sorted(r.partition_key for r in first.run_requests) == ["shard_00", "shard_01"]
    book = default_ledger()
    assert int(first.cursor) == book.max_seq()
    for rr in first.run_requests:
        assert rr.run_key == rr.tags[BATCH_TAG]
        assert dg.AssetKey("erasure_certificates") in rr.asset_selection
        assert set(rr.tags[REQUESTS_TAG].split(",")) <= set(rids)
        assert rr.run_config["ops"]["raw_subjects"]["config"]["mode"] == "erasure"
        blob = json.dumps([rr.tags, rr.run_key, rr.run_config])
        assert "@" not in blob and not any(key(s) in blob for s in [*shard0, *shard1])
    by_shard = {r.partition_key: r for r in first.run_requests}
    assert set(by_shard["shard_00"].tags[REQUESTS_TAG].split(",")) == set(rids[:2])
    # the never-seen subject is certified at once, without a run
    assert book.get_request(rids[3])["status"] == "completed"
    assert book.certificate(rids[3])[0]["data_present"] is False
    # a second tick is repeat-safe: the same run keys again, no new batches
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources, cursor=first.cursor) as ctx:
        second = sensor.evaluate_tick(ctx)
    assert {r.run_key for r in second.run_requests} == {r.run_key for r in first.run_requests}


def test_acceptance_five_requests_exact_partitions_certificates_and_no_identifier_left(demo_home):
    inst = instance()
    _defs, policy = defs_and_policy()
    chosen = pick_subjects(policy.shards, with_tickets=3, without_tickets=1)
    assert len({s for _, s in chosen}) == 4
    no_ticket_shard = chosen[3][1]
    ids = [sid for sid, _ in chosen] + [NEVER_SEEN]
    start = _max_storage_id(inst)
    rids = []
    for sid in ids:
        out = _cli("erase", sid, "--reason", "asked by email")
        assert out.exit_code == 0
        rids.append(out.stdout.strip())
    dup = _cli("erase", ids[0])
    assert dup.stdout.strip() == rids[0] and "already exists" in dup.stderr
    out = _cli("process")
    assert out.exit_code == 0, out.output
    book = default_ledger()
    for rid in rids:
        assert book.get_request(rid)["status"] == "completed"
        v = _cli("verify", rid)
        assert v.exit_code == 0, v.output
        cert = json.loads(_cli("certificate", rid, "--json").output)
        assert {"request_id", "request_date", "anonymised_data_subject", "datasets", "completion_date", "residual_risk", "exception"} <= set(cert)
    # exactly the touched shards' partitions and the merges, nothing else
    touched = {identity.partition_key(s) for _, s in chosen}
    done = _materialised_partitions(inst, start)
    assert {p for _, p in done if p is not None} == touched
    assert {a for a, p in done if p is None} == {"anonymised_cohorts", "cohort_model", "ensemble_model", "erasure_certificates"}
    assert ("vector_index", identity.partition_key(no_ticket_shard)) not in done
    assert ("raw_tickets", identity.partition_key(no_ticket_shard)) not in done
    cert_no_tickets = book.certificate(rids[3])[0]
    vec = next(d for d in cert_no_tickets["datasets"] if d["dataset"].startswith("vector_index"))
    assert vec["action"] == "NO_DATA" and vec["data_present"] == "no"
    cert_with_tickets = book.certificate(rids[0])[0]
    actions = {d["dataset"].split("[")[0]: d["action"] for d in cert_with_tickets["datasets"]}
    assert actions["vector_index"] == "VECTOR_DELETE" and actions["raw_events"] == "RAW_REWRITE"
    # certificates are on the runs as Markdown metadata
    cert_md = inst.get_latest_materialization_event(dg.AssetKey("erasure_certificates")).asset_materialization.metadata["certificates"]
    assert "Erasure certificate" in cert_md.value
    # nothing anywhere in the project home still holds the raw ids
    assert scan_for(demo_home, ids) == []


def test_two_shards_in_one_tick_merge_from_both_post_erasure_partials(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    (a, sa_), (b, sb) = pick_subjects(policy.shards, with_tickets=2)
    erase(a), erase(b)
    result = drain(defs, inst)
    assert len(result.runs) == 2 and not result.failed_batches
    store = settings.lake()
    partials = [lk.require_table(store, "cohort_partials", p) for p in identity.partition_keys(policy.shards)]
    merged = cm.merge_partials(partials)
    c = policy.cohorts
    expected = cm.publish(merged, k_min=policy.k_min, measures=c.measures, clip=c.measure_clip, epsilon=c.noise_epsilon,
                          noise_key=noise_key(PEPPER.encode()))
    import pandas as pd

    pd.testing.assert_frame_equal(lk.require_table(store, "anonymised_cohorts", "all"), expected, check_dtype=False)
    for sid, shard in ((a, sa_), (b, sb)):
        part = lk.require_table(store, "cohort_partials", identity.partition_key(shard))
        assert int(part[cm.COUNT].sum()) == len(lk.require_table(store, "raw_subjects", identity.partition_key(shard)))
    # the ensemble holds both retrained shard models
    ens = lk.loads_model(store.read_bytes(lk.model_name("ensemble_model")))["model"]
    for shard in (sa_, sb):
        saved = lk.loads_model(store.read_bytes(lk.model_name("shard_models", identity.partition_key(shard))))
        assert lk.model_fingerprint(ens.estimators_[shard]) == lk.model_fingerprint(saved["model"])
    # runs ran one after the other and carry the merge lock that serialises them under a daemon
    runs = [inst.get_run_by_id(r) for r in result.runs]
    assert all(r.tags.get("erasure_pipeline/merge_lock") == "erasure" for r in runs)
    stats = sorted((inst.get_run_stats(r.run_id).start_time, inst.get_run_stats(r.run_id).end_time) for r in runs)
    assert stats[0][1] <= stats[1][0]


def test_instance_config_limits_erasure_runs_to_one_at_a_time(demo_home):
    cfg = instance().run_coordinator.inst_data.config_dict
    assert {"key": "erasure_pipeline/merge_lock", "limit": 1} in cfg["tag_concurrency_limits"]


def test_held_request_is_not_processed_and_released_one_is(demo_home):
    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = _cli("erase", sid).stdout.strip()
    assert _cli("hold", rid, "--reason", "Art.17(3)(e): legal claim").exit_code == 0
    drain(defs, instance())
    assert default_ledger().get_request(rid)["status"] == "on_hold"
    assert _cli("release", rid).exit_code == 0
    drain(defs, instance())
    assert default_ledger().get_request(rid)["status"] == "completed"
    ext = _cli("extend", rid, "--reason", "complex")
    assert ext.exit_code != 0 and "nothing to extend" in ext.output


def test_failed_run_leaves_requests_failed_and_retry_finishes(demo_home, monkeypatch):
    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = erase(sid)[0]
    import erasure_pipeline.assets.erasure as certifier

    def broken(*a, **k):
        raise RuntimeError("simulated outage")

    monkeypatch.setattr(certifier, "certify", broken)
    result = drain(defs, instance())
    assert result.failed_batches and default_ledger().get_request(rid)["status"] == "failed"
    monkeypatch.undo()
    import os

    os.environ["ERASURE_PIPELINE_PEPPER"] = PEPPER  # monkeypatch.undo() also restored the env it never set
    assert _cli("retry", rid).exit_code == 0
    result = drain(defs, instance())
    assert not result.failed_batches and default_ledger().get_request(rid)["status"] == "completed"
    assert _cli("verify", rid).exit_code == 0


def test_verify_fails_when_data_comes_back(demo_home):
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = erase(sid)[0]
    drain(defs, instance())
    store = settings.lake()
    part = identity.partition_key(shard)
    raw = lk.require_table(store, "raw_subjects", part)
    lk.write_table(store, "raw_subjects", part, pd_concat(raw, key(sid)))
    out = _cli("verify", rid)
    assert out.exit_code == 1 and "FAIL no rows of the subject [raw_subjects" in out.output


def pd_concat(raw, subject_key):
    import pandas as pd

    return pd.concat([raw, raw.head(1).assign(subject_key=subject_key)], ignore_index=True)


@pytest.mark.parametrize("bad", ["", "   ", "x" * 1000])
def test_bad_subject_id_is_a_clear_error_and_files_nothing(demo_home, bad):
    out = CliRunner().invoke(main, ["erase", bad])
    assert out.exit_code != 0 and "subject id" in out.output and "Traceback" not in out.output
    assert default_ledger().requests() == []

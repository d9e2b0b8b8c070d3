"""What an operator sees: stale shard partitions as failed checks saying why, merges that refuse stale inputs,
one action that rebuilds exactly what is stale, and an erasure that rebuilds stale shards before it publishes."""

from __future__ import annotations

import dagster as dg
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain
from erasure_pipeline.app.runner import RunSummary, execute
from erasure_pipeline.core import names
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.kinds.registry import graph_for
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import materialised_partitions, materialize_assets, max_storage_id, pick_subjects

SHARDS = [f"shard_{i:02d}" for i in range(4)]
WHY = "policy changed: models.model.params.C null -> 0.5"


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def change_c(home, value: str = "0.5") -> None:
    """A model parameter, as an operator changes it: every shard model is stale, nothing else is."""
    policy = home / "policy.yaml"
    text = policy.read_text()
    anchor = "    estimator: logistic_regression\n"
    assert anchor in text
    policy.write_text(text.replace(anchor, anchor + f"    params: {{C: {value}}}\n"))


def staleness_tick(defs, inst, cursor: str | None):
    """One tick of the staleness sensor, and the staleness_job run it asks for, run here as the daemon would."""
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources, cursor=cursor) as ctx:
        data = defs.resolve_sensor_def(names.STALENESS_SENSOR).evaluate_tick(ctx)
    for request in data.run_requests:
        assert request.job_name == names.STALENESS_JOB
        assert execute(defs, inst, names.STALENESS_JOB, {}, request.tags).success
    return data


def _latest_checks(inst, asset: str) -> dict[str, dg.AssetCheckEvaluation]:
    """Partition -> the latest evaluation of its up_to_date check, as the UI's check history reads them."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), names.POLICY_CHECK)
    latest: dict[str, dg.AssetCheckEvaluation] = {}
    for record in reversed(inst.event_log_storage.get_asset_check_execution_history(key, limit=1000)):
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        if isinstance(evaluation, dg.AssetCheckEvaluation):
            latest[evaluation.partition] = evaluation
    return latest


def test_a_model_parameter_change_shows_every_shard_model_stale_saying_why_and_one_run_rebuilds_exactly_those(demo_home):
    inst = instance()
    defs, _policy = defs_and_policy()
    first = staleness_tick(defs, inst, None)
    assert not first.run_requests and "every materialised shard partition is up to date" in first.skip_message
    assert {p for p, e in _latest_checks(inst, "shard_models").items() if e.passed} == set(SHARDS)  # each build reports it passed
    change_c(demo_home)
    defs, _policy = defs_and_policy()
    ticked = staleness_tick(defs, inst, first.cursor)
    assert len(ticked.run_requests) == 1
    latest = _latest_checks(inst, "shard_models")
    assert {p for p, e in latest.items() if not e.passed} == set(SHARDS)
    assert all(latest[p].metadata["why"].value == WHY and "rebuild_job" in latest[p].metadata["rebuild"].value for p in SHARDS)
    assert all(e.passed for e in _latest_checks(inst, "training_shards").values())  # nothing else is stale
    again = staleness_tick(defs, inst, ticked.cursor)  # nothing changed since: no run, nothing reported twice
    assert not again.run_requests
    assert again.skip_message.startswith("4 shard partitions are not up to date (shard_models): launch rebuild_job")
    assert f"shard_models | all 4 | {WHY}" in _cli("policy", "diff").output

    # The merge above them refuses to publish from them, naming them and the way out.
    start = max_storage_id(inst)
    by_hand = RunSummary.of(materialize_assets(["ensemble_model"]))
    assert not by_hand.success
    assert (f"ensemble_model: 4 shard partitions it reads are not current ({WHY}): shard_models[shard_00], "
            "shard_models[shard_01], shard_models[shard_02], shard_models[shard_03]; rebuild them first: launch rebuild_job") in by_hand.error
    assert ("ensemble_model", None) not in materialised_partitions(inst, start)

    # One action, as the UI's Launchpad launches it (no config): exactly the stale partitions, then the merge.
    start = max_storage_id(inst)
    rebuilt = execute(defs, inst, names.REBUILD_JOB, {}, {names.KIND: "rebuild"})
    assert rebuilt.success, rebuilt.line()
    assert materialised_partitions(inst, start) == {("shard_models", p) for p in SHARDS} | {("ensemble_model", None)}
    assert all(e.passed for e in _latest_checks(inst, "shard_models").values())  # the rebuild reports them passed
    assert staleness_tick(defs, inst, again.cursor).run_requests  # the set changed: reported once more, all passed
    assert all(e.passed for e in _latest_checks(inst, "shard_models").values())
    assert "nothing is stale" in _cli("policy", "diff").output


def test_the_staleness_checks_pass_again_when_the_policy_change_is_undone(demo_home):
    inst = instance()
    change_c(demo_home)
    defs, _policy = defs_and_policy()
    ticked = staleness_tick(defs, inst, None)
    assert {p for p, e in _latest_checks(inst, "shard_models").items() if not e.passed} == set(SHARDS)
    (demo_home / "policy.yaml").write_text((demo_home / "policy.yaml").read_text().replace("    params: {C: 0.5}\n", ""))
    defs, _policy = defs_and_policy()
    assert staleness_tick(defs, inst, ticked.cursor).run_requests
    assert all(e.passed for e in _latest_checks(inst, "shard_models").values())


def test_an_erasure_after_a_policy_change_rebuilds_the_stale_shard_models_before_it_publishes(demo_home):
    change_c(demo_home)
    defs, policy = defs_and_policy()
    inst = instance()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
    rid = erase(sid)[0]
    start = max_storage_id(inst)
    result = drain(defs, inst)
    assert not result.failed_runs
    assert stores.default_ledger().requests.get(rid)["status"] == "completed"
    assert {p for a, p in materialised_partitions(inst, start) if a == "shard_models"} == set(SHARDS)
    records = stores.default_ledger().nodes.records(assets=["shard_models", "ensemble_model"])
    graph = graph_for(policy)
    assert {r["code_version"] for r in records.values() if r["asset"] == "shard_models"} == {graph.code_version(policy, "shard_models")}
    from erasure_pipeline.stores import lake as lk

    assert stores.lake().read_bytes(lk.model_name("ensemble_model")) is not None  # published, from current shard models only
    assert _cli("verify", rid).exit_code == 0
    assert "nothing is stale" in _cli("policy", "diff").output


def _erasure_request(defs, inst):
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        (request,) = defs.resolve_sensor_def(names.ERASURE_SENSOR).evaluate_tick(ctx).run_requests
    return request


def _certificates_metadata(inst, run_id: str) -> dict:
    (event,) = [e for e in inst.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                if e.dagster_event.asset_key == dg.AssetKey("erasure_certificates")]
    return {k: v.value for k, v in event.dagster_event.materialization.metadata.items()}


def test_a_run_whose_request_was_held_before_it_started_says_nothing_was_erased(demo_home):
    from erasure_pipeline.app.runner import launch

    defs, policy = defs_and_policy()
    inst = instance()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
    rid = erase(sid)[0]
    request = _erasure_request(defs, inst)  # the tick named the request ...
    assert _cli("hold", rid, "--reason", "legal hold: litigation").exit_code == 0  # ... and it was held before the run started
    lines: list[str] = []
    summary = launch(defs, inst, request, progress=lines.append)
    assert summary.success
    run = inst.get_run_by_id(summary.run_id)
    assert run.tags[names.OUTCOME] == "nothing erased: held (not erased) 1"  # in the run list, beside the request id
    meta = _certificates_metadata(inst, summary.run_id)
    assert meta["outcome"] == "nothing erased: held (not erased) 1" and meta["requests_held"] == 1 and meta["certificates_issued"] == 0
    assert any(line.endswith(": nothing erased: held (not erased) 1") for line in lines), lines

    assert _cli("release", rid).exit_code == 0
    summary = launch(defs, inst, _erasure_request(defs, inst))
    assert inst.get_run_by_id(summary.run_id).tags[names.OUTCOME] == "erased 1"
    assert _certificates_metadata(inst, summary.run_id)["requests_erased"] == 1


def test_each_certificate_is_one_click_away_as_json_and_markdown_with_its_findings_as_a_typed_table(demo_home):
    import json
    from pathlib import Path

    from erasure_pipeline.app.runner import launch

    defs, policy = defs_and_policy()
    inst = instance()
    chosen = pick_subjects(policy.shards, with_tickets=2)
    rids = [erase(sid)[0] for sid, _shard in chosen]
    summary = launch(defs, inst, _erasure_request(defs, inst))
    meta = _certificates_metadata(inst, summary.run_id)
    table = meta["certificate_table"]
    assert [c.name for c in table.schema.columns] == ["request_id", "data_present", "nodes_with_data", "claims", "claims_holding",
                                                      "json", "markdown"]
    rows = {r.data["request_id"]: r.data for r in table.records}
    assert set(rows) == set(rids) and all(r["data_present"] and r["claims"] == r["claims_holding"] > 0 for r in rows.values())
    for rid in rids:
        stored = json.loads(Path(rows[rid]["json"]).read_text())
        assert stored == json.loads(_cli("certificate", rid, "--json").output)  # the evidence store's copy is the ledger's
        assert Path(rows[rid]["markdown"]).read_text().startswith(f"### Erasure certificate `{rid}`")
        assert _cli("verify", "--certificate", rows[rid]["json"]).exit_code == 0  # and checks offline as it is
    findings = meta["findings"]
    assert [c.name for c in findings.schema.columns] == ["request_id", "claim", "target", "holds", "detail"]
    assert {r.data["request_id"] for r in findings.records} == set(rids) and all(r.data["holds"] for r in findings.records)
    assert isinstance(meta["certificate_json"], str) and Path(meta["certificate_json"]).exists()  # a path the UI links
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("erasure_certificates")).parent_keys} == \
        {"cohort_model", "ensemble_model", "vector_index"}  # the leaves: lineage without an edge from every asset

"""The code location as Dagster sees it: graph shape, partitions, groups, sensors."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from erasure_pipeline.app.demo import demo_graph, demo_policy
from erasure_pipeline.core import names
from erasure_pipeline.core.policy import parse_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.defs.pipeline import build_definitions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARD_ASSETS = [n.name for n in demo_graph().shard_nodes]
MERGE_ASSETS = [n.name for n in demo_graph().merge_nodes]


def test_module_level_defs_load_the_declaration_in_effect_and_none_is_one_clear_error(tmp_path, monkeypatch):
    from erasure_pipeline.app.demo import DEMO_POLICY
    from erasure_pipeline.core.policy import NO_POLICY
    from erasure_pipeline.definitions import defs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ERASURE_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ERASURE_PIPELINE_POLICY", raising=False)
    with pytest.raises(Exception) as err:  # no built-in declaration: the code location says what to do
        defs()
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any(NO_POLICY in text for text in chain), chain  # what the UI shows under the loading error
    monkeypatch.setenv("ERASURE_PIPELINE_POLICY", str(DEMO_POLICY))
    graph = defs().resolve_asset_graph()
    for name in SHARD_ASSETS:
        keys = graph.get(dg.AssetKey(name)).partitions_def.get_partition_keys()
        assert keys[0] == "shard_00" and keys[-1] == "shard_15" and len(keys) == 16


def _shape(defs: dg.Definitions) -> dict:
    """What a change of the definitions' shape changes: every asset, check, job, sensor, schedule and resource."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for k in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(k)
        assets[k.to_user_string()] = {
            "group": node.group_name, "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": len(node.partitions_def.get_partition_keys()) if node.partitions_def else None,
            "code_version": node.code_version, "kinds": sorted(node.kinds), "pools": sorted(node.pools or ()),
            "executable": node.is_executable,
        }
    checks = sorted((c.asset_key.to_user_string(), c.name, graph.get_check_spec(c).blocking) for c in graph.asset_check_keys)
    jobs = {}
    for job in sorted(defs.jobs, key=lambda j: j.name):
        jobs[job.name] = {
            "tags": dict(job.tags),
            "ops": {n.name: {"pool": n.definition.pool, "inputs": sorted(d.name for d in n.definition.input_defs),
                             "resources": sorted(n.definition.required_resource_keys)} for n in job.graph.nodes},
            "dependencies": _deps(job),
        }
    return {
        "assets": assets, "checks": checks, "jobs": jobs,
        "sensors": sorted((s.name, sorted(t.job_name for t in s.targets), s.minimum_interval_seconds, s.default_status.value)
                          for s in defs.sensors),
        "schedules": sorted((s.name, s.cron_schedule, s.job_name, s.default_status.value) for s in defs.schedules),
        "resources": sorted((name, type(r).__name__) for name, r in defs.resources.items()),
    }


def _deps(job: dg.JobDefinition) -> dict[str, list[str]]:
    """Op -> the ops it reads from (the job's shape, independent of Dagster's internal structures)."""
    out: dict[str, list[str]] = {}
    for node in job.graph.nodes:
        for handle in job.graph.dependency_structure.input_to_upstream_outputs_for_node(node.name).values():
            for upstream in handle:
                out.setdefault(node.name, []).append(f"{upstream.node_name}.{upstream.output_name}")
    return {k: sorted(v) for k, v in out.items()}


def test_definitions_match_their_snapshot(snapshot, tmp_path):
    """Run ``pytest --snapshot-update`` after an intended change of shape and review the diff of __snapshots__."""
    settings = Settings(home=tmp_path / "home")
    assert _shape(build_definitions(demo_policy(shards=4), settings=settings)) == snapshot


def test_five_table_declaration_matches_its_snapshot(snapshot, tmp_path):
    text = (EXAMPLES / "five_tables" / "policy.yaml").read_text()
    policy = parse_policy(yaml.safe_load(text))
    policy._code_dir = EXAMPLES / "five_tables"
    assert _shape(build_definitions(policy, settings=Settings(home=tmp_path / "home")))["assets"] == snapshot


def test_no_edge_crosses_shards():
    graph = build_definitions(demo_policy(shards=4)).resolve_asset_graph()
    for name in SHARD_ASSETS:
        child = dg.AssetKey(name)
        for parent in graph.get(child).parent_keys:
            if parent.to_user_string() not in SHARD_ASSETS:
                continue
            for p in graph.get(child).partitions_def.get_partition_keys():
                upstream = graph.get_parent_partition_keys_for_child(p, parent, child).partitions_subset
                assert set(upstream.get_partition_keys()) == {p}
            assert isinstance(graph.get_partition_mapping(child, parent), dg.IdentityPartitionMapping)


def test_sensors_are_running_by_default():
    defs = build_definitions(demo_policy(shards=4))
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"erasure_sensor", "erasure_failure_sensor", "staleness_sensor", "notices_sensor", "pool_queue_sensor"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert sensors["erasure_sensor"].minimum_interval_seconds == 1  # every loop of the sensor daemon (5 s), not every other
    assert sensors["erasure_sensor"].job_name == names.ERASURE_JOB


def test_named_jobs_and_every_writing_step_in_its_pool():
    defs = build_definitions(demo_policy(shards=4))
    jobs = {j.name: j for j in defs.jobs}
    assert set(jobs) == {names.ERASURE_JOB, names.CYCLE_JOB, names.INGEST_JOB, names.REBUILD_JOB, names.STALENESS_JOB, names.DELIVER_JOB}
    for reader in (names.STALENESS_JOB, names.DELIVER_JOB):  # the ledger only (the outbox): never waits behind a run that writes
        (op,) = jobs.pop(reader).graph.node_defs
        assert op.pool is None
    shards = [f"shard_{i:02d}" for i in range(4)]
    for job in jobs.values():
        # every op writes a store: claims scrub and stage landing, each shard step writes its shard, merges the merges
        pools = {n.name: n.pool for n in job.graph.node_defs}
        assert {pools[s] for s in shards} == {f"erasure_pipeline/{s}" for s in shards}, job.name
        assert {p for n, p in pools.items() if n not in shards} == {names.LANDING_POOL, names.MERGE_POOL}, job.name
        assert job.tags[names.KIND] == names.JOB_KINDS[job.name]
    assert {n.name for n in jobs[names.ERASURE_JOB].graph.node_defs} == {"claim_requests", *shards, "merge_and_certify"}
    graph = defs.resolve_asset_graph()
    for name in MERGE_ASSETS:
        assert graph.get(dg.AssetKey(name)).pools == {names.MERGE_POOL}
    for name in SHARD_ASSETS:  # a shard partition takes its shard's pool inside the step (runtime.pool_slot)
        assert graph.get(dg.AssetKey(name)).pools == set()
        assert graph.get(dg.AssetKey(name)).backfill_policy == dg.BackfillPolicy.single_run()
    assert defs.resolve_schedule_def("retraining_cycle").job_name == names.CYCLE_JOB


def test_the_repo_root_instance_says_what_the_cli_instance_says_but_where_storage_is():
    """``make dev`` uses the repo root's dagster.yaml, the CLI <home>/dagster/dagster.yaml: one instance, two files."""
    root = yaml.safe_load((Path(__file__).resolve().parents[1] / "dagster.yaml").read_text())
    from erasure_pipeline.app.runner import INSTANCE_TEMPLATE

    template = yaml.safe_load(INSTANCE_TEMPLATE.read_text())
    storages = {"run_storage", "event_log_storage", "schedule_storage"}
    storage = {*storages, "compute_logs", "local_artifact_storage"}
    assert {k: v for k, v in root.items() if k not in storage} == {k: v for k, v in template.items() if k not in storages}
    for name in storages:  # the same classes; the home named by path here, by $DAGSTER_HOME there
        assert {**root[name], "config": None} == {**template[name], "config": None}
        assert root[name]["config"] == {"dagster_home": ".erasure_home/dagster"}
        assert template[name]["config"] == {"dagster_home": {"env": "DAGSTER_HOME"}}
    assert root["compute_logs"]["config"]["base_dir"] == ".erasure_home/dagster/storage"

"""The code location as Dagster sees it: graph shape, partitions, groups, sensors."""

import dagster as dg

from erasure_pipeline import tags
from erasure_pipeline.definitions import build_definitions
from erasure_pipeline.graph import demo_graph
from erasure_pipeline.policy import Policy

SHARD_ASSETS = [n.name for n in demo_graph().shard_nodes]
MERGE_ASSETS = [n.name for n in demo_graph().merge_nodes]

EXPECTED_GRAPH = {
    "raw_subjects": ("raw", set()),
    "raw_events": ("raw", set()),
    "raw_tickets": ("raw", set()),
    "cohort_partials": ("cohorts", {"raw_subjects"}),
    "anonymised_cohorts": ("cohorts", {"cohort_partials"}),
    "cohort_model": ("cohorts", {"anonymised_cohorts"}),
    "training_shards": ("training", {"raw_subjects", "raw_events"}),
    "shard_models": ("models", {"training_shards"}),
    "ensemble_model": ("models", {"shard_models", "training_shards"}),
    "vector_index": ("vectors", {"raw_tickets"}),
    "erasure_certificates": ("erasure", {*SHARD_ASSETS, *MERGE_ASSETS}),
}


def test_module_level_defs_load_with_16_shards_by_default():
    from erasure_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    for name in SHARD_ASSETS:
        keys = graph.get(dg.AssetKey(name)).partitions_def.get_partition_keys()
        assert keys[0] == "shard_00" and keys[-1] == "shard_15" and len(keys) == 16


def test_graph_snapshot_groups_and_edges():
    graph = build_definitions(Policy(shards=4)).resolve_asset_graph()
    actual = {
        k.to_user_string(): (graph.get(k).group_name, {p.to_user_string() for p in graph.get(k).parent_keys})
        for k in graph.get_all_asset_keys()
    }
    assert actual == EXPECTED_GRAPH
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {
        ("raw_subjects", "no_tombstoned_subjects"), ("raw_events", "no_tombstoned_subjects"),
        ("raw_tickets", "no_tombstoned_subjects"), ("training_shards", "no_tombstoned_subjects"),
        ("vector_index", "no_tombstoned_points"), ("anonymised_cohorts", "k_anonymous"),
        ("shard_models", "matches_independent_retrain"), ("ensemble_model", "meets_quality_floor"),
        ("erasure_certificates", "requests_on_time"),
    }
    assert not graph.get(dg.AssetKey("erasure_certificates")).is_executable  # only erasure runs report it
    for name in [*SHARD_ASSETS, *MERGE_ASSETS]:
        assert graph.get(dg.AssetKey(name)).is_executable


def test_no_edge_crosses_shards():
    graph = build_definitions(Policy(shards=4)).resolve_asset_graph()
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
    defs = build_definitions(Policy(shards=4))
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"erasure_sensor", "erasure_failure_sensor"}
    assert sensors["erasure_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["erasure_sensor"].minimum_interval_seconds == 5
    assert sensors["erasure_sensor"].job_name == tags.ERASURE_JOB


def test_named_jobs_and_every_writing_step_in_the_pool():
    defs = build_definitions(Policy(shards=4))
    jobs = {j.name: j for j in defs.jobs}
    assert set(jobs) == {tags.ERASURE_JOB, tags.CYCLE_JOB, tags.INGEST_JOB, tags.REBUILD_JOB}
    for job in jobs.values():
        writers = [n for n in job.graph.node_defs if n.name.startswith(("shard_step", "merge"))]
        assert writers and all(n.pool == tags.POOL for n in writers), job.name
        assert job.tags[tags.KIND] == tags.JOB_KINDS[job.name]
    assert {n.name for n in jobs[tags.ERASURE_JOB].graph.node_defs} == {"claim_requests", "shard_step", "merge_and_certify"}
    graph = defs.resolve_asset_graph()
    for name in [*SHARD_ASSETS, *MERGE_ASSETS]:
        assert graph.get(dg.AssetKey(name)).pools == {tags.POOL}
    assert defs.resolve_schedule_def("retraining_cycle").job_name == tags.CYCLE_JOB

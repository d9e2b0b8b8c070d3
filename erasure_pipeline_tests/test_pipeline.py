"""Materialising the graph: every partition, metadata, data versions, and the exactness property."""

import dagster as dg
import numpy as np
import pandas as pd

from erasure_pipeline.app.demo import demo_graph
from erasure_pipeline.core import identity
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.shard_training import constituent_output, probe_set, train_shard_model
from erasure_pipeline.stores import lake as lk
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import materialize_assets

SHARD_ASSETS = [n.name for n in demo_graph().shard_nodes]
MERGE_ASSETS = [n.name for n in demo_graph().merge_nodes]


def _latest(inst, asset, partition=None):
    return inst.get_latest_materialization_event(dg.AssetKey(asset)) if partition is None else next(
        r.event_log_entry for r in inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records)


def test_demo_materialises_every_partition_with_metadata(demo_home):
    inst = instance()
    _defs, policy = defs_and_policy()
    for name in SHARD_ASSETS:
        done = inst.get_materialized_partitions(dg.AssetKey(name))
        assert done == set(identity.partition_keys(policy.shards)), name
    for name in MERGE_ASSETS:
        assert inst.get_latest_materialization_event(dg.AssetKey(name)) is not None
    assert inst.get_latest_materialization_event(dg.AssetKey("erasure_certificates")) is None  # erasure runs only
    (run,) = inst.get_runs()
    assert run.job_name == "ingest_job" and run.is_success  # the whole build is one run
    meta = _latest(inst, "raw_subjects", "shard_01").asset_materialization.metadata
    assert {"rows", "subjects", "content_hash"} <= set(meta)
    ens = inst.get_latest_materialization_event(dg.AssetKey("ensemble_model")).asset_materialization.metadata
    assert ens["holdout_roc_auc"].value > 0.6 and "| holdout_roc_auc |" in ens["metrics"].value
    checks = inst.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("anonymised_cohorts"), "k_anonymous"), limit=1)
    assert checks[0].status.value == "SUCCEEDED"
    # raw partitions hold the keyed hash alongside the source columns
    raw = stores.table(stores.lake(), "raw_subjects", "shard_00")
    assert raw["subject_key"].map(identity.is_subject_key).all()
    assert (identity.shards_of(raw["subject_key"], policy.shards) == 0).all()


def test_erasing_one_subject_retrains_its_shard_exactly_and_changes_no_other_shard(demo_home):
    """The property the erasure proof rests on (issue: exactness)."""
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.erasure.intake import erase
    from erasure_pipeline_tests.erasure_helpers import landing_frames

    inst = instance()
    defs, policy = defs_and_policy()
    store = stores.lake()
    before = {(a, p): _latest(inst, a, p).asset_materialization.metadata["content_hash"].value
              for a in SHARD_ASSETS for p in identity.partition_keys(policy.shards)}
    rows = stores.table(store, "training_shards", "shard_02")
    subjects, _ = landing_frames(policy.shards)
    victim = rows[~rows[ft.HOLDOUT]][ft.KEY].iloc[0]
    erase(subjects.loc[subjects["subject_key"] == victim, "subject_id"].iloc[0])
    assert not drain(defs, inst).failed_runs
    remaining = stores.table(store, "training_shards", "shard_02")
    assert victim not in set(remaining[ft.KEY]) and len(remaining) == len(rows) - 1
    stored = lk.loads_model(store.read_bytes(lk.model_name("shard_models", "shard_02")))["model"]
    fresh, _ = train_shard_model(policy, "model", remaining, 2)
    probe = probe_set(policy, remaining, 2)
    np.testing.assert_array_equal(constituent_output(stored, probe, 2), constituent_output(fresh, probe, 2))
    after = {(a, p): _latest(inst, a, p).asset_materialization.metadata["content_hash"].value
             for a in SHARD_ASSETS for p in identity.partition_keys(policy.shards)}
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all(p == "shard_02" for _, p in changed)
    assert ("shard_models", "shard_02") in changed


def test_data_versions_make_exactly_the_changed_shard_children_stale(demo_home):
    # Dagster's own test helper for stale status (the UI reads the same through GraphQL;
    # test_dagster_dev checks that path end to end).
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    inst = instance()
    defs, _policy = defs_and_policy()
    res = materialize_assets(["raw_events"], "shard_01")
    assert res.success  # same content (no new landing rows, no tombstones): nothing becomes stale
    resolver = get_stale_status_resolver(inst, [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)])
    assert resolver.get_status(dg.AssetKey("training_shards"), "shard_01") == StaleStatus.FRESH
    # change shard_01's raw events for real: its children become stale, shard_00's do not
    store = stores.lake()
    ev = stores.table(store, "raw_events", "shard_01")
    landing = stores.landing()
    extra = ev.head(1).assign(event_id="ev-new-1", event_type="purchase").drop(columns=["subject_key"])
    landing.write_bytes("events/extra.csv", extra.to_csv(index=False).encode())
    assert materialize_assets(["raw_events"], "shard_01").success
    resolver = get_stale_status_resolver(inst, [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)])
    assert resolver.get_status(dg.AssetKey("training_shards"), "shard_01") == StaleStatus.STALE
    assert resolver.get_status(dg.AssetKey("training_shards"), "shard_00") == StaleStatus.FRESH


def test_landing_contract_error_surfaces_in_the_cli(demo_home):
    from click.testing import CliRunner

    from erasure_pipeline.app.cli import main

    stores.landing().write_bytes("events/bad.csv", b"event_id,subject_id,ts,event_type\ne-x,,2026-01-01,web_visit\n")
    out = CliRunner().invoke(main, ["materialize"])
    assert out.exit_code == 1 and (out.exception is None or isinstance(out.exception, SystemExit))
    assert "Traceback" not in out.output
    assert out.output.strip().splitlines()[-1] == (
        "error: claim_landing_files: events/bad.csv, column 'subject_id', row 1 (line 2): empty subject id in 1 row; declare "
        "datasets.events.missing_subject: drop or keep to accept such rows")  # the run's one pass


def test_search_shows_ticket_ids_not_subject_ids(demo_home):
    from click.testing import CliRunner

    from erasure_pipeline.app.cli import main

    out = CliRunner().invoke(main, ["search", "charged twice refund"])
    assert out.exit_code == 0, out.output
    assert "tk-" in out.output and "@" not in out.output
    assert pd.Series(out.output.splitlines()).str.contains("shard_").sum() == 5

"""Node kinds are plug-ins: a kind registered from here alone shows in the graph, the Dagster assets, the erasure
plan, ``verify`` and the certificate, with no other change; an unknown kind is a loud error."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.demo import demo_policy
from erasure_pipeline.app.process import drain
from erasure_pipeline.core.graph import Node
from erasure_pipeline.core.identity import NO_SUBJECT
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.kinds import raw
from erasure_pipeline.kinds.base import (
    Env,
    Finding,
    Kind,
    NodeResult,
    NodeRun,
    Registry,
    UnknownKind,
    finish,
    rows_of_subject,
)
from erasure_pipeline.kinds.raw_rows import key_counts
from erasure_pipeline.kinds.registry import REGISTRY, graph_for, registered
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.lake_backends import LocalLake
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import build_demo, defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import key, materialised_partitions, max_storage_id, pick_subjects

TOY_RISK = "Toy feature store: its exports made before the completion date are out of scope."


class ToyFeatureStore(Kind):
    """A feature store: per shard, one row per subject of the features' dataset (their key and a count)."""

    name = "toy_feature_store"
    action = "FEATURE_DELETE"
    residual_risk = TOY_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        return [Node("toy_features", self.name, "features", True, (raw.node_name(policy.features.dataset),), ("seed",), self.action,
                     subject_rows=True, kinds=("parquet",), description="A toy feature store: one row per subject of the shard.")]

    def compute(self, run: NodeRun) -> NodeResult:
        rows = run.env.read_rows(run.node.parents[0], run.partition)
        keys = sorted(set(rows["subject_key"]) - run.env.ledger.tombstones.active(run.shard))
        table = pd.DataFrame({"subject_key": keys, "rows": [int((rows["subject_key"] == k).sum()) for k in keys]})
        digest = lk.write_table(run.env.lake, run.node.name, run.partition, table)
        finish(run, digest, provenance=dict.fromkeys(keys, 1))
        return NodeResult(digest, None, {"rows": len(table)})

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        return [rows_of_subject(self.read_rows(env, node, partition), subject_key, f"{node.name}[{partition}]")]


def test_a_kind_registered_from_the_tests_is_in_the_graph_assets_plan_verify_and_certificate(empty_home):
    with registered(ToyFeatureStore()):
        graph = graph_for(demo_policy(shards=4))
        assert graph.node("toy_features").kind == "toy_feature_store" and graph.node("toy_features").partitioned
        build_demo(empty_home, n_subjects=160)
        defs, policy = defs_and_policy()
        assert "toy_features" in {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
        (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
        part = f"shard_{shard:02d}"
        assert key(sid) in set(stores.table(stores.lake(), "toy_features", part)["subject_key"])
        rid = erase(sid)[0]
        inst = instance()
        start = max_storage_id(inst)
        result = drain(defs, inst)
        assert len(result.runs) == 1 and not result.failed_runs
        assert ("toy_features", part) in materialised_partitions(inst, start)  # the erasure plan took it from provenance
        assert key(sid) not in set(stores.table(stores.lake(), "toy_features", part)["subject_key"])
        cert = json.loads(CliRunner().invoke(main, ["certificate", rid, "--json"]).output)
        row = next(d for d in cert["datasets"] if d["dataset"] == f"toy_features[{part}]")
        assert row["action"] == "FEATURE_DELETE" and row["data_present"] == "yes"
        assert TOY_RISK in cert["residual_risk"]
        assert any(f["target"] == f"toy_features[{part}]" and f["claim"] == "no rows of the subject" and f["ok"]
                   for f in cert["verification"])
        verify = CliRunner().invoke(main, ["verify", rid])
        assert verify.exit_code == 0, verify.output
        assert f"ok   no rows of the subject [toy_features[{part}]] 0 rows" in verify.output
    assert "toy_feature_store" not in {k.name for k in REGISTRY}


def test_an_unknown_kind_fails_loudly_naming_the_known_ones():
    class Stray(ToyFeatureStore):
        name = "stray"

        def nodes(self, policy):
            return [Node("stray_node", "no_such_kind", "raw", True)]

    registry = Registry([*REGISTRY, Stray()])
    with pytest.raises(UnknownKind, match="no node kind 'no_such_kind' is registered \\(known: lookup, raw, cohort_partial"):
        graph_for(demo_policy(shards=2), registry)
    with pytest.raises(ValueError, match="registered already"):
        registry.register(Stray())


def test_the_ensemble_reads_holdout_label_and_features_of_each_shard_and_combines_differing_column_types(tmp_path):
    """What an ensemble reads of every shard's training table: the holdout rows as a frame, the training labels,
    never the subject keys; and training rows of shards whose tables type a column differently (a feature filled
    with a fraction in one shard, whole numbers in another) combine into one frame for the unsharded baseline."""
    from types import SimpleNamespace

    from erasure_pipeline.kinds import models, training
    from erasure_pipeline.ml import features as ft

    lake = LocalLake(tmp_path)
    tables = {"shard_00": pd.DataFrame({ft.KEY: ["a", "b", "c"], ft.HOLDOUT: [False, True, False], ft.LABEL: [0, 1, 1],
                                        "num_age": [30, 40, 50]}),
              "shard_01": pd.DataFrame({ft.KEY: ["d", "e"], ft.HOLDOUT: [False, False], ft.LABEL: [1, 0], "num_age": [31.5, 44.0]})}
    for p, df in tables.items():
        lk.write_table(lake, "training", p, df)
        lake.write_bytes(lk.model_name("shard_models", p), lk.dumps_model({"model": f"model of {p}", "train_rows": 2}))
    run = SimpleNamespace(env=SimpleNamespace(lake=lake, partitions=("shard_00", "shard_01")),
                          node=SimpleNamespace(parents=("shard_models", "training")))
    shards = models._read_shards(run, ["num_age"])
    assert shards.constituents == ["model of shard_00", "model of shard_01"]
    assert [list(h.columns) for h in shards.holdouts] == [[ft.HOLDOUT, ft.LABEL, "num_age"]] * 2  # no subject keys
    assert [len(h) for h in shards.holdouts] == [1, 0] and shards.holdouts[0]["num_age"].tolist() == [40]
    assert [t.tolist() for t in shards.trained] == [[0, 1], [1, 0]]
    train = shards.training_frame()
    assert train["num_age"].tolist() == [30.0, 50.0, 31.5, 44.0] and len(shards.inputs) == 4
    # an erasure carrying the baseline over reads the holdout's features and the training rows' labels only,
    # from a table written as the training node writes it (holdout last, a row group of its own) or as before
    lk.write_table(lake, "training", "shard_00", *training.holdout_last(tables["shard_00"]))  # type: ignore[misc]
    held = models._read_shards(run, ["num_age"], training=False)
    assert [h[ft.LABEL].tolist() for h in held.holdouts] == [[1], []] and held.holdouts[0]["num_age"].tolist() == [40]
    assert [t.tolist() for t in held.trained] == [[0, 1], [1, 0]] and held.train_rows == [] and held.inputs.keys() == shards.inputs.keys()


@pytest.mark.parametrize("form", ["str", "object", "arrow", "chunks", "dictionary"])
def test_key_counts_are_rows_per_subject_in_every_form_a_key_column_takes(form):
    """Rows per subject key, rows of nobody (null, ``NO_SUBJECT``) left out, whatever holds the keys: a pandas Series
    backed by Arrow (which converts to a ChunkedArray of its own), of Python strings, or Arrow columns as stored."""
    keys = ["b", "a", None, "b", NO_SUBJECT, "b"]
    column = {"str": lambda: pd.Series(keys, dtype="str"), "object": lambda: pd.Series(keys, dtype=object),
              "arrow": lambda: pd.Series(keys, dtype=pd.ArrowDtype(pa.large_string())),
              "chunks": lambda: pa.chunked_array([keys[:3], keys[3:]], type=pa.large_string()),
              "dictionary": lambda: pa.chunked_array([pa.array(keys).dictionary_encode()])}[form]()
    counted = key_counts(column)
    assert counted == {"b": 3, "a": 1}
    assert all(type(n) is int for n in counted.values())

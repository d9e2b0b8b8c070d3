"""Node kinds are plug-ins: a kind registered from here alone shows in the graph, the Dagster assets, the erasure
plan, ``verify`` and the certificate, with no other change; an unknown kind is a loud error."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.demo import demo_policy
from erasure_pipeline.app.process import drain
from erasure_pipeline.core.graph import Node
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.kinds import raw
from erasure_pipeline.kinds.base import Env, Finding, Kind, NodeResult, NodeRun, Registry, UnknownKind, finish, rows_of_subject
from erasure_pipeline.kinds.registry import REGISTRY, graph_for, registered
from erasure_pipeline.stores import lake as lk
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

"""A node run reported as Dagster reports an asset step: typed metadata, provenance tags, check evaluations.

A job's shard and merge steps report each node they run with the tags Dagster writes for an asset step
(code version, data version, and per parent the input data version and event pointer), so the catalog,
lineage and staleness in the UI cannot tell a node made by a job from one materialised by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

from erasure_pipeline.core.graph import Graph, Node
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds.base import CheckOutcome, Markdown, NodeResult, Table

_DATA_VERSION_IS_USER_PROVIDED = "dagster/data_version_is_user_provided"
_TYPES = {"int": "int", "float": "float", "string": "string"}


def to_metadata(values: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Table):
            out[key] = dg.MetadataValue.table(
                [dg.TableRecord(dict(r)) for r in value.records],
                schema=dg.TableSchema(columns=[dg.TableColumn(name, _TYPES[kind]) for name, kind in value.columns]),
            )
        elif isinstance(value, Markdown):
            out[key] = dg.MetadataValue.md(value.text)
        else:
            out[key] = value
    return out


def timed(result: NodeResult, seconds: float) -> NodeResult:
    """The result with how long the node took, for the UI and the benchmarks' step breakdown."""
    return replace(result, metadata={**result.metadata, "compute_seconds": round(seconds, 4)})


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=outcome.name, passed=outcome.passed, metadata=dict(outcome.metadata),
                               severity=dg.AssetCheckSeverity(outcome.severity), description=outcome.description)


def provenance_tags(instance: dg.DagsterInstance, node: Node, code: str, data_version: str) -> dict[str, str]:
    """The tags Dagster writes on an asset step's materialisation: code version, data version, and for
    each parent the data version and storage id of its latest materialisation (what staleness compares)."""
    out = {CODE_VERSION_TAG: code, DATA_VERSION_TAG: data_version, _DATA_VERSION_IS_USER_PROVIDED: "true"}
    records = {r.asset_entry.asset_key: r for r in instance.get_asset_records([dg.AssetKey(p) for p in node.parents])}
    for parent in node.parents:
        key = dg.AssetKey(parent)
        record = records.get(key)
        last = record.asset_entry.last_materialization_record if record else None
        out[get_input_event_pointer_tag(key)] = str(last.storage_id) if last else "NULL"
        parent_version = (last.event_log_entry.asset_materialization.tags or {}).get(DATA_VERSION_TAG) if last else None
        out[get_input_data_version_tag(key)] = parent_version or "INITIAL"
    return out


def node_events(instance: dg.DagsterInstance, policy: Policy, graph: Graph, node: Node, partition: str | None,
                result: NodeResult) -> Iterable[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A node run inside a job, reported as Dagster reports an asset step: the materialisation, then its checks."""
    yield dg.AssetMaterialization(
        asset_key=node.name, partition=partition, metadata=to_metadata(result.metadata),
        tags=provenance_tags(instance, node, graph.code_version(policy, node.name), result.data_version),
    )
    for outcome in result.checks:
        yield dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(node.name), check_name=outcome.name, passed=outcome.passed, partition=partition,
            metadata=dict(outcome.metadata), severity=dg.AssetCheckSeverity(outcome.severity), description=outcome.description,
        )

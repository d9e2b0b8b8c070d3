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
from erasure_pipeline.kinds.base import Markdown, NodeResult, Table

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


def provenance_tags(instance: dg.DagsterInstance, node: Node, code: str, data_version: str) -> dict[str, str]:
    """The tags Dagster writes on an asset step's materialisation: code version, data version, and for
    each parent the data version and storage id of its latest materialisation (what staleness compares)."""
    out = {CODE_VERSION_TAG: code, DATA_VERSION_TAG: data_version, _DATA_VERSION_IS_USER_PROVIDED: "true"}
    # No parents, no query: an instance answers even an empty one in ~8 ms (SQLite, measured), once per raw node.
    keys = [dg.AssetKey(p) for p in node.parents]
    records = {r.asset_entry.asset_key: r for r in instance.get_asset_records(keys)} if keys else {}
    for key in keys:
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
    yield from check_evaluations(node, partition, result)


def check_evaluations(node: Node, partition: str | None, result: NodeResult) -> Iterable[dg.AssetCheckEvaluation]:
    """The node partition's checks, each evaluation naming its partition (a job step's, or an asset step's of several)."""
    for outcome in result.checks:
        yield dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(node.name), check_name=outcome.name, passed=outcome.passed, partition=partition,
            metadata=dict(outcome.metadata), severity=dg.AssetCheckSeverity(outcome.severity), description=outcome.description,
        )


def blocking_checks(node: Node, partition: str | None, result: NodeResult) -> list[str]:
    """``node[partition] check`` of each failed check that blocks what is built from the node."""
    return [f"{node.name}{f'[{partition}]' if partition else ''} {c.name}" for c in result.checks if c.blocks]


MAX_ROWS = 500
"""Rows of a metadata table (a batch may hold hundreds of requests; the ledger and the evidence store hold all)."""


def link(where: str) -> dg.MetadataValue:
    """A path or an ``s3://`` URL, as the UI links it."""
    return dg.MetadataValue.url(where) if "://" in where else dg.MetadataValue.path(where)


def certificate_tables(certificates: list[dict], evidence: Mapping[str, tuple[str, str]]) -> dict[str, dg.MetadataValue]:
    """The batch's certificates as typed tables: one row per certificate (with where its JSON and Markdown
    are), one row per finding; and a link to the first certificate's JSON and Markdown."""
    rows = [dg.TableRecord({
        "request_id": c["request_id"], "data_present": bool(c["data_present"]),
        "nodes_with_data": sum(d["data_present"] == "yes" for d in c["datasets"]),
        "claims": len(c["verification"]), "claims_holding": sum(bool(f["ok"]) for f in c["verification"]),
        "json": evidence.get(c["request_id"], ("", ""))[0], "markdown": evidence.get(c["request_id"], ("", ""))[1],
    }) for c in certificates[:MAX_ROWS]]
    findings = [dg.TableRecord({"request_id": c["request_id"], "claim": f["claim"], "target": f["target"], "holds": bool(f["ok"]),
                                "detail": str(f.get("detail") or "")})
                for c in certificates for f in c["verification"]][:MAX_ROWS]
    out = {
        "certificate_table": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=[
            dg.TableColumn("request_id", "string"), dg.TableColumn("data_present", "bool"), dg.TableColumn("nodes_with_data", "int"),
            dg.TableColumn("claims", "int"), dg.TableColumn("claims_holding", "int"), dg.TableColumn("json", "string"),
            dg.TableColumn("markdown", "string")])),
        "findings": dg.MetadataValue.table(findings, schema=dg.TableSchema(columns=[
            dg.TableColumn("request_id", "string"), dg.TableColumn("claim", "string"), dg.TableColumn("target", "string"),
            dg.TableColumn("holds", "bool"), dg.TableColumn("detail", "string")])),
    }
    first = next((evidence[c["request_id"]] for c in certificates if c["request_id"] in evidence), None)
    if first is not None:
        out["certificate_json"], out["certificate_markdown"] = link(first[0]), link(first[1])
    return out

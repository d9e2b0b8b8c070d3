"""What running nodes inside Dagster needs, shared by the assets and the jobs.

- the pool every writing step runs in, whose limit the project's code sets and checks;
- which runs are alive (Dagster's run status, and for runs on this host, whether their process is);
- the sweep that fails runs whose process died (kill -9, a crashed ``erasure-pipeline process``),
  frees their pool slots and hands their requests to the next tick;
- materialisation events with the provenance tags Dagster writes for an asset step, so a node run
  inside a job shows in the catalog, lineage and staleness exactly as an asset step would.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

from erasure_pipeline import tags
from erasure_pipeline.graph import Graph, Node
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.nodes import CheckOutcome, Markdown, NodeResult, Table
from erasure_pipeline.policy import Policy

HOST = socket.gethostname()
_DATA_VERSION_IS_USER_PROVIDED = "dagster/data_version_is_user_provided"


# ---------------------------------------------------------------- progress of in-process runs
_progress: Callable[[str], None] | None = None


def set_progress(callback: Callable[[str], None] | None) -> None:
    """Where steps running in this process report progress (the CLI prints it); None: nowhere."""
    global _progress
    _progress = callback


def report_progress(message: str) -> None:
    if _progress is not None:
        _progress(message)


# ---------------------------------------------------------------- the pool
def pool_limit(instance: dg.DagsterInstance) -> int | None:
    for pool in instance.event_log_storage.get_pool_limits():
        if pool.name == tags.POOL:
            return pool.limit
    return None


def ensure_pool(instance: dg.DagsterInstance) -> bool:
    """Set the pool's limit in the instance's storage if it is not ``POOL_LIMIT``; True if it had to.

    The limit lives in Dagster's database (the UI's Concurrency page shows it), set by this code,
    so no instance file can leave merges and shard writes unserialised."""
    if pool_limit(instance) == tags.POOL_LIMIT:
        return False
    instance.event_log_storage.set_concurrency_slots(tags.POOL, tags.POOL_LIMIT)
    return True


def require_pool(instance: dg.DagsterInstance) -> None:
    """At the start of a writing step outside the project's jobs: fail loudly if the pool had no limit."""
    if ensure_pool(instance):
        raise dg.Failure(
            f"The Dagster instance had no limit for pool '{tags.POOL}', so this step was not serialised with other "
            f"writers. The limit ({tags.POOL_LIMIT}) is set now: re-execute the run. (Any erasure-pipeline command, or "
            f"`dagster instance concurrency set {tags.POOL} {tags.POOL_LIMIT}`, sets it too.)"
        )


# ---------------------------------------------------------------- who is alive
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_UNREAD = object()


def run_is_live(instance: dg.DagsterInstance, book: Ledger) -> Callable[..., bool]:
    """``live(run_id, record)``: a run is alive while Dagster has not finished it and, when its job-run
    record says it runs on this host, while that process exists. Runs on other hosts are left to
    Dagster's run monitoring (``run_monitoring`` in the instance). The ledger passes the record it read
    in its own transaction; other callers may omit it."""

    def live(run_id: str, record=_UNREAD) -> bool:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return False
        if record is _UNREAD:
            record = book.job_run(run_id)
        if record is not None and record["finished_at"] is None and record["host"] == HOST:
            return pid_alive(record["pid"])
        return run is not None

    return live


def sweep_interrupted(instance: dg.DagsterInstance, book: Ledger, log: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Runs started on this host whose process is gone: mark them failed in Dagster (so the UI never shows
    them in progress), free their pool slots, and fail them in the ledger (their requests are retried)."""
    swept = []
    for record in book.unfinished_job_runs(HOST):
        if record["pid"] == os.getpid() or pid_alive(record["pid"]):
            continue  # still running (this process's own runs included)
        message = f"interrupted: the process that ran it (pid {record['pid']} on {HOST}) is gone"
        run = instance.get_run_by_id(record["run_id"])
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, message)
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(record["run_id"])
        book.fail_run(record["run_id"], message)
        log(f"run {record['run_id'][:8]} ({record['kind']} {record['batch_id']}) {message}; marked failed, its work will be retried")
        swept.append(record["run_id"])
    return swept


# ---------------------------------------------------------------- reporting what a node did
BLOCKED = "blocking checks failed"
"""How a job step that stops on a failed blocking check says so (like Dagster's own check failure)."""


def blocked(names: list[str]) -> dg.Failure:
    return dg.Failure(f"{BLOCKED}: {', '.join(names)}")


def code_version(policy: Policy, graph: Graph, name: str) -> str:
    return graph.code_version(policy, name)


def to_metadata(values: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Table):
            types = {"int": "int", "float": "float", "string": "string"}
            out[key] = dg.MetadataValue.table(
                [dg.TableRecord(dict(r)) for r in value.records],
                schema=dg.TableSchema(columns=[dg.TableColumn(name, types[kind]) for name, kind in value.columns]),
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
                               severity=dg.AssetCheckSeverity(outcome.severity))


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
        tags=provenance_tags(instance, node, code_version(policy, graph, node.name), result.data_version),
    )
    for outcome in result.checks:
        yield dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(node.name), check_name=outcome.name, passed=outcome.passed, partition=partition,
            metadata=dict(outcome.metadata), severity=dg.AssetCheckSeverity(outcome.severity),
        )

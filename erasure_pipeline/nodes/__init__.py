"""What computing one node partition means, independent of how Dagster runs it. No Dagster import.

The same function makes a node whether a person materialises the asset in the UI (an asset step)
or a job runs it inside a shard step (``jobs``): ``compute(NodeRun) -> NodeResult``. A result says
what was written (its data version, and the one before, so callers know whether anything changed),
what a person should see (metadata), and the outcome of the node's checks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.graph import Graph, Node
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage.lake import Lake
from erasure_pipeline.storage.vectors import VectorStore

Mode = Literal["ingest", "erasure", "rebuild"]


@dataclass(frozen=True)
class Table:
    """A table for the UI (a typed Dagster table in metadata)."""

    records: list[Mapping[str, Any]]
    columns: list[tuple[str, str]]
    """(name, type) with type one of ``string``, ``int``, ``float``."""


@dataclass(frozen=True)
class Markdown:
    text: str


def md_table(rows: list[Mapping[str, Any]]) -> str:
    """A small Markdown table (four decimals for floats), for prose-like metadata."""
    if not rows:
        return "_(none)_"
    cols = list(rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)
    severity: Literal["ERROR", "WARN"] = "ERROR"

    @property
    def blocks(self) -> bool:
        return not self.passed and self.severity == "ERROR"


@dataclass(frozen=True)
class NodeResult:
    data_version: str
    previous: str | None
    """The data version before this computation (None: the node did not exist)."""
    metadata: Mapping[str, Any]
    checks: tuple[CheckOutcome, ...] = ()

    @property
    def changed(self) -> bool:
        return self.data_version != self.previous


@dataclass
class Env:
    """Everything a node computation may read or write."""

    policy: Policy
    graph: Graph
    lake: Lake
    landing: Lake
    vectors: VectorStore
    ledger: Ledger
    pepper: bytes

    @property
    def keyer(self):
        """How ids become keys and shards here: the pepper, the policy's shards and identity rule."""
        return self.policy.keyer(self.pepper)


@dataclass
class NodeRun:
    env: Env
    node: Node
    partition: str | None
    mode: Mode
    run_id: str
    landing_files: list[str] | None = None
    """Ingest only these landing files (a cycle's batch); None means every file in landing."""
    as_of: dt.datetime | None = None
    """A retraining cycle's time: rows older than ``as_of - retention_days`` leave the lake."""
    log: Callable[[str], None] = lambda _m: None
    staged: str | None = None
    """Ingest from this batch's staging area (one pass over landing wrote it); None: read landing."""
    subjects: frozenset[str] | None = None
    """An erasure run's subjects (keys); None: every tombstoned subject the ledger records here."""

    @property
    def code_version(self) -> str:
        return self.env.graph.code_version(self.env.policy, self.node.name)

    @property
    def shard(self) -> int:
        assert self.partition is not None, f"{self.node.name} is not partitioned"
        return identity.shard_from_partition(self.partition)

    @property
    def purges_versions(self) -> bool:
        """An erasure deletes the old object versions of what it rewrites (a versioned bucket keeps them)."""
        return self.mode == "erasure"


def compute(run: NodeRun) -> NodeResult:
    """Compute one node partition; its ``previous`` is the version the ledger recorded before."""
    from erasure_pipeline.nodes import cohorts, raw, training, vectors

    before = run.env.ledger.node_records(run.partition, [run.node.name]).get((run.node.name, run.partition or "all"))

    kinds: dict[str, Callable[[NodeRun], NodeResult]] = {
        "raw": raw.compute_raw,
        "cohort_partial": cohorts.compute_partial,
        "cohort_publish": cohorts.compute_published,
        "cohort_model": cohorts.compute_cohort_model,
        "training_set": training.compute_training_set,
        "shard_model": training.compute_shard_model,
        "ensemble": training.compute_ensemble,
        "vector_index": vectors.compute_vector_index,
    }
    result = kinds[run.node.kind](run)
    return replace(result, previous=before["data_version"] if before else None)


def finish(run: NodeRun, data_version: str, **recorded) -> None:
    """Record what the node partition now holds and what it was built from (``Ledger.record_node``):
    the last write of every computation, after its objects are written."""
    book, graph, policy = run.env.ledger, run.env.graph, run.env.policy
    partitions = identity.partition_keys(policy.shards)
    records = book.node_records(assets=run.node.parents)
    inputs = graph.recorded_inputs(run.node.name, run.partition, partitions, records)
    book.record_node(run.node.name, run.partition, data_version=data_version, code_version=run.code_version, inputs=inputs,
                     run_id=run.run_id, **recorded)


def tombstone_check(keys_present, tombstoned: set[str], name: str = "no_tombstoned_subjects") -> CheckOutcome:
    found = len(tombstoned.intersection(keys_present))
    return CheckOutcome(name, found == 0, {"tombstoned_subjects_found": found, "tombstones_checked": len(tombstoned)})


PICKLED = frozenset({"shard_model", "cohort_model", "ensemble"})


def object_name(node: Node, partition: str | None) -> str:
    """Where a node partition lives in the lake (vector indexes live in Qdrant, not the lake; a raw
    partition is bucket files under this prefix, named by its manifest)."""
    from erasure_pipeline.storage import buckets as bk
    from erasure_pipeline.storage import lake as lk

    if node.kind in PICKLED:
        return lk.model_name(node.name, partition)
    if node.kind == "raw":
        return bk.manifest_name(node.name, partition)
    return lk.table_name(node.name, partition or "all")


def read_partition(env: Env, name: str, partition: str, *, columns: list[str] | None = None, buckets=None,
                   cache: bool = False) -> pd.DataFrame | None:
    """A subject-level node partition as a frame (None: never written), whatever its layout."""
    from erasure_pipeline.storage import buckets as bk
    from erasure_pipeline.storage import lake as lk

    if env.graph.node(name).kind == "raw":
        return bk.read_buckets(env.lake, name, partition, buckets, columns=columns, cache=cache)
    data = env.lake.read_bytes(lk.table_name(name, partition))
    return None if data is None else lk.table_from_bytes(data, columns)


def input_key(parent: str, partition: str | None) -> str:
    return f"{parent}[{partition}]" if partition else parent


def current_inputs(env: Env, node: Node) -> dict[str, str | None]:
    """Content hashes of every input object of a merge as they are stored now.

    A merge records the same map for what it read; ``verify`` compares the two, so a merge that
    was not built from the current shard partitions (e.g. an old copy restored) is found.
    """
    from erasure_pipeline.storage import lake as lk

    out: dict[str, str | None] = {}
    for parent in node.parents:
        p_node = env.graph.node(parent)
        parts = identity.partition_keys(env.policy.shards) if p_node.partitioned else [None]
        for p in parts:
            out[input_key(parent, p)] = lk.object_hash(env.lake, object_name(p_node, p))
    return out

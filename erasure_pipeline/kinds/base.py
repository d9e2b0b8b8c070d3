"""Node kinds as plug-ins: everything one kind of node means, independent of how Dagster runs it. No Dagster import.

A ``Kind`` owns, for its nodes: which nodes a declaration yields (``nodes``), the computation
(``compute(NodeRun) -> NodeResult``), the objects it stores and how to read them back, its data
version as stored, its proof about one subject (``prove``: the findings ``verify`` and every
certificate list), its certificate action and its residual-risk text. A ``Registry`` lists the
kinds (``kinds.registry.REGISTRY``) and fails loudly on an unknown one; adding a store is one class
registered there, and the graph, the assets, the jobs, the erasure plan, ``verify`` and the
certificate pick it up.

The same ``compute`` makes a node whether a person materialises the asset in the UI or a job runs it
inside a shard step. A result says what was written (its data version, and the one before, so
callers know whether anything changed), what a person should see (metadata) and its checks.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd

from erasure_pipeline.core import identity, names
from erasure_pipeline.core.crypto import Sealing
from erasure_pipeline.core.errors import BlockingError, PipelineError, StorageUnavailable
from erasure_pipeline.core.findings import Finding
from erasure_pipeline.core.graph import CheckSpec, Graph, Node
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.core.signing import Signer
from erasure_pipeline.kinds.staleness import explain
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.ledger.keys import KeyRing
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.lake import Lake
from erasure_pipeline.stores.vectors import VectorStore

Mode = Literal["ingest", "erasure", "rebuild"]
TOMBSTONE_CHECK = CheckSpec("no_tombstoned_subjects", "No tombstoned subject_key is in what this materialisation wrote (read back from storage).")


# ---------------------------------------------------------------- what a node computation returns
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
    description: str | None = None
    """One line for the check's history in the UI (which has no partition column: say it here)."""

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


# ---------------------------------------------------------------- what a node computation may use
@dataclass
class Env:
    """Everything a node computation may read or write, and the kinds that make the graph's nodes."""

    policy: Policy
    graph: Graph
    lake: Lake
    landing: Lake
    vectors: VectorStore
    ledger: Ledger
    pepper: bytes
    kinds: Registry
    signer: Signer | None = None
    """The evidence key: signs certificates; its public half checks them."""
    evidence: Lake | None = None
    """Where certificates are kept as JSON and Markdown for auditors (``Settings.evidence``)."""
    keys: KeyRing | None = None
    """The subjects' data keys (``ledger.keys``): what seals and opens declared personal fields."""

    @property
    def keyer(self) -> identity.Keyer:
        """How ids become keys and shards here: the pepper, the policy's shards and identity rule."""
        return self.policy.keyer(self.pepper)

    @property
    def partitions(self) -> tuple[str, ...]:
        return self.graph.partitions

    def kind_of(self, name: str) -> Kind:
        return self.kinds.get(self.graph.node(name).kind)

    def read_rows(self, name: str, partition: str, *, buckets: Iterable[int] | None = None, columns: list[str] | None = None,
                  cache: bool = False) -> pd.DataFrame | None:
        """A subject-level node partition as a frame (None: never written), whatever its kind's layout."""
        return self.kind_of(name).read_rows(self, self.graph.node(name), partition, buckets=buckets, columns=columns, cache=cache)


class KeysLost(BlockingError):
    """Personal fields of kept subjects do not open: their data keys are missing from the key store."""


def sealing_for(env: Env, contract, withhold=(), carried: Mapping[str, str] | None = None) -> Sealing | None:
    """How a node writes ``contract``'s table: its declared personal columns sealed (None: nothing declared);
    ``carried``: those the frames hold sealed already (read with ``carry``), written as they are."""
    if not contract.sealed:
        return None
    if env.keys is None:
        raise PipelineError(f"datasets.{contract.name}.personal is declared but no key store is open")
    return Sealing(tuple(contract.sealed), env.keys, frozenset(withhold), dict(carried or {}))


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


# ---------------------------------------------------------------- the plug-in
class Kind(ABC):
    """One kind of node. Subclasses set the class attributes and implement ``nodes`` and ``compute``;
    the other methods have defaults for a node that stores one Parquet table per partition."""

    name: ClassVar[str]
    """The registry's key, and ``Node.kind`` of every node it yields."""
    action: ClassVar[str] = "NO_DATA"
    """What a certificate calls rebuilding one of its nodes for an erased subject."""
    unit: ClassVar[str] = "rows"
    """What its provenance counts for one subject (a certificate says "12 rows", "2 points")."""
    residual_risk: ClassVar[str | None] = None
    """What a certificate says remains, when this kind held the subject."""
    personal: ClassVar[bool] = True
    """Whether its nodes may hold a person's data: a certificate lists (and ``verify`` proves) only those."""

    @abstractmethod
    def nodes(self, policy: Policy) -> list[Node]:
        """The nodes a declaration yields of this kind (none when the declaration does not ask for it)."""

    @abstractmethod
    def compute(self, run: NodeRun) -> NodeResult:
        """Compute one node partition and record it (``finish``); ``previous`` is filled in by ``compute_node``."""

    def object_name(self, node: Node, partition: str | None) -> str | None:
        """The lake object a merge reads of this node partition, and hashes as its input (None: not in the lake)."""
        return lk.table_name(node.name, partition or "all")

    def read_rows(self, env: Env, node: Node, partition: str, *, buckets: Iterable[int] | None = None,
                  columns: list[str] | None = None, cache: bool = False) -> pd.DataFrame | None:
        data = env.lake.read_bytes(lk.table_name(node.name, partition))
        return None if data is None else lk.table_from_bytes(data, columns)

    def stored_version(self, env: Env, node: Node, partition: str | None) -> str | None:
        """The data version of what is stored now, computed as ``compute`` computes it (None: nothing stored)."""
        name = self.object_name(node, partition)
        return None if name is None else lk.object_hash(env.lake, name)

    def recorded_inputs(self, env: Env, node: Node) -> list[tuple[str, dict | None]]:
        """A merge's stored objects and the input hashes each recorded when it was built (shard nodes: none)."""
        return []

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        """What this node partition proves about an erased subject now. The default: none of its objects has a
        version from before the subject's erasure request (a versioned bucket keeps old versions).

        ``cache`` is shared by the proofs of one batch; what a kind reads for the batch's subjects of a partition
        at once (``read_together``) it keeps there."""
        name = self.object_name(node, partition)
        return [versions_before_tombstone(env, name, subject_key)] if name else []


class UnknownKind(PipelineError):
    """A node names a kind no module registered."""


class Registry:
    """The node kinds, in the order their nodes appear in the graph; an unknown name is an error."""

    def __init__(self, kinds: Iterable[Kind] = ()):
        self._kinds: dict[str, Kind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: Kind) -> Kind:
        if kind.name in self._kinds:
            raise ValueError(f"a node kind named '{kind.name}' is registered already")
        self._kinds[kind.name] = kind
        return kind

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    def get(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(f"no node kind '{name}' is registered (known: {', '.join(self._kinds)})") from None

    def __iter__(self):
        return iter(self._kinds.values())


# ---------------------------------------------------------------- what every kind's computation shares
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def compute_node(run: NodeRun) -> NodeResult:
    """Compute one node partition with its kind; ``previous`` is the version the ledger recorded before."""
    before = run.env.ledger.nodes.records(run.partition, [run.node.name]).get((run.node.name, run.partition or "all"))
    if not run.node.partitioned and not run.node.prepare:
        refuse_stale_inputs(run.env, run.node)
    try:
        result = run.env.kinds.get(run.node.kind).compute(run)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        # A full, read-only or vanished volume is a cause outside the requests: blocked, not an attempt used up.
        raise StorageUnavailable(f"{run.node.name}[{run.partition or 'all'}]: {os.strerror(exc.errno).lower()} writing "
                                 f"{exc.filename or 'a store'}: free space (or remount it writable) and the work resumes by itself") from None
    checks = result.checks
    if any(c.name == names.POLICY_CHECK for c in run.node.checks):
        checks = (*checks, CheckOutcome(names.POLICY_CHECK, True, {"code_version": run.code_version}, "WARN",
                                        f"{run.partition}: made under the policy in effect"))
    return NodeResult(result.data_version, before["data_version"] if before else None, result.metadata, checks)


class StaleInputs(BlockingError):
    """A merge asked to build from shard partitions that are not current: it names them and how to rebuild them."""


def refuse_stale_inputs(env: Env, node: Node) -> None:
    """A merge never builds from shard partitions made under other policy values, from changed inputs, or
    missing: it fails naming them (the jobs rebuild them in their shard steps first; a merge materialised
    by hand in the UI does not)."""
    parents = [p for p in node.parents if env.graph.node(p).partitioned]
    records = env.ledger.nodes.records(assets=[*parents, *(a for p in parents for a in env.graph.node(p).parents)])
    found: dict[str, dict[str | None, str]] = {}
    for p in parents:
        for part in env.graph.partitions:
            if (why := env.graph.stale_reason(env.policy, p, part, records)) is not None:
                found.setdefault(p, {})[part] = why
    stale = [(p, part, why) for p, parts in explain(env.ledger, env.policy, env.graph, records, found).items() for part, why in parts.items()]
    if stale:
        shown = ", ".join(f"{p}[{part}]" for p, part, _why in stale[:6]) + (f" and {len(stale) - 6} more" if len(stale) > 6 else "")
        raise StaleInputs(f"{node.name}: {len(stale)} shard partitions it reads are not current ({stale[0][2]}): {shown}; rebuild them "
                          "first: launch rebuild_job (no config needed) or run `erasure-pipeline backfill --stale`")


def finish(run: NodeRun, data_version: str, **recorded) -> None:
    """Record what the node partition now holds and what it was built from (``NodeRecords.record``): the
    last write of every computation, after its objects are written."""
    book, graph = run.env.ledger, run.env.graph
    inputs = graph.recorded_inputs(run.node.name, run.partition, book.nodes.records(assets=run.node.parents))
    book.nodes.record(run.node.name, run.partition, data_version=data_version, code_version=run.code_version, inputs=inputs,
                      run_id=run.run_id, policy_values=graph.policy_values(run.env.policy, run.node.name), **recorded)


def recorded_as(run: NodeRun, data_version: str) -> bool:
    """Whether the ledger's last record of this node partition is ``data_version`` under this code version: what a
    computation that changes part of the partition may diff against (its provenance describes what is stored)."""
    record = run.env.ledger.nodes.records(run.partition, [run.node.name]).get((run.node.name, run.partition or "all"))
    return record is not None and record["data_version"] == data_version and record["code_version"] == run.code_version


def rows_changed(before: Mapping[str, int], after: Mapping[str, int]) -> set[str]:
    """The subjects whose number of rows differs between two counts (a subject absent from one has none there)."""
    return {k for k, n in after.items() if before.get(k) != n} | {k for k in before if k not in after}


def tombstone_check(keys_present: pd.Series, tombstoned: set[str], name: str = TOMBSTONE_CHECK.name) -> CheckOutcome:
    """How many tombstoned subjects ``keys_present`` (a written partition's subject keys, a row each) still holds:
    matched column-wise (iterating a build's rows one by one in Python was 2.2 s of a 200 000-subject build)."""
    found = int(keys_present[keys_present.isin(list(tombstoned))].nunique()) if tombstoned and len(keys_present) else 0
    return CheckOutcome(name, found == 0, {"tombstoned_subjects_found": found, "tombstones_checked": len(tombstoned)})


def input_key(parent: str, partition: str | None) -> str:
    return f"{parent}[{partition}]" if partition else parent


def purge(run: NodeRun, *names: str) -> int:
    """Old versions of what an erasure rewrote, deleted (a versioned bucket keeps them); how many."""
    return sum(len(run.env.lake.purge_noncurrent(n)) for n in names) if run.purges_versions else 0


# ---------------------------------------------------------------- what every kind's proof shares
def versions_before_tombstone(env: Env, name: str, subject_key: str) -> Finding:
    """Models and aggregates cannot be searched for one subject: no version of them may predate the
    tombstone (the erasure run purges every older one)."""
    versions = env.lake.noncurrent_versions(name)
    since = env.ledger.tombstones.since(subject_key) if versions else None  # the ledger asked only when there is a version
    older = [v for v in versions if since is None or v.last_modified < since]
    return Finding("no object version from before the erasure request", name, not older, f"{len(older)} older versions")


def old_versions_holding(env: Env, names: list[str], subject_key: str, target: str) -> Finding:
    """Tables with a ``subject_key`` column, read version by version: no noncurrent one may hold the subject."""
    versions = [(name, v) for name in names for v in env.lake.noncurrent_versions(name) if not v.delete_marker]
    holding = 0
    for name, v in versions:
        old = lk.table_from_bytes(env.lake.read_version(name, v.version_id))
        holding += int("subject_key" in old and bool((old["subject_key"] == subject_key).any()))
    return Finding("no old object version holds the subject's rows", target, holding == 0,
                   f"{len(versions)} noncurrent versions, {holding} with the subject")


def rows_of_subject(df: pd.DataFrame | None, subject_key: str, target: str) -> Finding:
    present = int((df["subject_key"] == subject_key).sum()) if df is not None and "subject_key" in df else 0
    return rows_found(present, target)


def rows_found(present: int, target: str) -> Finding:
    return Finding("no rows of the subject", target, present == 0, f"{present} rows")


BATCH = "proved_together"
"""The ``cache`` entry naming the subjects a batch proves: partition -> their keys (``verify.prove_together``)."""


def read_together(cache: dict, key: tuple, partition: str | None, subject_key: str, read: Callable[[frozenset[str]], Any]) -> Any:
    """What ``read`` gives for the subjects proven along with this one (the batch's subjects of the partition, or
    this subject alone when no batch is named): read once per batch, kept in ``cache`` under ``key``."""
    together, value = cache.get(key, (frozenset(), None))
    if subject_key not in together:
        together = frozenset({*cache.get(BATCH, {}).get(partition, ()), subject_key})
        value = read(together)
        cache[key] = together, value
    return value

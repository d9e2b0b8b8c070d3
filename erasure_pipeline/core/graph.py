"""The pipeline's shape as one table of nodes, and what can be said of it from the records alone. No Dagster import.

Which nodes a declaration yields is each node kind's business (``kinds/``: ``kinds.registry.graph_for``);
this module is the table they make and its arithmetic: parents and children, the policy fields a node
reads through its ancestors, its code version, and whether a node partition is stale from the
ledger's records. The Dagster assets, the jobs, the erasure plan, the certificate and ``verify`` all
read this table; no module names an asset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from erasure_pipeline.core.names import CERTIFICATES_ASSET


@dataclass(frozen=True)
class CheckSpec:
    name: str
    description: str
    blocking: bool = True


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    """The node kind (``kinds.registry``) that makes it, stores it, proves it and names its certificate action."""
    group: str
    partitioned: bool
    """Partitioned by shard (subject-level) or an unpartitioned merge over every shard."""
    parents: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    """Policy fields this node reads itself (its parents' are added by ``Graph.policy_fields``)."""
    action: str = "NO_DATA"
    """What a certificate calls rebuilding this node for an erased subject."""
    subject_rows: bool = False
    """Holds rows (or points) keyed by ``subject_key``: its provenance is recorded, ``verify`` scans it."""
    table: str | None = None
    """For raw nodes: the landing table (declared dataset) it ingests."""
    expires: bool = False
    """For raw nodes of a dataset with a timestamp: rows past retention_days leave it on a cycle."""
    model: str | None = None
    """For training sets, shard models and ensembles: the declared model they belong to."""
    checks: tuple[CheckSpec, ...] = ()
    kinds: tuple[str, ...] = ()
    description: str = ""
    prepare: bool = False
    """Unpartitioned, and read by shard nodes (a lookup table): computed before the shard steps, not with the merges."""


POLICY_CHANGED = "policy fields it reads changed"
CODE_REVISION = "1"
"""Bumped when a node's computation changes in a way its data should be rebuilt for."""


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    """In dependency order: every node after its parents."""
    partitions: tuple[str, ...] = ()
    """The shard partition keys every partitioned node has (``shard_00`` …)."""
    certificate_node: str = CERTIFICATES_ASSET

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"two nodes share a name: {sorted({n for n in names if names.count(n) > 1})}")
        seen: set[str] = set()
        for n in self.nodes:
            missing = [p for p in n.parents if p not in seen]
            if missing:
                raise ValueError(f"node {n.name} comes before its parents {missing}")
            seen.add(n.name)

    @cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        return self.by_name[name]

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def shard_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.partitioned]

    @property
    def merge_nodes(self) -> list[Node]:
        """Unpartitioned nodes over every shard, computed after the shard steps."""
        return [n for n in self.nodes if not n.partitioned and not n.prepare]

    @property
    def prepare_nodes(self) -> list[Node]:
        """Unpartitioned nodes shard nodes read (lookup tables), computed before the shard steps."""
        return [n for n in self.nodes if n.prepare]

    @property
    def raw_nodes(self) -> list[Node]:
        """The nodes that ingest a dataset of people from landing, one per dataset, partitioned by shard."""
        return [n for n in self.nodes if n.table is not None and n.partitioned]

    @property
    def leaves(self) -> list[str]:
        """Nodes nothing reads: every other node flows into one of them (what the certificates depend on in the UI)."""
        read = {p for n in self.nodes for p in n.parents}
        return [n.name for n in self.nodes if n.name not in read]

    @property
    def subject_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.subject_rows]

    def children(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.parents]

    def ancestors(self, name: str) -> set[str]:
        out, todo = set(), list(self.node(name).parents)
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo.extend(self.node(p).parents)
        return out

    def descendants(self, names: Iterable[str]) -> set[str]:
        out, todo = set(), list(names)
        while todo:
            for child in self.children(todo.pop()):
                if child.name not in out:
                    out.add(child.name)
                    todo.append(child.name)
        return out

    def policy_fields(self, name: str) -> tuple[str, ...]:
        """Every policy field the node's output depends on: its own and, through its inputs, its ancestors'."""
        fields = set(self.node(name).reads)
        for a in self.ancestors(name):
            fields.update(self.node(a).reads)
        return tuple(sorted(fields))

    def ordered(self, names: Iterable[str]) -> list[str]:
        wanted = set(names)
        return [n.name for n in self.nodes if n.name in wanted]

    def code_version(self, policy, name: str) -> str:
        """What changes when the node's code or any policy field it reads changes (Dagster's ``code_version``)."""
        return f"{CODE_REVISION}.{policy.fields_hash(*self.policy_fields(name))}"

    def policy_values(self, policy, name: str) -> dict:
        """The values of the policy fields the node's code version stands for (kept in the ledger, so a stale
        partition can say which field changed and from what)."""
        return policy.fields_values(*self.policy_fields(name))

    def input_keys(self, name: str, partition: str | None) -> list[tuple[str, str]]:
        """(parent, partition) pairs a node partition reads: the same shard of a shard parent; every shard
        of a shard parent for a merge; ``all`` of an unpartitioned parent."""
        node = self.node(name)
        out = []
        for parent in node.parents:
            if not self.node(parent).partitioned:
                out.append((parent, "all"))
            elif node.partitioned:
                out.append((parent, partition))
            else:
                out += [(parent, p) for p in self.partitions]
        return out

    def recorded_inputs(self, name: str, partition: str | None, records: dict) -> dict[str, str]:
        """The parents' recorded data versions a node partition reads now (``MISSING`` for a parent never recorded)."""
        return {f"{p}[{part}]": (records[(p, part)]["data_version"] if (p, part) in records else "MISSING")
                for p, part in self.input_keys(name, partition)}

    def stale_reason(self, policy, name: str, partition: str | None, records: dict) -> str | None:
        """Why a node partition must be computed again, from the ledger's records alone (None: it is fresh).

        Missing; made under other policy values or code; or built from inputs that have changed since
        (including an input a run rewrote before it died)."""
        record = records.get((name, partition or "all"))
        if record is None:
            return "missing"
        if record["code_version"] != self.code_version(policy, name):
            return POLICY_CHANGED
        if record["inputs"] != self.recorded_inputs(name, partition, records):
            return "an input changed"
        return None

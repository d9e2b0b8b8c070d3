"""The pipeline's shape in one table. No Dagster import.

Every other place that needs the shape derives it from here: the Dagster assets (keys, groups,
partitions, lineage, checks, code versions), the jobs (which nodes run per shard and which are
merges), the erasure plan and certificate (what an asset's action is called), ``verify`` (which
partitions hold subject rows) and policy staleness (which policy fields each node reads,
through its parents too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class CheckSpec:
    name: str
    description: str
    blocking: bool = True


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    """Which computation makes it (``nodes.COMPUTE``)."""
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
    """For raw nodes: the landing table it ingests."""
    checks: tuple[CheckSpec, ...] = ()
    kinds: tuple[str, ...] = ()
    description: str = ""


CODE_REVISION = "1"
"""Bumped when a node's computation changes in a way its data should be rebuilt for."""

TOMBSTONE_CHECK = CheckSpec("no_tombstoned_subjects", "No tombstoned subject_key is in what this materialisation wrote (read back from storage).")


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    """In dependency order: every node after its parents."""
    certificate_node: str = "erasure_certificates"
    groups: tuple[str, ...] = field(default=("raw", "cohorts", "training", "models", "vectors", "erasure"))

    def __post_init__(self) -> None:
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
        return [n for n in self.nodes if not n.partitioned]

    @property
    def raw_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.table is not None]

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

    def input_keys(self, name: str, partition: str | None, partitions: list[str]) -> list[tuple[str, str]]:
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
                out += [(parent, p) for p in partitions]
        return out

    def recorded_inputs(self, name: str, partition: str | None, partitions: list[str], records: dict) -> dict[str, str]:
        """The parents' recorded data versions a node partition reads now (``MISSING`` for a parent never recorded)."""
        return {f"{p}[{part}]": (records[(p, part)]["data_version"] if (p, part) in records else "MISSING")
                for p, part in self.input_keys(name, partition, partitions)}

    def stale_reason(self, policy, name: str, partition: str | None, partitions: list[str], records: dict) -> str | None:
        """Why a node partition must be computed again, from the ledger's records alone (None: it is fresh).

        Missing; made under other policy values or code; or built from inputs that have changed since
        (including an input a run rewrote before it died)."""
        record = records.get((name, partition or "all"))
        if record is None:
            return "missing"
        if record["code_version"] != self.code_version(policy, name):
            return "policy fields it reads changed"
        if record["inputs"] != self.recorded_inputs(name, partition, partitions, records):
            return "an input changed"
        return None


def demo_graph() -> Graph:
    """The demo's shape: subjects, events and tickets; cohorts; SISA training; a ticket vector index."""
    raw = [
        Node(f"raw_{table}", "raw", "raw", True, reads=("shards", "identity"), action="RAW_REWRITE", subject_rows=True, table=table,
             checks=(TOMBSTONE_CHECK,), kinds=("parquet",),
             description=f"Landing `{table}` rows of one shard, keyed by `subject_key`, minus tombstoned subjects.")
        for table in ("subjects", "events", "tickets")
    ]
    return Graph((
        *raw,
        Node("cohort_partials", "cohort_partial", "cohorts", True, ("raw_subjects",), ("cohorts",), "COHORT_RECOMPUTE",
             kinds=("parquet",),
             description="Per-cohort counts, clipped sums and a membership digest for one shard: invertible, merged in O(S)."),
        Node("training_shards", "training_set", "training", True, ("raw_subjects", "raw_events"),
             ("consent", "model.label", "model.positive_class", "model.numeric_features", "model.categorical_features",
              "model.event_features", "model.holdout_fraction"),
             "SISA_RETRAIN", subject_rows=True, checks=(TOMBSTONE_CHECK,), kinds=("parquet",),
             description="Feature rows of one shard's consenting subjects, sorted by subject_key; a key-derived holdout flag."),
        Node("shard_models", "shard_model", "models", True, ("training_shards",), ("model.estimator", "model.params", "seed"),
             "SISA_RETRAIN", kinds=("scikitlearn",),
             checks=(CheckSpec("matches_independent_retrain",
                               "The stored shard model equals, bit for bit on a probe set, an independent retrain from the shard's current rows."),),
             description="One SISA constituent: the policy's estimator trained on one shard's rows with a seed from (policy seed, shard)."),
        Node("vector_index", "vector_index", "vectors", True, ("raw_tickets",), ("vectors",), "VECTOR_DELETE", subject_rows=True,
             kinds=("qdrant",),
             checks=(CheckSpec("no_tombstoned_points", "Counting points by tombstoned subject_key in the shard's collection gives 0."),),
             description="Ticket chunks of one shard in Qdrant (payload subject_key, ticket_id, shard); tombstoned subjects deleted by filter."),
        Node("anonymised_cohorts", "cohort_publish", "cohorts", False, ("cohort_partials",), ("k_min",), "COHORT_RECOMPUTE",
             kinds=("parquet",),
             checks=(CheckSpec("k_anonymous", "Every published cell holds at least k_min subjects (true counts, from the partials)."),),
             description=("The published cohort table: cells with at least k_min subjects, every number with Laplace noise "
                          "keyed to the cell's membership, so tables published before and after an erasure cannot be differenced.")),
        Node("cohort_model", "cohort_model", "cohorts", False, ("anonymised_cohorts",), ("seed",), "COHORT_RECOMPUTE",
             kinds=("scikitlearn",),
             description="A label-rate model trained on the published cohort table only: no individual row ever reaches it."),
        Node("ensemble_model", "ensemble", "models", False, ("shard_models", "training_shards"),
             ("model.aggregation", "model.min_holdout_auc"), "SISA_RETRAIN", kinds=("scikitlearn",),
             checks=(CheckSpec("meets_quality_floor",
                               "Holdout ROC-AUC at or above policy model.min_holdout_auc. Below it the model is kept only as a "
                               "candidate, the published model is withdrawn (it was built from shard models that changed) and "
                               "the run fails; in an erasure run the check fails as a warning so the erasure still completes."),),
             description="The SISA aggregate of every shard model, evaluated on the key-derived holdout of every shard."),
    ))


def graph_for(policy) -> Graph:
    """The graph a policy describes. (Today every policy describes the demo's shape.)"""
    return demo_graph()

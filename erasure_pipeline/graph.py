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
    """For raw nodes: the landing table (declared dataset) it ingests."""
    expires: bool = False
    """For raw nodes of a dataset with a timestamp: rows past retention_days leave it on a cycle."""
    model: str | None = None
    """For training sets, shard models and ensembles: the declared model they belong to."""
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


def model_suffix(model: str) -> str:
    """A model named ``model`` (the one-model form) keeps the plain names; others are suffixed."""
    return "" if model == "model" else f"_{model}"


def graph_for(policy) -> Graph:
    """The graph a declaration describes: a raw node per dataset, the cohorts, a training set, shard models
    and an ensemble per model, one vector index over every declared text column."""
    nodes: list[Node] = []
    for name, spec in policy.datasets.items():
        nodes.append(Node(
            f"raw_{name}", "raw", "raw", True, reads=("shards", "identity", "lake", f"datasets.{name}"), action="RAW_REWRITE",
            subject_rows=True, table=name, expires=spec.timestamp is not None, checks=(TOMBSTONE_CHECK,), kinds=("parquet",),
            description=f"Landing `{name}` rows of one shard, keyed by `subject_key` (from `{spec.subject}`), minus tombstoned subjects."))
    c = policy.cohorts
    if c is not None:
        nodes.append(Node(
            "cohort_partials", "cohort_partial", "cohorts", True, (f"raw_{c.dataset}",), ("cohorts",), "COHORT_RECOMPUTE",
            kinds=("parquet",),
            description="Per-cohort counts, clipped sums and a membership digest for one shard: invertible, merged in O(S)."))
    f = policy.features
    feature_tables = list(dict.fromkeys([f.dataset, *(a.dataset for a in f.aggregates), *(d for fn in f.functions for d in fn.datasets)]))
    merges: list[Node] = []
    for model, spec in policy.models.items():
        sfx = model_suffix(model)
        reads = ("consent", "features", *(f"models.{model}.{k}" for k in ("label", "task", "positive_class", "classes", "holdout_fraction")))
        nodes.append(Node(
            f"training_shards{sfx}", "training_set", "training", True, tuple(f"raw_{t}" for t in feature_tables), reads,
            "SISA_RETRAIN", subject_rows=True, checks=(TOMBSTONE_CHECK,), kinds=("parquet",), model=model,
            description=f"Feature rows of one shard's consenting subjects for model `{model}` ({spec.task}, label "
                        f"`{spec.label}`), sorted by subject_key; a key-derived holdout flag."))
        nodes.append(Node(
            f"shard_models{sfx}", "shard_model", "models", True, (f"training_shards{sfx}",),
            (f"models.{model}.estimator", f"models.{model}.params", "seed"), "SISA_RETRAIN", kinds=("scikitlearn",), model=model,
            checks=(CheckSpec("matches_independent_retrain",
                              "The stored shard model equals, bit for bit on a probe set, an independent retrain from the shard's current rows."),),
            description=f"One SISA constituent of `{model}`: `{spec.estimator}` trained on one shard's rows with a seed "
                        "from (policy seed, shard)."))
        merges.append(Node(
            f"ensemble_model{sfx}", "ensemble", "models", False, (f"shard_models{sfx}", f"training_shards{sfx}"),
            (f"models.{model}.aggregation", f"models.{model}.quality"), "SISA_RETRAIN", kinds=("scikitlearn",), model=model,
            checks=(CheckSpec("meets_quality_floor",
                              f"Holdout {spec.metric} at or above models.{model}.quality.min. Below it the model is kept only as a "
                              "candidate, the published model is withdrawn (it was built from shard models that changed) and "
                              "the run fails; in an erasure run the check fails as a warning so the erasure still completes."),),
            description=f"The SISA aggregate of every shard model of `{model}`, evaluated on the key-derived holdout of every shard."))
    if policy.text_datasets:
        nodes.append(Node(
            "vector_index", "vector_index", "vectors", True, tuple(f"raw_{t}" for t in policy.text_datasets), ("vectors", "embedder"),
            "VECTOR_DELETE", subject_rows=True, kinds=("qdrant",),
            checks=(CheckSpec("no_tombstoned_points", "Counting points by tombstoned subject_key in the shard's collection gives 0."),),
            description="Text chunks of one shard (" + ", ".join(f"{t}.{col}" for t in policy.text_datasets for col in policy.datasets[t].text)
                        + ") in Qdrant; payload subject_key, dataset, record id; tombstoned subjects deleted by filter."))
    if c is not None:
        merges.insert(0, Node(
            "anonymised_cohorts", "cohort_publish", "cohorts", False, ("cohort_partials",), ("k_min",), "COHORT_RECOMPUTE",
            kinds=("parquet",),
            checks=(CheckSpec("k_anonymous", "Every published cell holds at least k_min subjects (true counts, from the partials)."),),
            description=("The published cohort table: cells with at least k_min subjects, every number with Laplace noise "
                         "keyed to the cell's membership, so tables published before and after an erasure cannot be differenced.")))
        if c.label:
            merges.insert(1, Node(
                "cohort_model", "cohort_model", "cohorts", False, ("anonymised_cohorts",), ("seed",), "COHORT_RECOMPUTE",
                kinds=("scikitlearn",),
                description="A label-rate model trained on the published cohort table only: no individual row ever reaches it."))
    return Graph((*nodes, *merges))


def demo_graph() -> Graph:
    """The demo's shape: the default declaration's graph."""
    from erasure_pipeline.policy import Policy

    return graph_for(Policy())

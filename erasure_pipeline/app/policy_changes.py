"""Policy changes: which assets and partitions a policy makes stale, and one run that rebuilds exactly those.

Staleness comes from the ledger's record of each node partition (``staleness``): each asset's
``code_version`` folds in the policy fields it reads, so a policy change makes exactly the partitions
of the assets that read a changed field stale. Below a stale asset everything may change when it is
rebuilt; the rebuild run recomputes those only where an input actually changed, and each merge once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from erasure_pipeline.app.runner import launch
from erasure_pipeline.core import names
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy, differences
from erasure_pipeline.kinds.registry import graph_for
from erasure_pipeline.kinds.staleness import stale_partitions
from erasure_pipeline.ledger import Ledger


@dataclass
class StaleAsset:
    asset: str
    partitions: list[str | None]
    reason: str
    fields: tuple[str, ...] = ()


@dataclass
class StalePlan:
    assets: list[StaleAsset] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.assets)

    def names(self) -> list[str]:
        return [a.asset for a in self.assets]

    def partitions(self) -> dict[str, list[str]]:
        """Node -> partitions to rebuild (``all`` for a merge), the rebuild run's config."""
        return {a.asset: [p or "all" for p in a.partitions] for a in self.assets if a.reason != "below"}


def stale_under(policy: Policy, book: Ledger, graph: Graph | None = None) -> StalePlan:
    """Asset partitions that are stale under ``policy`` (missing, other policy values, changed inputs), and below them."""
    graph = graph or graph_for(policy)
    stale = stale_partitions(book, policy, graph)
    plan: dict[str, StaleAsset] = {}
    for name, parts in stale.items():
        reasons = sorted(set(parts.values()))
        plan[name] = StaleAsset(name, sorted(parts, key=lambda p: p or ""), reasons[0] if len(reasons) == 1 else "; ".join(reasons),
                                graph.policy_fields(name))
    for name in graph.ordered(graph.descendants(plan) - set(plan)):
        node = graph.node(name)
        parts = list(graph.partitions) if node.partitioned else [None]
        plan[name] = StaleAsset(name, parts, "below")
    return StalePlan([plan[n] for n in graph.names if n in plan])


def field_differences(old: Policy, new: Policy) -> list[tuple[str, object, object]]:
    """Dotted policy fields whose values differ: (field, old, new)."""
    return differences(old.model_dump(mode="json"), new.model_dump(mode="json"))


def rebuild(defs: dg.Definitions, instance: dg.DagsterInstance, plan: StalePlan, *, progress: Callable[[str], None] = lambda _m: None):
    """One rebuild_job run of exactly the stale partitions (and, where their output changes, what is below)."""
    batch = "rb-" + secrets.token_hex(8)
    request = dg.RunRequest(
        run_key=batch, job_name=names.REBUILD_JOB, tags={names.BATCH: batch, names.KIND: "rebuild"},
        run_config={"ops": {names.CLAIM_REBUILD_OP: {"config": {"batch_id": batch, "partitions": plan.partitions()}}}},
    )
    return launch(defs, instance, request, progress)

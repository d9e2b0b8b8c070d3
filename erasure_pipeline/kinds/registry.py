"""The node kinds, listed once, and the graph a declaration yields through them. No Dagster import.

``REGISTRY`` holds the built-in kinds in the order their nodes appear; a project (or a test) adds one
with ``REGISTRY.register(kind)`` before building definitions, and everything that derives from the
graph (assets, jobs, erasure plans, ``verify``, certificates) picks it up. An unknown kind is an error
naming the known ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from erasure_pipeline.core import names
from erasure_pipeline.core.graph import CheckSpec, Graph, Node
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds.base import Kind, Registry
from erasure_pipeline.kinds.cohorts import CohortModel, CohortPartial, CohortTable
from erasure_pipeline.kinds.lookup import Lookup
from erasure_pipeline.kinds.models import Ensemble, ShardModel
from erasure_pipeline.kinds.raw import Raw
from erasure_pipeline.kinds.training import TrainingSet
from erasure_pipeline.kinds.vectors import VectorIndex

REGISTRY = Registry([Lookup(), Raw(), CohortPartial(), TrainingSet(), ShardModel(), VectorIndex(), CohortTable(), CohortModel(),
                     Ensemble()])

POLICY_CHECK = CheckSpec(
    names.POLICY_CHECK,
    "This partition was made under the policy in effect, from its current inputs. After a policy change (or an input "
    "rebuilt by hand) the staleness_sensor reports it failed, saying which fields changed from what, until the "
    "partition is rebuilt: launch rebuild_job (no config needed), or run `erasure-pipeline backfill --stale`. Every "
    "materialisation reports it passed.",
    blocking=False,
)
"""Every shard partition's: the UI shows no staleness for partitioned assets (Dagster 1.13), a failed check it does."""


@contextlib.contextmanager
def registered(kind: Kind, registry: Registry = REGISTRY) -> Iterator[Kind]:
    """``kind`` in the registry for the duration (a plug-in a test brings)."""
    registry.register(kind)
    try:
        yield kind
    finally:
        registry.unregister(kind.name)


def graph_for(policy: Policy, registry: Registry = REGISTRY) -> Graph:
    """The graph a declaration describes: every kind's nodes, the lookup tables shards read first, then the
    shard-partitioned ones (in the registry's order), then the unpartitioned merges over them."""
    nodes: list[Node] = [n for kind in registry for n in kind.nodes(policy)]
    for n in nodes:
        registry.get(n.kind)  # a node of an unregistered kind fails here, by name
    nodes = [replace(n, checks=(*n.checks, POLICY_CHECK)) if n.partitioned else n for n in nodes]
    ordered = [n for n in nodes if n.prepare] + [n for n in nodes if n.partitioned] + \
        [n for n in nodes if not n.partitioned and not n.prepare]
    return Graph(tuple(_topological(ordered)), tuple(policy.partitions))


def _topological(nodes: list[Node]) -> list[Node]:
    """``nodes`` with every node after its parents, otherwise in the given order."""
    placed: set[str] = set()
    out, todo = [], list(nodes)
    while todo:
        ready = next((n for n in todo if set(n.parents) <= placed), None)
        if ready is None:  # a parent no kind yields: the Graph names it
            return out + todo
        out.append(ready)
        placed.add(ready.name)
        todo.remove(ready)
    return out

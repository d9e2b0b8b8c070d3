"""Which node partitions are stale, and why, from the ledger's records alone. No Dagster import.

Each node partition's record holds the code version it was made with (which folds in the policy
fields it reads, ``Graph.code_version``) and the recorded versions of the inputs it read. A partition
is stale when it is missing, when the policy now gives it another code version, or when an input has
changed since; the UI shows the same through Dagster's own data versions, which every node run
reports alongside.
"""

from __future__ import annotations

import datetime as dt

from erasure_pipeline.core import identity
from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.ledger import Ledger


def stale_partitions(book: Ledger, policy: Policy, graph: Graph) -> dict[str, dict[str | None, str]]:
    """Node -> {partition (None: unpartitioned): why it is stale} for every stale node partition."""
    records = book.nodes.records()
    out: dict[str, dict[str | None, str]] = {}
    for node in graph.nodes:
        for p in graph.partitions if node.partitioned else [None]:
            reason = graph.stale_reason(policy, node.name, p, records)
            if reason is not None:
                out.setdefault(node.name, {})[p] = reason
    return out


def expired_partitions(book: Ledger, policy: Policy, graph: Graph, as_of: dt.datetime) -> dict[int, set[str]]:
    """Shard -> raw nodes holding rows older than ``as_of - retention_days`` (datasets with a timestamp)."""
    if policy.retention_days is None:
        return {}
    cutoff = as_of - dt.timedelta(days=policy.retention_days)
    out: dict[int, set[str]] = {}
    for stats in book.nodes.partition_stats():
        node = graph.by_name.get(stats["asset"])
        if node and node.expires and stats["oldest"] is not None and stats["oldest"] < cutoff:
            out.setdefault(identity.shard_from_partition(stats["partition"]), set()).add(node.name)
    return out

"""Which node partitions are stale, and why, from the ledger's records alone. No Dagster import.

Each node partition's record holds the code version it was made with (which folds in the policy
fields it reads, ``Graph.code_version``) and the recorded versions of the inputs it read. A partition
is stale when it is missing, when the policy now gives it another code version, or when an input has
changed since; the UI shows the same through Dagster's own data versions, which every node run
reports alongside.
"""

from __future__ import annotations

from erasure_pipeline import identity
from erasure_pipeline.graph import Graph
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.policy import Policy


def stale_partitions(book: Ledger, policy: Policy, graph: Graph) -> dict[str, dict[str | None, str]]:
    """Node -> {partition (None: unpartitioned): why it is stale} for every stale node partition."""
    partitions = identity.partition_keys(policy.shards)
    records = book.node_records()
    out: dict[str, dict[str | None, str]] = {}
    for node in graph.nodes:
        for p in partitions if node.partitioned else [None]:
            reason = graph.stale_reason(policy, node.name, p, partitions, records)
            if reason is not None:
                out.setdefault(node.name, {})[p] = reason
    return out

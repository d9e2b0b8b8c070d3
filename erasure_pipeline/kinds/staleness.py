"""Which node partitions are stale, and why, from the ledger's records alone. No Dagster import.

Each node partition's record holds the code version it was made with (which folds in the policy
fields it reads, ``Graph.code_version``) and the recorded versions of the inputs it read. A partition
is stale when it is missing, when the policy now gives it another code version, or when an input has
changed since; the UI shows the same through Dagster's own data versions, which every node run
reports alongside.
"""

from __future__ import annotations

import datetime as dt
import json

from erasure_pipeline.core import identity
from erasure_pipeline.core.graph import POLICY_CHANGED, Graph
from erasure_pipeline.core.policy import Policy, differences
from erasure_pipeline.ledger import Ledger


def stale_partitions(book: Ledger, policy: Policy, graph: Graph, records: dict | None = None) -> dict[str, dict[str | None, str]]:
    """Node -> {partition (None: unpartitioned): why it is stale} for every stale node partition. A partition
    made under other policy values says which fields changed, from what to what, where the ledger kept the
    values it was made under (``policy_snapshots``)."""
    records = book.nodes.records() if records is None else records
    out: dict[str, dict[str | None, str]] = {}
    for node in graph.nodes:
        for p in graph.partitions if node.partitioned else [None]:
            reason = graph.stale_reason(policy, node.name, p, records)
            if reason is not None:
                out.setdefault(node.name, {})[p] = reason
    return explain(book, policy, graph, records, out)


def explain(book: Ledger, policy: Policy, graph: Graph, records: dict, stale: dict[str, dict[str | None, str]]) -> dict[str, dict[str | None, str]]:
    """``stale`` with each "policy fields it reads changed" replaced by the fields that changed, from what to
    what, where the ledger kept the values the partition was made under (``policy_snapshots``)."""
    olds = {records[(n, p or "all")]["code_version"] for n, parts in stale.items() for p, r in parts.items() if r == POLICY_CHANGED}
    snapshots = book.nodes.policy_snapshots(olds)
    for name, parts in stale.items():
        now = graph.policy_values(policy, name)
        for p, reason in parts.items():
            was = snapshots.get(records[(name, p or "all")]["code_version"]) if reason == POLICY_CHANGED else None
            if was is not None:
                parts[p] = changed_fields(was, now)
    return stale


def changed_fields(was: dict, now: dict, limit: int = 3) -> str:
    """``policy changed: models.model.params.C 1.0 -> 0.5; …`` (values as compact JSON, shortened)."""
    diffs = differences(was, now)
    if not diffs:  # same values, other code (CODE_REVISION)
        return "the code that computes it changed"
    shown = "; ".join(f"{f} {_short(a)} -> {_short(b)}" for f, a, b in diffs[:limit])
    return "policy changed: " + shown + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _short(value, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


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

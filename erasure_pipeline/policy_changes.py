"""Policy changes: which assets and partitions a policy makes stale, and one backfill of exactly those.

Staleness is Dagster's own: each asset's ``code_version`` folds in the policy fields it reads, and
every materialisation records the code version it ran with. An asset partition is stale when
the code version the policy gives it differs from the one its latest materialisation recorded
(or it was never materialised), and everything below a stale asset is stale too, because its
input will change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.assets.common import POLICY_FIELDS, code_version
from erasure_pipeline.erasure.service import LOCK_TAG
from erasure_pipeline.policy import Policy

CODE_VERSION_TAG = "dagster/code_version"
SKIP = {"erasure_certificates"}  # materialised by erasure runs only


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


def _recorded_code_version(instance: dg.DagsterInstance, asset: str, partition: str | None) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return None
    return records[0].event_log_entry.dagster_event.event_specific_data.materialization.tags.get(CODE_VERSION_TAG)


def _downstream(graph, roots: Iterable[str]) -> set[str]:
    out, todo = set(), list(roots)
    while todo:
        key = todo.pop()
        for child in graph.get(dg.AssetKey(key)).child_keys:
            name = child.to_user_string()
            if name not in out and name not in SKIP:
                out.add(name)
                todo.append(name)
    return out


def stale_under(policy: Policy, defs: dg.Definitions, instance: dg.DagsterInstance) -> StalePlan:
    """Asset partitions whose latest materialisation ran under other policy values than ``policy``'s."""
    graph = defs.resolve_asset_graph()
    partitions = identity.partition_keys(policy.shards)
    changed: dict[str, StaleAsset] = {}
    order = [k.to_user_string() for k in graph.toposorted_asset_keys]
    for name in order:
        if name in SKIP or name not in POLICY_FIELDS:
            continue
        node = graph.get(dg.AssetKey(name))
        parts: list[str | None] = list(partitions) if node.is_partitioned else [None]
        want = code_version(policy, name)
        recorded = {p: _recorded_code_version(instance, name, p) for p in parts}
        stale = [p for p in parts if recorded[p] != want]
        if stale:
            never = all(recorded[p] is None for p in stale)
            changed[name] = StaleAsset(name, stale, "never materialised" if never else "policy fields it reads changed",
                                       POLICY_FIELDS[name])
    below = _downstream(graph, changed) - set(changed)
    for name in order:
        if name in below:
            node = graph.get(dg.AssetKey(name))
            parents = sorted(p.to_user_string() for p in node.parent_keys if p.to_user_string() in changed or p.to_user_string() in below)
            changed[name] = StaleAsset(name, list(partitions) if node.is_partitioned else [None], f"below {', '.join(parents)}")
    return StalePlan([changed[n] for n in order if n in changed])


def field_differences(old: Policy, new: Policy) -> list[tuple[str, object, object]]:
    """Dotted policy fields whose values differ: (field, old, new)."""
    out = []

    def walk(a, b, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            out.append((prefix, a, b))

    walk(old.model_dump(mode="json"), new.model_dump(mode="json"), "")
    return out


def _ranges(keys: list[str]) -> list:
    from dagster._core.definitions.selector import PartitionRangeSelector

    return [PartitionRangeSelector(start=k, end=k) for k in keys]


def launch_backfill(plan: StalePlan, defs: dg.Definitions, instance: dg.DagsterInstance, *, title: str) -> str:
    """One asset backfill of exactly the stale asset partitions, through Dagster's backfill machinery:
    it appears on the UI's backfill page and the daemon runs it (in dependency order)."""
    # Dagster 1.13 has no public Python API for launching an asset backfill; this is what the
    # webserver's launchPartitionBackfill mutation does with `partitionsByAssets`.
    from dagster._core.definitions.selector import PartitionsByAssetSelector, PartitionsSelector
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    selectors = [
        PartitionsByAssetSelector(
            asset_key=dg.AssetKey(a.asset),
            partitions=None if a.partitions == [None] else PartitionsSelector(ranges=_ranges([p for p in a.partitions if p])),
        )
        for a in plan.assets
    ]
    backfill = PartitionBackfill.from_partitions_by_assets(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        backfill_timestamp=time.time(),
        tags={LOCK_TAG: "backfill", "erasure_pipeline/reason": "policy change"},
        dynamic_partitions_store=instance,
        partitions_by_assets=selectors,
        title=title,
        description="Assets whose policy fields changed, and everything below them (erasure-pipeline backfill --stale).",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id

"""From pending requests to batches: which asset partitions each subject actually touched.

Pure logic over ledger rows. A subject lives in one shard; the provenance index says which of
that shard's assets hold rows for it. The rematerialisation set follows from that, and the
unpartitioned merges are added only below a partition that changes for the subject.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from erasure_pipeline import identity

# provenance asset -> shard assets to rematerialise when the subject has rows there
FOLLOWS: dict[str, tuple[str, ...]] = {
    "raw_subjects": ("raw_subjects", "cohort_partials", "training_shards"),
    "raw_events": ("raw_events", "training_shards"),
    "raw_tickets": ("raw_tickets", "vector_index"),
    "training_shards": ("training_shards", "shard_models"),
    "vector_index": ("vector_index",),
}
MERGES: dict[str, tuple[str, ...]] = {
    "cohort_partials": ("anonymised_cohorts", "cohort_model"),
    "shard_models": ("ensemble_model",),
}
ORDER = (
    "raw_subjects", "raw_events", "raw_tickets", "cohort_partials", "training_shards", "shard_models", "vector_index",
    "anonymised_cohorts", "cohort_model", "ensemble_model",
)
# What the certificate says was done to an asset that held the subject's data.
ACTION = {
    "raw_subjects": "RAW_REWRITE", "raw_events": "RAW_REWRITE", "raw_tickets": "RAW_REWRITE",
    "cohort_partials": "COHORT_RECOMPUTE", "anonymised_cohorts": "COHORT_RECOMPUTE", "cohort_model": "COHORT_RECOMPUTE",
    "training_shards": "SISA_RETRAIN", "shard_models": "SISA_RETRAIN", "ensemble_model": "SISA_RETRAIN",
    "vector_index": "VECTOR_DELETE",
}
MAX_REQUESTS_PER_BATCH = 5000


def assets_for(footprint: Iterable[str]) -> list[str]:
    """Assets to rematerialise for a subject whose provenance lists ``footprint``."""
    chosen: set[str] = set()
    for asset in footprint:
        chosen.update(FOLLOWS.get(asset, ()))
    for asset in list(chosen):
        chosen.update(MERGES.get(asset, ()))
    return [a for a in ORDER if a in chosen]


@dataclass
class Batch:
    batch_id: str
    shard: int
    request_ids: list[str]
    assets: list[str]
    footprints: dict[str, dict[str, int]] = field(default_factory=dict)
    """request id -> {asset: rows (or points)} that the subject had when the batch was planned."""


@dataclass
class Plan:
    batches: list[Batch]
    no_data: list[str]
    """Requests whose subject has no data anywhere: certified without a run."""


def batch_id_for(request_ids: Iterable[str], attempt: int) -> str:
    digest = hashlib.sha256(("|".join(sorted(request_ids)) + f"#{attempt}").encode()).hexdigest()
    return f"eb-{digest[:20]}"


def plan(requests: Iterable[Mapping], provenance: Iterable[Mapping], n_shards: int) -> Plan:
    """Group pending requests by shard and resolve each to the assets it touched."""
    by_key: dict[str, dict[str, int]] = defaultdict(dict)
    for row in provenance:
        by_key[row["subject_key"]][row["asset"]] = by_key[row["subject_key"]].get(row["asset"], 0) + int(row["rows"])
    grouped: dict[int, list[Mapping]] = defaultdict(list)
    no_data = []
    for req in requests:
        if not by_key.get(req["subject_key"]):
            no_data.append(req["request_id"])
        else:
            grouped[identity.shard_of(req["subject_key"], n_shards)].append(req)
    batches = []
    for shard in sorted(grouped):
        reqs = grouped[shard]
        for start in range(0, len(reqs), MAX_REQUESTS_PER_BATCH):
            chunk = reqs[start : start + MAX_REQUESTS_PER_BATCH]
            ids = [r["request_id"] for r in chunk]
            footprints = {r["request_id"]: dict(by_key[r["subject_key"]]) for r in chunk}
            assets = assets_for({a for fp in footprints.values() for a in fp})
            attempt = max(int(r.get("attempts") or 0) for r in chunk)
            batches.append(Batch(batch_id_for(ids, attempt), shard, ids, assets, footprints))
    return Plan(batches, no_data)

"""What every asset family shares: partitions, policy-derived code versions, metadata helpers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.erasure.service import BATCH_TAG
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage.lake import Lake, dumps_model, loads_model, model_name  # noqa: F401  (re-exported for the assets)

CODE_REVISION = "1"

RAW_FIELDS = ("shards",)
COHORT_FIELDS = (*RAW_FIELDS, "cohorts")
PUBLISH_FIELDS = (*COHORT_FIELDS, "k_min")
COHORT_MODEL_FIELDS = (*PUBLISH_FIELDS, "seed")
TRAINING_FIELDS = (
    *RAW_FIELDS, "consent", "model.label", "model.positive_class", "model.numeric_features", "model.categorical_features",
    "model.event_features", "model.holdout_fraction",
)
SHARD_MODEL_FIELDS = (*TRAINING_FIELDS, "model.estimator", "model.params", "seed")
ENSEMBLE_FIELDS = (*SHARD_MODEL_FIELDS, "model.aggregation", "model.min_holdout_auc")
VECTOR_FIELDS = (*RAW_FIELDS, "vectors")

# The policy fields each asset reads (its own and, through its inputs, its parents').
POLICY_FIELDS: dict[str, tuple[str, ...]] = {
    "raw_subjects": RAW_FIELDS,
    "raw_events": RAW_FIELDS,
    "raw_tickets": RAW_FIELDS,
    "cohort_partials": COHORT_FIELDS,
    "anonymised_cohorts": PUBLISH_FIELDS,
    "cohort_model": COHORT_MODEL_FIELDS,
    "training_shards": TRAINING_FIELDS,
    "shard_models": SHARD_MODEL_FIELDS,
    "ensemble_model": ENSEMBLE_FIELDS,
    "vector_index": VECTOR_FIELDS,
}

SHARD_ASSETS = ("raw_subjects", "raw_events", "raw_tickets", "cohort_partials", "training_shards", "shard_models", "vector_index")
MERGE_ASSETS = ("anonymised_cohorts", "cohort_model", "ensemble_model")


def shard_partitions(policy: Policy) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(identity.partition_keys(policy.shards))


def code_version(policy: Policy, asset: str) -> str:
    return f"{CODE_REVISION}.{policy.fields_hash(*POLICY_FIELDS[asset])}"


def md_table(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_(none)_")
    cols = list(rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def tombstone_check(
    asset: str, keys_present: Iterable[str], tombstoned: set[str], check: str = "no_tombstoned_subjects"
) -> dg.AssetCheckResult:
    found = len(tombstoned.intersection(keys_present))
    return dg.AssetCheckResult(
        asset_key=asset, check_name=check, passed=found == 0,
        metadata={"tombstoned_subjects_found": found, "tombstones_checked": len(tombstoned)},
    )


def tombstone_spec(asset: str, check: str = "no_tombstoned_subjects") -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        check, asset=asset, blocking=True,
        description="No tombstoned subject_key is in what this materialisation wrote (read back from storage).",
    )


def purge_superseded(context: dg.AssetExecutionContext, store: Lake, *names: str) -> int:
    """In an erasure run, delete every noncurrent version of the objects this asset just rewrote.

    A versioned bucket keeps each overwritten object as a noncurrent version, which still holds
    the erased subject's rows (or a model trained on them); ingest runs leave versions alone.
    """
    if BATCH_TAG not in context.run.tags:
        return 0
    return sum(len(store.purge_noncurrent(name)) for name in names)

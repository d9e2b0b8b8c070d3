"""Cohorts: per-shard invertible partials, the k-anonymous published table, a cohort-only model."""

import hashlib
import hmac

import dagster as dg
import numpy as np
import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.anonymise import cohorts as cm
from erasure_pipeline.assets.common import code_version, dumps_model, md_table, model_name, purge_superseded, shard_partitions
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, PepperResource
from erasure_pipeline.storage import lake as lk

PUBLISHED = "all"


def noise_key(pepper: bytes) -> bytes:
    """Cohort noise is keyed by a secret derived from the pepper: a reader cannot replay it."""
    return hmac.new(pepper, b"erasure_pipeline/cohort-noise", hashlib.sha256).digest()


def merged_partials(store, policy: Policy) -> pd.DataFrame:
    parts = [lk.require_table(store, "cohort_partials", p) for p in identity.partition_keys(policy.shards)]
    return cm.merge_partials(parts)


def build_cohort_assets(policy: Policy) -> list:
    c = policy.cohorts

    @dg.asset(
        group_name="cohorts",
        partitions_def=shard_partitions(policy),
        deps=["raw_subjects"],
        code_version=code_version(policy, "cohort_partials"),
        kinds={"parquet"},
        description="Per-cohort counts, clipped sums and a membership digest for one shard: invertible, merged in O(S).",
    )
    def cohort_partials(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        store = lake.get()
        subjects = lk.require_table(store, "raw_subjects", context.partition_key)
        partial = cm.compute_partial(subjects, c.quasi_identifiers, c.generalise, c.measures, c.label, c.measure_clip)
        digest = lk.write_table(store, "cohort_partials", context.partition_key, partial)
        purged = purge_superseded(context, store, lk.table_name("cohort_partials", context.partition_key))
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "cells": len(partial), "subjects": int(partial[cm.COUNT].sum()) if len(partial) else 0, "content_hash": digest,
                "noncurrent_versions_purged": purged,
            },
        )

    @dg.asset(
        group_name="cohorts",
        deps=[cohort_partials],
        code_version=code_version(policy, "anonymised_cohorts"),
        kinds={"parquet"},
        description=(
            "The published cohort table: cells with at least k_min subjects, every number with Laplace noise "
            "keyed to the cell's membership, so tables published before and after an erasure cannot be differenced."
        ),
    )
    def anonymised_cohorts(context: dg.AssetExecutionContext, lake: LakeResource, pepper: PepperResource) -> dg.MaterializeResult:
        store = lake.get()
        merged = merged_partials(store, policy)
        published = cm.publish(
            merged, k_min=policy.k_min, measures=c.measures, clip=c.measure_clip, epsilon=c.noise_epsilon,
            noise_key=noise_key(pepper.get()),
        )
        digest = lk.write_table(store, "anonymised_cohorts", PUBLISHED, published)
        purged = purge_superseded(context, store, lk.table_name("anonymised_cohorts", PUBLISHED))
        suppressed = int((merged[cm.COUNT] < policy.k_min).sum()) if len(merged) else 0
        preview = published.sort_values(cm.COUNT, ascending=False).head(10)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "published_cells": len(published),
                "suppressed_cells": suppressed,
                "k_min": policy.k_min,
                "content_hash": digest,
                "noncurrent_versions_purged": purged,
                "largest_cells": md_table(preview.drop(columns=[cm.CELL]).to_dict("records")),
            },
        )

    @dg.asset_check(asset=anonymised_cohorts, blocking=True, description="Every published cell holds at least k_min subjects (true counts, from the partials).")
    def k_anonymous(lake: LakeResource) -> dg.AssetCheckResult:
        store = lake.get()
        published = lk.require_table(store, "anonymised_cohorts", PUBLISHED)
        bad = cm.k_anonymity_violations(published, merged_partials(store, policy), policy.k_min)
        return dg.AssetCheckResult(passed=not bad, metadata={"cells_below_k": len(bad), "k_min": policy.k_min, "published_cells": len(published)})

    @dg.asset(
        group_name="cohorts",
        deps=[anonymised_cohorts],
        code_version=code_version(policy, "cohort_model"),
        kinds={"scikitlearn"},
        description="A label-rate model trained on the published cohort table only: no individual row ever reaches it.",
    )
    def cohort_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from sklearn.feature_extraction import DictVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        store = lake.get()
        published = lk.require_table(store, "anonymised_cohorts", PUBLISHED)
        qi = list(c.quasi_identifiers)
        records, labels, weights = [], [], []
        for row in published.to_dict("records"):
            feats = {col: str(row[col]) for col in qi}
            positives = row["label_rate"] * row[cm.COUNT]
            for label, weight in ((1, positives), (0, row[cm.COUNT] - positives)):
                if weight > 0:
                    records.append(feats)
                    labels.append(label)
                    weights.append(weight)
        metrics: dict = {"cells": len(published)}
        model = None
        if len(set(labels)) == 2:
            model = make_pipeline(DictVectorizer(), LogisticRegression(max_iter=1000, random_state=identity.derive_seed(policy.seed, "cohort_model")))
            model.fit(records, labels, logisticregression__sample_weight=weights)
            proba = model.predict_proba(records)[:, 1]
            w = np.asarray(weights)
            y = np.asarray(labels)
            eps = 1e-12
            metrics["weighted_log_loss"] = float(-(w * (y * np.log(proba + eps) + (1 - y) * np.log(1 - proba + eps))).sum() / w.sum())
        saved = {"model": model, "quasi_identifiers": qi}
        store.write_bytes(model_name("cohort_model"), dumps_model(saved))
        purged = purge_superseded(context, store, model_name("cohort_model"))
        digest = lk.model_fingerprint(saved)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                **metrics, "trained": model is not None, "content_hash": digest, "metrics": md_table([metrics]),
                "noncurrent_versions_purged": purged,
            },
        )

    return [cohort_partials, anonymised_cohorts, k_anonymous, cohort_model]

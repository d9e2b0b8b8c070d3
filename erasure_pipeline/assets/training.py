"""Training: per-shard training sets, SISA shard models, the ensemble and its holdout metrics.

One implementation of sharding, seeding and aggregation: ``erasure_pipeline.ml.sisa``.
A ``shard_models`` partition is one SISA constituent; ``ensemble_model`` is their aggregate.
"""

import dagster as dg
import numpy as np
import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.assets.common import (
    code_version,
    dumps_model,
    loads_model,
    md_table,
    model_name,
    purge_superseded,
    shard_partitions,
    tombstone_check,
    tombstone_spec,
)
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.shard_training import CLASSES, matches_retrain, train_shard_model
from erasure_pipeline.ml.sisa import SISAClassifier, shard_seed
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LedgerResource
from erasure_pipeline.storage import lake as lk


def build_training_assets(policy: Policy) -> list:
    partitions = shard_partitions(policy)
    names = ft.feature_names(policy)

    @dg.asset(
        group_name="training",
        partitions_def=partitions,
        deps=["raw_subjects", "raw_events"],
        code_version=code_version(policy, "training_shards"),
        check_specs=[tombstone_spec("training_shards")],
        kinds={"parquet"},
        description="Feature rows of one shard's consenting subjects, sorted by subject_key; a key-derived holdout flag.",
    )
    def training_shards(context: dg.AssetExecutionContext, lake: LakeResource, ledger: LedgerResource) -> dg.MaterializeResult:
        store = lake.get()
        p = context.partition_key
        subjects = lk.require_table(store, "raw_subjects", p)
        events = lk.read_table(store, "raw_events", p)
        rows = ft.training_rows(subjects, events if events is not None else pd.DataFrame(), policy)
        digest = lk.write_table(store, "training_shards", p, rows)
        purged = purge_superseded(context, store, lk.table_name("training_shards", p))
        written = lk.require_table(store, "training_shards", p)
        book = ledger.get()
        tombstoned = book.tombstoned_keys(identity.shard_from_partition(p))
        book.record_provenance("training_shards", p, written[ft.KEY].value_counts().to_dict(), digest, context.run_id)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "rows": len(written),
                "train_rows": int((~written[ft.HOLDOUT]).sum()),
                "holdout_rows": int(written[ft.HOLDOUT].sum()),
                "subjects_without_consent": int(len(subjects) - len(written)),
                "positive_rate": float(written[ft.LABEL].mean()) if len(written) else 0.0,
                "features": len(names),
                "content_hash": digest,
                "noncurrent_versions_purged": purged,
            },
            check_results=[tombstone_check("training_shards", written[ft.KEY], tombstoned)],
        )

    @dg.asset(
        group_name="models",
        partitions_def=partitions,
        deps=[training_shards],
        code_version=code_version(policy, "shard_models"),
        kinds={"scikitlearn"},
        description="One SISA constituent: the policy's estimator trained on one shard's rows with a seed from (policy seed, shard).",
    )
    def shard_models(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        store = lake.get()
        p = context.partition_key
        shard = identity.shard_from_partition(p)
        rows = lk.require_table(store, "training_shards", p)
        model, n_train = train_shard_model(policy, rows, shard)
        saved = {"model": model, "features": names, "classes": CLASSES.tolist(), "train_rows": n_train}
        store.write_bytes(model_name("shard_models", p), dumps_model(saved))
        purged = purge_superseded(context, store, model_name("shard_models", p))
        digest = lk.model_fingerprint(saved)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "train_rows": n_train,
                "estimator": policy.model.estimator,
                "constituent": type(model).__name__ if model is not None else "none (empty shard)",
                "seed": shard_seed(policy.seed, shard),
                "content_hash": digest,
                "noncurrent_versions_purged": purged,
            },
        )

    @dg.asset_check(
        asset=shard_models,
        partitions_def=partitions,
        blocking=True,
        description="The stored shard model equals, bit for bit on a probe set, an independent retrain from the shard's current rows.",
    )
    def matches_independent_retrain(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        store = lake.get()
        p = context.partition_key
        shard = identity.shard_from_partition(p)
        rows = lk.require_table(store, "training_shards", p)
        stored = loads_model(store.read_bytes(model_name("shard_models", p)))["model"]
        equal, diff, probes = matches_retrain(policy, stored, rows, shard)
        return dg.AssetCheckResult(passed=equal, metadata={"probe_rows": probes, "max_abs_difference": diff})

    @dg.asset(
        group_name="models",
        deps=[shard_models, training_shards],
        code_version=code_version(policy, "ensemble_model"),
        check_specs=[dg.AssetCheckSpec("meets_quality_floor", asset="ensemble_model", description="Holdout ROC-AUC at or above policy model.min_holdout_auc.")],
        kinds={"scikitlearn"},
        description="The SISA aggregate of every shard model, evaluated on the key-derived holdout of every shard.",
    )
    def ensemble_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

        store = lake.get()
        constituents, holdouts, per_shard = [], [], []
        for p in identity.partition_keys(policy.shards):
            saved = loads_model(store.read_bytes(model_name("shard_models", p)) or b"")
            constituents.append(saved["model"])
            rows = lk.require_table(store, "training_shards", p)
            holdouts.append(rows[rows[ft.HOLDOUT].astype(bool)])
            per_shard.append({"shard": p, "train_rows": saved["train_rows"], "model": type(saved["model"]).__name__})
        ensemble = SISAClassifier.from_constituents(
            constituents, CLASSES, len(names), n_shards=policy.shards, aggregation=policy.model.aggregation,
            random_state=policy.seed, hash_groups=False,
        )
        holdout = pd.concat(holdouts, ignore_index=True)
        metrics = {"holdout_rows": len(holdout)}
        if len(holdout) and holdout[ft.LABEL].nunique() == 2:
            proba = ensemble.predict_proba(holdout[names].to_numpy(dtype="float64"))[:, 1]
            y = holdout[ft.LABEL].to_numpy()
            metrics.update(
                holdout_auc=float(roc_auc_score(y, proba)),
                holdout_accuracy=float(accuracy_score(y, proba >= 0.5)),
                holdout_log_loss=float(log_loss(y, np.clip(proba, 1e-12, 1 - 1e-12), labels=[0, 1])),
            )
        saved = {"model": ensemble, "features": names, "classes": CLASSES.tolist(), "metrics": metrics}
        store.write_bytes(model_name("ensemble_model"), dumps_model(saved))
        purged = purge_superseded(context, store, model_name("ensemble_model"))
        digest = lk.model_fingerprint(saved)
        auc = metrics.get("holdout_auc")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                **{k: v for k, v in metrics.items()},
                "shards_with_model": sum(m is not None for m in constituents),
                "aggregation": policy.model.aggregation,
                "metrics": md_table([metrics]),
                "shards": md_table(per_shard),
                "content_hash": digest,
                "noncurrent_versions_purged": purged,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="meets_quality_floor", passed=auc is not None and auc >= policy.model.min_holdout_auc,
                    metadata={"holdout_auc": auc if auc is not None else -1.0, "floor": policy.model.min_holdout_auc},
                )
            ],
        )

    return [training_shards, shard_models, matches_independent_retrain, ensemble_model]

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
from erasure_pipeline.ml.labels import class_counts, require_two_classes
from erasure_pipeline.ml.shard_training import CLASSES, matches_retrain, train_shard_model
from erasure_pipeline.erasure.service import BATCH_TAG
from erasure_pipeline.ml.sisa import SISAClassifier, shard_seed
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LedgerResource
from erasure_pipeline.storage import lake as lk


CANDIDATE = "candidate"


def class_table(counts: dict[int, int]) -> dg.TableMetadataValue:
    total = sum(counts.values()) or 1
    return dg.MetadataValue.table(
        [dg.TableRecord({"class": c, "rows": n, "share": round(n / total, 4)}) for c, n in counts.items()],
        schema=dg.TableSchema(columns=[dg.TableColumn("class", "int"), dg.TableColumn("rows", "int"), dg.TableColumn("share", "float")]),
    )


def publish_ensemble(store, blob: bytes, passed: bool) -> str:
    """Write the ensemble as the candidate; make it the published one only if it met the quality floor.

    Below the floor the previously published model is withdrawn rather than kept: it was built from
    shard models that no longer exist (after an erasure, one of them held the erased subject).
    """
    store.write_bytes(model_name("ensemble_model", CANDIDATE), blob)
    if passed:
        store.write_bytes(model_name("ensemble_model"), blob)
        return "yes"
    store.delete(model_name("ensemble_model"))
    return "no: below the quality floor (candidate kept at ensemble_model/candidate.pkl)"


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
        training = ft.training_rows(subjects, events if events is not None else pd.DataFrame(), policy, where=f"raw_subjects[{p}]")
        digest = lk.write_table(store, "training_shards", p, training.rows)
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
                "class_balance": class_table(class_counts(written[ft.LABEL].to_numpy())),
                "label_encoding": training.label_encoding,
                "features": len(names),
                "constant_features": ft.constant_features(written, names),
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
        check_specs=[dg.AssetCheckSpec(
            "meets_quality_floor", asset="ensemble_model", blocking=True,
            description=("Holdout ROC-AUC at or above policy model.min_holdout_auc. Below it the model is kept only as a "
                         "candidate, the published model is withdrawn (it was built from shard models that changed) and "
                         "the run fails; in an erasure run the check fails as a warning so the erasure still completes."),
        )],
        kinds={"scikitlearn"},
        description="The SISA aggregate of every shard model, evaluated on the key-derived holdout of every shard.",
    )
    def ensemble_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

        store = lake.get()
        constituents, holdouts, per_shard = [], [], []
        trained = {0: 0, 1: 0}
        for p in identity.partition_keys(policy.shards):
            saved = loads_model(store.read_bytes(model_name("shard_models", p)) or b"")
            constituents.append(saved["model"])
            rows = lk.require_table(store, "training_shards", p)
            is_holdout = rows[ft.HOLDOUT].astype(bool)
            holdouts.append(rows[is_holdout])
            for c, n in class_counts(rows.loc[~is_holdout, ft.LABEL].to_numpy()).items():
                trained[c] += n
            per_shard.append({"shard": p, "train_rows": saved["train_rows"], "model": type(saved["model"]).__name__})
        require_two_classes(trained, column=policy.model.label, where="training_shards (every shard)")
        ensemble = SISAClassifier.from_constituents(
            constituents, CLASSES, len(names), n_shards=policy.shards, aggregation=policy.model.aggregation,
            random_state=policy.seed, hash_groups=False,
        )
        holdout = pd.concat(holdouts, ignore_index=True)
        holdout_classes = class_counts(holdout[ft.LABEL].to_numpy())
        metrics = {"holdout_rows": len(holdout), "holdout_class_0": holdout_classes[0], "holdout_class_1": holdout_classes[1]}
        if len(holdout) and holdout[ft.LABEL].nunique() == 2:
            proba = ensemble.predict_proba(holdout[names].to_numpy(dtype="float64"))[:, 1]
            y = holdout[ft.LABEL].to_numpy()
            metrics.update(
                holdout_auc=float(roc_auc_score(y, proba)),
                holdout_accuracy=float(accuracy_score(y, proba >= 0.5)),
                holdout_log_loss=float(log_loss(y, np.clip(proba, 1e-12, 1 - 1e-12), labels=[0, 1])),
            )
        saved = {"model": ensemble, "features": names, "classes": CLASSES.tolist(), "metrics": metrics}
        auc = metrics.get("holdout_auc")
        passed = auc is not None and auc >= policy.model.min_holdout_auc
        erasure_run = BATCH_TAG in context.run.tags
        publication = publish_ensemble(store, dumps_model(saved), passed)
        purged = purge_superseded(context, store, model_name("ensemble_model"), lk.model_name("ensemble_model", CANDIDATE))
        digest = lk.model_fingerprint(saved)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                **{k: v for k, v in metrics.items()},
                "published": publication,
                "shards_with_model": sum(m is not None for m in constituents),
                "aggregation": policy.model.aggregation,
                "metrics": md_table([metrics]),
                "shards": md_table(per_shard),
                "content_hash": digest,
                "noncurrent_versions_purged": purged,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="meets_quality_floor", passed=passed,
                    # In an erasure run a failure must not stop the certificate: the model that held the
                    # subject is withdrawn either way, and the failure is reported as a warning.
                    severity=dg.AssetCheckSeverity.WARN if erasure_run else dg.AssetCheckSeverity.ERROR,
                    metadata={"holdout_auc": auc if auc is not None else -1.0, "floor": policy.model.min_holdout_auc,
                              "holdout_class_0": holdout_classes[0], "holdout_class_1": holdout_classes[1],
                              "published": publication},
                )
            ],
        )

    return [training_shards, shard_models, matches_independent_retrain, ensemble_model]

"""Training: per-shard training sets, SISA shard models, the ensemble and its holdout metrics.

One implementation of sharding, seeding and aggregation: ``erasure_pipeline.ml.sisa``. A
``shard_models`` partition is one SISA constituent; ``ensemble_model`` is their aggregate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.labels import class_counts, require_two_classes
from erasure_pipeline.ml.shard_training import CLASSES, matches_retrain, train_shard_model
from erasure_pipeline.ml.sisa import SISAClassifier, shard_seed
from erasure_pipeline.nodes import (
    CheckOutcome,
    Markdown,
    NodeResult,
    NodeRun,
    Table,
    finish,
    input_key,
    md_table,
    tombstone_check,
)
from erasure_pipeline.storage import lake as lk

CANDIDATE = "candidate"


def class_table(counts: dict[int, int]) -> Table:
    total = sum(counts.values()) or 1
    return Table([{"class": c, "rows": n, "share": round(n / total, 4)} for c, n in counts.items()],
                 [("class", "int"), ("rows", "int"), ("share", "float")])


def _purge(run: NodeRun, *names: str) -> int:
    return sum(len(run.env.lake.purge_noncurrent(n)) for n in names) if run.purges_versions else 0


def compute_training_set(run: NodeRun) -> NodeResult:
    env, p = run.env, run.partition
    store, policy = env.lake, env.policy
    # A subject tombstoned after its raw partition was last written (an erasure filed mid-cycle) is
    # still there until its erasure run: a derived partition leaves them out itself.
    tombstoned = env.ledger.tombstoned_keys(run.shard)
    subjects = lk.require_table(store, "raw_subjects", p)
    subjects = subjects[~subjects["subject_key"].isin(tombstoned)]
    events = lk.read_table(store, "raw_events", p)
    events = events[~events["subject_key"].isin(tombstoned)] if events is not None else pd.DataFrame()
    training = ft.training_rows(subjects, events, policy, where=f"raw_subjects[{p}]")
    digest = lk.write_table(store, run.node.name, p, training.rows)
    written = lk.require_table(store, run.node.name, p)
    finish(run, digest, provenance=written[ft.KEY].value_counts().to_dict())
    names = ft.feature_names(policy)
    return NodeResult(digest, None, {
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
        "noncurrent_versions_purged": _purge(run, lk.table_name(run.node.name, p)),
    }, (tombstone_check(written[ft.KEY], tombstoned),))


def compute_shard_model(run: NodeRun) -> NodeResult:
    policy, store, p = run.env.policy, run.env.lake, run.partition
    rows = lk.require_table(store, "training_shards", p)
    model, n_train = train_shard_model(policy, rows, run.shard)
    saved = {"model": model, "features": ft.feature_names(policy), "classes": CLASSES.tolist(), "train_rows": n_train}
    name = lk.model_name(run.node.name, p)
    store.write_bytes(name, lk.dumps_model(saved))
    digest = lk.model_fingerprint(saved)
    finish(run, digest)
    # The proof the erasure rests on: what is stored equals an independent retrain from the rows.
    stored = lk.loads_model(store.read_bytes(name))["model"]
    equal, diff, probes = matches_retrain(policy, stored, rows, run.shard)
    return NodeResult(digest, None, {
        "train_rows": n_train,
        "estimator": policy.model.estimator,
        "constituent": type(model).__name__ if model is not None else "none (empty shard)",
        "seed": shard_seed(policy.seed, run.shard),
        "content_hash": digest,
        "noncurrent_versions_purged": _purge(run, name),
    }, (CheckOutcome("matches_independent_retrain", equal, {"probe_rows": probes, "max_abs_difference": diff}),))


def publish_ensemble(store, blob: bytes, passed: bool) -> str:
    """Write the ensemble as the candidate; make it the published one only if it met the quality floor.

    Below the floor the previously published model is withdrawn rather than kept: it was built from
    shard models that no longer exist (after an erasure, one of them held the erased subject).
    """
    store.write_bytes(lk.model_name("ensemble_model", CANDIDATE), blob)
    if passed:
        store.write_bytes(lk.model_name("ensemble_model"), blob)
        return "yes"
    store.delete(lk.model_name("ensemble_model"))
    return "no: below the quality floor (candidate kept at ensemble_model/candidate.pkl)"


def compute_ensemble(run: NodeRun) -> NodeResult:
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    policy, store = run.env.policy, run.env.lake
    names = ft.feature_names(policy)
    constituents, holdouts, per_shard, inputs = [], [], [], {}
    trained = {0: 0, 1: 0}
    for p in identity.partition_keys(policy.shards):
        blob = store.read_bytes(lk.model_name("shard_models", p))
        if blob is None:
            raise FileNotFoundError(f"shard_models[{p}] has not been materialised in {store.describe()}")
        data = store.read_bytes(lk.table_name("training_shards", p))
        if data is None:
            raise FileNotFoundError(f"training_shards[{p}] has not been materialised in {store.describe()}")
        inputs[input_key("shard_models", p)] = lk.content_hash(blob)
        inputs[input_key("training_shards", p)] = lk.content_hash(data)
        saved = lk.loads_model(blob)
        constituents.append(saved["model"])
        rows = lk.table_from_bytes(data)
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
    saved = {"model": ensemble, "features": names, "classes": CLASSES.tolist(), "metrics": metrics, "inputs": inputs}
    auc = metrics.get("holdout_auc")
    passed = auc is not None and auc >= policy.model.min_holdout_auc
    publication = publish_ensemble(store, lk.dumps_model(saved), passed)
    digest = lk.model_fingerprint(saved)
    finish(run, digest)
    return NodeResult(digest, None, {
        **metrics,
        "published": publication,
        "shards_with_model": sum(m is not None for m in constituents),
        "aggregation": policy.model.aggregation,
        "metrics": Markdown(md_table([metrics])),
        "shards": Markdown(md_table(per_shard)),
        "content_hash": digest,
        "noncurrent_versions_purged": _purge(run, lk.model_name("ensemble_model"), lk.model_name("ensemble_model", CANDIDATE)),
    }, (CheckOutcome(
        "meets_quality_floor", passed,
        {"holdout_auc": auc if auc is not None else -1.0, "floor": policy.model.min_holdout_auc,
         "holdout_class_0": holdout_classes[0], "holdout_class_1": holdout_classes[1], "published": publication},
        # In an erasure run a failure must not stop the certificate: the model that held the
        # subject is withdrawn either way, and the failure is reported as a warning.
        severity="WARN" if run.mode == "erasure" else "ERROR",
    ),))

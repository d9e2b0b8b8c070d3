"""Training: per-shard training sets, SISA shard models, the ensemble and its holdout metrics, per declared model.

One implementation of sharding, seeding and aggregation: ``erasure_pipeline.ml.sisa``. A
``shard_models`` partition is one SISA constituent; ``ensemble_model`` is their aggregate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.labels import class_counts, require_learnable
from erasure_pipeline.ml.shard_training import matches_retrain, n_classes, train_shard_model
from erasure_pipeline.ml.sisa import SISAClassifier, SISARegressor, shard_seed
from erasure_pipeline.nodes import (
    CheckOutcome,
    Markdown,
    NodeResult,
    NodeRun,
    Table,
    finish,
    input_key,
    md_table,
    read_partition,
    tombstone_check,
)
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage import buckets as bk
from erasure_pipeline.storage import lake as lk

CANDIDATE = "candidate"


def class_table(counts: dict[int, int], classes: list | None = None) -> Table:
    total = sum(counts.values()) or 1
    return Table([{"class": c, "value": str(classes[c]) if classes else str(c), "rows": n, "share": round(n / total, 4)}
                  for c, n in counts.items()],
                 [("class", "int"), ("value", "string"), ("rows", "int"), ("share", "float")])


def declared_classes(policy: Policy, model: str) -> list | None:
    """What class index i means, when the declaration says (multiclass); None for binary (0/1) and regression."""
    spec = policy.models[model]
    return [str(c) for c in spec.classes] if spec.task == "multiclass" else None


def _purge(run: NodeRun, *names: str) -> int:
    return sum(len(run.env.lake.purge_noncurrent(n)) for n in names) if run.purges_versions else 0


def _bucket_hashes(env, parent: str, partition: str) -> dict[str, str] | None:
    """The parent partition's bucket hashes; None when it is laid out with another bucket count than
    the policy gives (lake.buckets changed and the raw partition not yet rewritten)."""
    manifest = bk.read_manifest(env.lake, parent, partition)
    if manifest is not None and manifest.of not in (0, env.policy.lake.buckets):
        return None
    return {} if manifest is None else {bk.bucket_name(b): i.hash for b, i in manifest.buckets.items()}


def compute_training_set(run: NodeRun) -> NodeResult:
    """A shard's training rows. Each subject's features come from their own rows only, so when the raw
    buckets it was built from are known (recorded in the table), only the subjects of the buckets that
    changed since are computed again; the rest are kept as they are: the same rows a full build makes."""
    env, p, node = run.env, run.partition, run.node
    store, policy, model = env.lake, env.policy, node.model
    # A subject tombstoned after its raw partition was last written (an erasure filed mid-cycle) is
    # still there until its erasure run: a derived partition leaves them out itself.
    tombstoned = env.ledger.tombstoned_keys(run.shard)
    base = f"raw_{policy.features.dataset}"
    inputs = {parent: _bucket_hashes(env, parent, p) for parent in node.parents}
    previous = lk.read_table(store, node.name, p)
    recorded = lk.table_inputs(store, node.name, p) if previous is not None else None
    record = env.ledger.node_records(p, [node.name]).get((node.name, p))
    changed: set[int] | None = None
    # Diff bucket by bucket only when this build and the recorded one both read every parent in the
    # policy's layout (a parent awaiting relayout after a lake.buckets change records None).
    if recorded is not None and record is not None and record["code_version"] == run.code_version and set(recorded) == set(inputs) \
            and all(h is not None for h in (*inputs.values(), *recorded.values())):
        changed = {int(b[2:]) for parent in inputs for b in set(inputs[parent]) | set(recorded[parent])
                   if inputs[parent].get(b) != recorded[parent].get(b)}
        changed |= set(bk.buckets_of(previous.loc[previous[ft.KEY].isin(tombstoned), ft.KEY], policy.lake.buckets).tolist())
    frames = {}
    for parent in node.parents:
        rows = read_partition(env, parent, p, buckets=changed, cache=True)
        if rows is None and parent == base:
            raise lk.not_materialised(store, parent, p)
        rows = rows if rows is not None else pd.DataFrame({ft.KEY: pd.Series(dtype=str)})
        frames[parent.removeprefix("raw_")] = rows[~rows[ft.KEY].isin(tombstoned)] if len(rows) else rows
    training = ft.training_rows(frames, policy, model, where=f"{base}[{p}]")
    rows = training.rows
    if changed is not None:
        kept = previous[~np.isin(bk.buckets_of(previous[ft.KEY], policy.lake.buckets), list(changed))]
        rows = pd.concat([kept, rows], ignore_index=True).sort_values(ft.KEY, kind="stable").reset_index(drop=True) \
            if len(rows) else kept.reset_index(drop=True)
        rows = rows.astype(training.rows.dtypes.to_dict())
    digest = lk.write_table(store, node.name, p, rows, inputs=inputs)
    written = lk.require_table(store, node.name, p)
    finish(run, digest, provenance=written[ft.KEY].value_counts().to_dict())
    names = ft.feature_names(policy)
    k = n_classes(policy, model)
    target = written[ft.LABEL].to_numpy()
    shape = ({"class_balance": class_table(class_counts(target, k), declared_classes(policy, model))} if k is not None else
             {"target_mean": float(target.mean()) if len(target) else 0.0, "target_std": float(target.std()) if len(target) else 0.0})
    return NodeResult(digest, None, {
        "model": model,
        "rows": len(written),
        "train_rows": int((~written[ft.HOLDOUT]).sum()),
        "holdout_rows": int(written[ft.HOLDOUT].sum()),
        "subjects_without_consent": int(frames[policy.features.dataset][ft.KEY].nunique() - written[ft.KEY].nunique()),
        **shape,
        "label_encoding": training.label_encoding,
        "features": len(names),
        "constant_features": ft.constant_features(written, names),
        "subjects_recomputed": "all" if changed is None else f"{len(training.rows)} rows in {len(changed)} changed buckets",
        "content_hash": digest,
        "noncurrent_versions_purged": _purge(run, lk.table_name(node.name, p)),
    }, (tombstone_check(written[ft.KEY], tombstoned),))


def compute_shard_model(run: NodeRun) -> NodeResult:
    policy, store, p, node = run.env.policy, run.env.lake, run.partition, run.node
    rows = lk.require_table(store, node.parents[0], p)
    fitted, n_train = train_shard_model(policy, node.model, rows, run.shard)
    saved = {"model": fitted, "features": ft.feature_names(policy), "classes": declared_classes(policy, node.model),
             "task": policy.models[node.model].task, "train_rows": n_train}
    name = lk.model_name(node.name, p)
    store.write_bytes(name, lk.dumps_model(saved))
    digest = lk.model_fingerprint(saved)
    finish(run, digest)
    # The proof the erasure rests on: what is stored equals an independent retrain from the rows.
    stored = lk.loads_model(store.read_bytes(name))["model"]
    equal, diff, probes = matches_retrain(policy, node.model, stored, rows, run.shard)
    return NodeResult(digest, None, {
        "model": node.model,
        "train_rows": n_train,
        "estimator": policy.models[node.model].estimator,
        "constituent": type(fitted).__name__ if fitted is not None else "none (empty shard)",
        "seed": shard_seed(policy.seed, run.shard),
        "content_hash": digest,
        "noncurrent_versions_purged": _purge(run, name),
    }, (CheckOutcome("matches_independent_retrain", equal, {"probe_rows": probes, "max_abs_difference": diff}),))


def publish_ensemble(store, name: str, blob: bytes, passed: bool) -> str:
    """Write the ensemble as the candidate; make it the published one only if it met the quality floor.

    Below the floor the previously published model is withdrawn rather than kept: it was built from
    shard models that no longer exist (after an erasure, one of them held the erased subject).
    """
    store.write_bytes(lk.model_name(name, CANDIDATE), blob)
    if passed:
        store.write_bytes(lk.model_name(name), blob)
        return "yes"
    store.delete(lk.model_name(name))
    return f"no: below the quality floor (candidate kept at {name}/{CANDIDATE}.pkl)"


def holdout_metrics(task: str, ensemble, X: np.ndarray, y: np.ndarray, k: int | None) -> dict[str, float]:
    """Every holdout metric of the task (the floor applies to one of them, ``policy.METRICS``)."""
    from sklearn import metrics as skm

    if len(y) == 0:
        return {}
    if task == "regression":
        pred = ensemble.predict(X)
        out = {"holdout_mae": float(skm.mean_absolute_error(y, pred)), "holdout_rmse": float(np.sqrt(skm.mean_squared_error(y, pred)))}
        if len(np.unique(y)) > 1:
            out["holdout_r2"] = float(skm.r2_score(y, pred))
        return out
    proba = ensemble.predict_proba(X)
    pred = proba.argmax(axis=1)
    out = {"holdout_accuracy": float(skm.accuracy_score(y, pred)),
           "holdout_log_loss": float(skm.log_loss(y, proba, labels=list(range(k))))}
    if task == "binary" and len(np.unique(y)) == 2:
        out["holdout_roc_auc"] = float(skm.roc_auc_score(y, proba[:, 1]))
    if task == "multiclass":
        out["holdout_macro_f1"] = float(skm.f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0))
    return out


def compute_ensemble(run: NodeRun) -> NodeResult:
    policy, store, node = run.env.policy, run.env.lake, run.node
    model = node.model
    spec = policy.models[model]
    models_node, rows_node = node.parents
    names = ft.feature_names(policy)
    k = n_classes(policy, model)
    constituents, holdouts, trained, per_shard, inputs = [], [], [], [], {}
    for p in identity.partition_keys(policy.shards):
        blob = store.read_bytes(lk.model_name(models_node, p))
        if blob is None:
            raise lk.not_materialised(store, models_node, p)
        data = store.read_bytes(lk.table_name(rows_node, p))
        if data is None:
            raise lk.not_materialised(store, rows_node, p)
        inputs[input_key(models_node, p)] = lk.content_hash(blob)
        inputs[input_key(rows_node, p)] = lk.content_hash(data)
        saved = lk.loads_model(blob)
        constituents.append(saved["model"])
        rows = lk.table_from_bytes(data)
        is_holdout = rows[ft.HOLDOUT].astype(bool)
        holdouts.append(rows[is_holdout])
        trained.append(rows.loc[~is_holdout, ft.LABEL].to_numpy())
        per_shard.append({"shard": p, "train_rows": saved["train_rows"], "model": type(saved["model"]).__name__})
    require_learnable(ft.model_label(policy, model), np.concatenate(trained), where=f"{rows_node} (every shard)")
    params = {"n_shards": policy.shards, "random_state": policy.seed, "hash_groups": False}
    ensemble = (SISARegressor.from_constituents(constituents, len(names), **params) if k is None else
                SISAClassifier.from_constituents(constituents, np.arange(k), len(names), aggregation=spec.aggregation, **params))
    holdout = pd.concat(holdouts, ignore_index=True)
    y = holdout[ft.LABEL].to_numpy()
    metrics: dict = {"holdout_rows": len(holdout)}
    if k is not None:
        metrics.update({f"holdout_class_{c}": n for c, n in class_counts(y, k).items()})
    metrics.update(holdout_metrics(spec.task, ensemble, holdout[names].to_numpy(dtype="float64"), y, k))
    saved = {"model": ensemble, "features": names, "classes": declared_classes(policy, model), "task": spec.task,
             "metrics": metrics, "inputs": inputs}
    value = metrics.get(f"holdout_{spec.metric}")
    passed = value is not None and value >= spec.quality.min
    publication = publish_ensemble(store, node.name, lk.dumps_model(saved), passed)
    digest = lk.model_fingerprint(saved)
    finish(run, digest)
    return NodeResult(digest, None, {
        **metrics,
        "model": model,
        "task": spec.task,
        "published": publication,
        "shards_with_model": sum(m is not None for m in constituents),
        "aggregation": spec.aggregation if k is not None else "mean prediction",
        "metrics": Markdown(md_table([metrics])),
        "shards": Markdown(md_table(per_shard)),
        "content_hash": digest,
        "noncurrent_versions_purged": _purge(run, lk.model_name(node.name), lk.model_name(node.name, CANDIDATE)),
    }, (CheckOutcome(
        "meets_quality_floor", passed,
        {"metric": spec.metric, "holdout_value": value if value is not None else -1.0, "floor": spec.quality.min,
         **{k_: v for k_, v in metrics.items() if k_.startswith("holdout_class_")}, "published": publication},
        # In an erasure run a failure must not stop the certificate: the model that held the
        # subject is withdrawn either way, and the failure is reported as a warning.
        severity="WARN" if run.mode == "erasure" else "ERROR",
    ),))

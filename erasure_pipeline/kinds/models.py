"""Models: one SISA constituent per shard and declared model, and the ensemble of them with its holdout metrics.

One implementation of sharding, seeding and aggregation: ``ml.sisa``. A ``shard_models`` partition is one
SISA constituent; ``ensemble_model`` is their aggregate, published only at or above its quality floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from erasure_pipeline.core.graph import CheckSpec, Node
from erasure_pipeline.core.identity import shard_from_partition
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds import training
from erasure_pipeline.kinds.base import (
    CheckOutcome,
    Env,
    Finding,
    Kind,
    Markdown,
    NodeResult,
    NodeRun,
    finish,
    input_key,
    md_table,
    purge,
    versions_before_tombstone,
)
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.labels import class_counts, require_learnable
from erasure_pipeline.ml.shard_training import matches_retrain, n_classes, train_shard_model, train_unsharded
from erasure_pipeline.ml.sisa import SISAClassifier, SISARegressor, shard_seed
from erasure_pipeline.stores import lake as lk

CANDIDATE = "candidate"


def shard_models_name(model: str) -> str:
    return f"shard_models{training.model_suffix(model)}"


def ensemble_name(model: str) -> str:
    return f"ensemble_model{training.model_suffix(model)}"


class ShardModel(Kind):
    name = "shard_model"
    action = "SISA_RETRAIN"
    residual_risk = training.SISA_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        return [Node(
            shard_models_name(model), self.name, "models", True, (training.node_name(model),),
            (f"models.{model}.estimator", f"models.{model}.params", "seed"), self.action, kinds=("scikitlearn",), model=model,
            checks=(CheckSpec("matches_independent_retrain",
                              "The stored shard model equals, bit for bit on a probe set, an independent retrain from the shard's current rows."),),
            description=f"One SISA constituent of `{model}`: `{spec.estimator}` trained on one shard's rows with a seed from (policy seed, shard).")
            for model, spec in policy.models.items()]

    def compute(self, run: NodeRun) -> NodeResult:
        policy, store, p, node = run.env.policy, run.env.lake, run.partition, run.node
        data = store.read_bytes(lk.table_name(node.parents[0], p))
        if data is None:
            raise lk.not_materialised(store, node.parents[0], p)
        rows = lk.table_from_bytes(data, name=lk.table_name(node.parents[0], p))
        fitted, n_train = train_shard_model(policy, node.model, rows, run.shard)
        saved = {"model": fitted, "features": ft.feature_names(policy), "classes": training.declared_classes(policy, node.model),
                 "task": policy.models[node.model].task, "train_rows": n_train}
        name = lk.model_name(node.name, p)
        store.write_bytes(name, lk.dumps_model(saved))
        digest = lk.model_fingerprint(saved)
        finish(run, digest)
        # The proof the erasure rests on: what is stored equals an independent retrain from the rows.
        blob = store.read_bytes(name)
        equal, diff, probes = matches_retrain(policy, node.model, lk.loads_model(blob)["model"], rows, run.shard)
        _RETRAINS.keep((run.code_version, p, lk.content_hash(data), lk.content_hash(blob)), (equal, diff, probes))
        return NodeResult(digest, None, {
            "model": node.model, "train_rows": n_train, "estimator": policy.models[node.model].estimator,
            "constituent": type(fitted).__name__ if fitted is not None else "none (empty shard)",
            "seed": shard_seed(policy.seed, run.shard), "content_hash": digest, "noncurrent_versions_purged": purge(run, name),
        }, (CheckOutcome("matches_independent_retrain", equal, {"probe_rows": probes, "max_abs_difference": diff}),))

    def object_name(self, node: Node, partition: str | None) -> str:
        return lk.model_name(node.name, partition)

    def stored_version(self, env: Env, node: Node, partition: str | None) -> str | None:
        blob = env.lake.read_bytes(self.object_name(node, partition))
        return None if blob is None else lk.model_fingerprint(lk.loads_model(blob))

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        """The shard model equals an independent retrain from the shard's rows now (once per shard and batch)."""
        if (node.name, partition) not in cache:
            cache[(node.name, partition)] = self._retrain_claim(env, node, partition)
        return [cache[(node.name, partition)], versions_before_tombstone(env, self.object_name(node, partition), subject_key)]

    def _retrain_claim(self, env: Env, node: Node, partition: str) -> Finding:
        claim, target = "shard model equals an independent retrain without the subject", f"{node.name}[{partition}]"
        data = env.lake.read_bytes(lk.table_name(node.parents[0], partition))
        blob = env.lake.read_bytes(self.object_name(node, partition))
        if data is None or blob is None:
            return Finding(claim, target, False, "not materialised")
        key = (env.graph.code_version(env.policy, node.name), partition, lk.content_hash(data), lk.content_hash(blob))
        if (done := _RETRAINS.get(key)) is not None:  # the same bytes retrained by this process's shard step
            equal, diff, probes = done
            return Finding(claim, target, equal, f"max |Δ| = {diff:.3g} over {probes} probe rows (retrained by the shard step from "
                                                 "the same stored bytes)")
        rows = lk.table_from_bytes(data, name=lk.table_name(node.parents[0], partition))
        equal, diff, probes = matches_retrain(env.policy, node.model, lk.loads_model(blob)["model"], rows, shard_from_partition(partition))
        return Finding(claim, target, equal, f"max |Δ| = {diff:.3g} over {probes} probe rows")


class _Retrains:
    """(code version, partition, training table's content hash, stored model's content hash) -> ``matches_retrain``'s
    answer, kept by a shard step for the proof the certificate step makes in the same process minutes later: a retrain
    is a function of those bytes and that code, so retraining them again would prove nothing more (it cost a fit,
    a probe and a read of the whole shard: what grew with the data in one subject's proof). Another process (a
    step of the multiprocess executor, ``verify``) retrains; bytes changed since are another key."""

    MAX = 64

    def __init__(self) -> None:
        self._done: dict[tuple[str, str, str, str], tuple[bool, float, int]] = {}

    def keep(self, key: tuple[str, str, str, str], result: tuple[bool, float, int]) -> None:
        if len(self._done) >= self.MAX:
            self._done.pop(next(iter(self._done)))
        self._done[key] = result

    def get(self, key: tuple[str, str, str, str]) -> tuple[bool, float, int] | None:
        return self._done.get(key)


_RETRAINS = _Retrains()


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
    # scikit-learn is imported when an ensemble is evaluated, not when the kinds load (the CLI's quick paths).
    from sklearn import config_context
    from sklearn import metrics as skm

    if len(y) == 0:
        return {}
    # Finite numbers checked once here, not by every constituent's every pipeline stage: a fifth of 16 constituents'
    # predictions on 200 000 holdout rows (1 000 000 subjects), the same numbers (measured equal). Not finite (an
    # estimator that takes missing values, fed by a declared function): scikit-learn checks as it always did.
    with config_context(assume_finite=bool(np.isfinite(X).all())):
        proba = None if task == "regression" else ensemble.predict_proba(X)
        pred = ensemble.predict(X) if task == "regression" else None
    if task == "regression":
        out = {"holdout_mae": float(skm.mean_absolute_error(y, pred)), "holdout_rmse": float(np.sqrt(skm.mean_squared_error(y, pred)))}
        if len(np.unique(y)) > 1:
            out["holdout_r2"] = float(skm.r2_score(y, pred))
        return out
    pred = proba.argmax(axis=1)
    out = {"holdout_accuracy": float(skm.accuracy_score(y, pred)),
           "holdout_log_loss": float(skm.log_loss(y, proba, labels=list(range(k))))}
    if task == "binary" and len(np.unique(y)) == 2:
        out["holdout_roc_auc"] = float(skm.roc_auc_score(y, proba[:, 1]))
    if task == "multiclass":
        out["holdout_macro_f1"] = float(skm.f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0))
    return out


@dataclass
class _Shards:
    """What an ensemble reads of every shard: the constituents, the holdout rows, the inputs' hashes."""

    constituents: list = field(default_factory=list)
    holdouts: list = field(default_factory=list)
    trained: list = field(default_factory=list)
    train_rows: list = field(default_factory=list)
    """Arrow tables: made a frame only when the unsharded baseline is measured (an erasure carries it over)."""
    per_shard: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)

    def training_frame(self) -> pd.DataFrame:
        """Every shard's training rows as one frame. Shards' tables may type a column differently (whole numbers
        here, a fraction filled in there): combined as pandas combines them."""
        return pa.concat_tables(self.train_rows, promote_options="permissive").to_pandas()


def _read_shards(run: NodeRun, names: list[str], training: bool = True) -> _Shards:
    """Every shard's model and its training table's holdout flag, label and ``names`` (not the subject keys: no
    evaluation uses them), split into holdout and training rows in Arrow; only the holdout becomes a frame. Reading
    16 training tables so took 0.06 s at 200 000 subjects where whole frames took 0.10 s: it grows with the data.
    ``training`` False (the unsharded baseline is carried over): of the training rows only their labels, and of
    the features only the holdout's row group (``training.holdout_last``): at 1 000 000 subjects reading and
    splitting every row was ~0.5 s of an erasure's 0.9 s ensemble on a VM at half speed."""
    store, (models_node, rows_node) = run.env.lake, run.node.parents
    out = _Shards()
    for p in run.env.partitions:
        blob = store.read_bytes(lk.model_name(models_node, p))
        if blob is None:
            raise lk.not_materialised(store, models_node, p)
        data = store.read_bytes(lk.table_name(rows_node, p))
        if data is None:
            raise lk.not_materialised(store, rows_node, p)
        out.inputs[input_key(models_node, p)] = lk.content_hash(blob)
        out.inputs[input_key(rows_node, p)] = lk.content_hash(data)
        saved = lk.loads_model(blob)
        out.constituents.append(saved["model"])
        name = lk.table_name(rows_node, p)
        rows = lk.read_parquet(data, [ft.HOLDOUT, ft.LABEL, *(names if training else ())], name).table
        held = pc.fill_null(rows[ft.HOLDOUT].cast(pa.bool_()), False)
        train = rows.filter(pc.invert(held))
        if training:
            out.holdouts.append(rows.filter(held).to_pandas())
            out.train_rows.append(train)
        else:
            out.holdouts.append(lk.read_flagged(data, [ft.LABEL, *names], ft.HOLDOUT, name).to_pandas())
        out.trained.append(train[ft.LABEL].to_numpy())
        out.per_shard.append({"shard": p, "train_rows": saved["train_rows"], "model": type(saved["model"]).__name__})
    return out


class Ensemble(Kind):
    name = "ensemble"
    action = "SISA_RETRAIN"
    residual_risk = training.SISA_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        return [Node(
            ensemble_name(model), self.name, "models", False, (shard_models_name(model), training.node_name(model)),
            (f"models.{model}.aggregation", f"models.{model}.quality"), self.action, kinds=("scikitlearn",), model=model,
            checks=(CheckSpec("meets_quality_floor",
                              f"Holdout {spec.metric} at or above models.{model}.quality.min. Below it the model is kept only as a "
                              "candidate, the published model is withdrawn (it was built from shard models that changed) and "
                              "the run fails; in an erasure run the check fails as a warning so the erasure still completes."),)
            if spec.quality else (),
            description=f"The SISA aggregate of every shard model of `{model}`, evaluated on the key-derived holdout of every shard, "
                        "beside one unsharded model of the same estimator on the same split (what sharding costs).")
            for model, spec in policy.models.items()]

    def compute(self, run: NodeRun) -> NodeResult:
        policy, store, node = run.env.policy, run.env.lake, run.node
        spec, names, k = policy.models[node.model], ft.feature_names(policy), n_classes(policy, node.model)
        carried = self._carried_baseline(run)
        shards = _read_shards(run, names, training=carried is None)
        require_learnable(ft.model_label(policy, node.model), np.concatenate(shards.trained), where=f"{node.parents[1]} (every shard)")
        params = {"n_shards": policy.shards, "random_state": policy.seed, "hash_groups": False}
        ensemble = (SISARegressor.from_constituents(shards.constituents, len(names), **params) if k is None else
                    SISAClassifier.from_constituents(shards.constituents, np.arange(k), len(names), aggregation=spec.aggregation, **params))
        holdout = pd.concat(shards.holdouts, ignore_index=True)
        y = holdout[ft.LABEL].to_numpy()
        metrics: dict = {"holdout_rows": len(holdout), **({f"holdout_class_{c}": n for c, n in class_counts(y, k).items()} if k else {})}
        metrics.update(holdout_metrics(spec.task, ensemble, holdout[names].to_numpy(dtype="float64"), y, k))
        baseline = carried if carried is not None else self._baseline(run, shards, holdout, names, k)
        saved = {"model": ensemble, "features": names, "classes": training.declared_classes(policy, node.model), "task": spec.task,
                 "metrics": metrics, "baseline": baseline, "inputs": shards.inputs}
        value = metrics.get(f"holdout_{spec.metric}")
        passed = spec.quality is None or (value is not None and value >= spec.quality.min)
        publication = publish_ensemble(store, node.name, lk.dumps_model(saved), passed)
        if spec.quality is None:
            publication += " (no quality floor declared)"
        digest = lk.model_fingerprint(saved)
        finish(run, digest)
        unsharded = baseline.get(f"holdout_{spec.metric}")
        return NodeResult(digest, None, {
            **metrics, "model": node.model, "task": spec.task, "estimator": spec.estimator, "published": publication,
            "shards_with_model": sum(m is not None for m in shards.constituents),
            "aggregation": spec.aggregation if k is not None else "mean prediction",
            **({f"unsharded_{spec.metric}": unsharded, f"sharding_cost_{spec.metric}": unsharded - value}
               if unsharded is not None and value is not None else {}),
            "unsharded_measured": (baseline.get("measured", "not measured")
                                   + (" (carried over: an erasure does not retrain it)" if baseline.get("carried_over") else "")),
            "metrics": Markdown(md_table([metrics])), "shards": Markdown(md_table(shards.per_shard)), "content_hash": digest,
            "noncurrent_versions_purged": purge(run, lk.model_name(node.name), lk.model_name(node.name, CANDIDATE)),
        }, () if spec.quality is None else (CheckOutcome(
            "meets_quality_floor", passed,
            {"metric": spec.metric, "holdout_value": value if value is not None else -1.0, "floor": spec.quality.min,
             **{k_: v for k_, v in metrics.items() if k_.startswith("holdout_class_")}, "published": publication},
            # In an erasure run a failure must not stop the certificate: the model that held the
            # subject is withdrawn either way, and the failure is reported as a warning.
            severity="WARN" if run.mode == "erasure" else "ERROR",
        ),))

    @staticmethod
    def _carried_baseline(run: NodeRun) -> dict | None:
        """The unsharded model's holdout metrics an erasure run carries over: the last ones measured under the same
        policy values (one model on every row costs what the whole rebuild saves). None: measured anew (every other
        run, and an erasure after a policy change)."""
        if run.mode != "erasure":
            return None
        blob = run.env.lake.read_bytes(lk.model_name(run.node.name, CANDIDATE))
        before = (lk.loads_model(blob).get("baseline") if blob else None) or {}
        if before.get("code_version") == run.code_version:  # measured under the same policy values
            return {**before, "carried_over": True}
        return None

    @staticmethod
    def _baseline(run: NodeRun, shards: _Shards, holdout: pd.DataFrame, names: list[str], k: int | None) -> dict:
        """The unsharded model's holdout metrics, measured on every shard's training rows."""
        policy, node = run.env.policy, run.node
        train = shards.training_frame()
        fitted = train_unsharded(policy, node.model, train)
        if fitted is None:
            return {}
        one = (SISARegressor.from_constituents([fitted], len(names), n_shards=1, random_state=policy.seed, hash_groups=False) if k is None else
               SISAClassifier.from_constituents([fitted], np.arange(k), len(names), n_shards=1, random_state=policy.seed, hash_groups=False))
        metrics = holdout_metrics(policy.models[node.model].task, one, holdout[names].to_numpy(dtype="float64"),
                                  holdout[ft.LABEL].to_numpy(), k)
        return {**metrics, "measured": f"{run.mode} run, {len(train)} training rows", "carried_over": False,
                "code_version": run.code_version}

    def object_name(self, node: Node, partition: str | None) -> str:
        return lk.model_name(node.name, partition)

    def stored_version(self, env: Env, node: Node, partition: str | None) -> str | None:
        """The candidate's fingerprint: it is written on every build; the published copy only above the floor."""
        blob = env.lake.read_bytes(lk.model_name(node.name, CANDIDATE))
        return None if blob is None else lk.model_fingerprint(lk.loads_model(blob))

    def recorded_inputs(self, env: Env, node: Node) -> list[tuple[str, dict | None]]:
        """The published model (when there is one) and the candidate, each with the inputs it recorded."""
        names, out = [lk.model_name(node.name), lk.model_name(node.name, CANDIDATE)], []
        for obj in names:
            blob = env.lake.read_bytes(obj)
            if blob is not None or obj == names[-1]:
                out.append((obj, lk.loads_model(blob).get("inputs") if blob else None))
        return out

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        return [versions_before_tombstone(env, name, subject_key) for name in (lk.model_name(node.name), lk.model_name(node.name, CANDIDATE))]

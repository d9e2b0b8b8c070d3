"""Training and re-checking one shard's model, shared by the nodes and by ``verify`` (no Dagster)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from erasure_pipeline.core import identity
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.estimators import build_estimator
from erasure_pipeline.ml.sisa import aggregate_predict, aggregate_proba, fit_shard, shard_seed

PROBE_ROWS = 256


def n_classes(policy: Policy, model: str) -> int | None:
    """Classes of a classification model; None for a regression."""
    return ft.model_label(policy, model).n_classes


def train_shard_model(policy: Policy, model: str, rows: pd.DataFrame, shard: int):
    """The constituent of one shard, from that shard's training rows alone (holdout rows excluded)."""
    train = rows[~rows[ft.HOLDOUT].astype(bool)]
    X = train[ft.feature_names(policy)].to_numpy(dtype="float64")
    k = n_classes(policy, model)
    y = train[ft.LABEL].to_numpy(dtype="int64" if k is not None else "float64")
    fitted, _ = fit_shard(build_estimator(policy.models[model], model, policy.code_dirs), X, y, n_classes=k, seed=shard_seed(policy.seed, shard))
    return fitted, len(train)


def train_unsharded(policy: Policy, model: str, train: pd.DataFrame):
    """One model of the same estimator on every shard's training rows at once: the baseline the SISA
    ensemble is compared with (what sharding costs), measured on the same holdout. Only its metrics are kept."""
    X = train[ft.feature_names(policy)].to_numpy(dtype="float64")
    k = n_classes(policy, model)
    y = train[ft.LABEL].to_numpy(dtype="int64" if k is not None else "float64")
    fitted, _ = fit_shard(build_estimator(policy.models[model], model, policy.code_dirs), X, y, n_classes=k,
                          seed=identity.derive_seed(policy.seed, "unsharded", 0))
    return fitted


def probe_set(policy: Policy, rows: pd.DataFrame, shard: int) -> np.ndarray:
    """The shard's own rows plus a fixed random probe: where two models must agree bit for bit."""
    names = ft.feature_names(policy)
    rng = np.random.default_rng(identity.derive_seed(policy.seed, "probe", shard))
    own = rows[names].to_numpy(dtype="float64")
    scale = own.std(axis=0) if len(own) else np.ones(len(names))
    centre = own.mean(axis=0) if len(own) else np.zeros(len(names))
    synthetic = centre + rng.standard_normal((PROBE_ROWS, len(names))) * np.where(scale > 0, scale, 1.0)
    return np.vstack([own, synthetic])


def constituent_output(model, X: np.ndarray, k: int | None) -> np.ndarray:
    """What a constituent contributes to the ensemble: class probabilities, or a regression's predictions."""
    if model is None:
        return np.zeros((len(X), k)) if k is not None else np.zeros(len(X))
    return aggregate_proba([model], X, k, "mean_proba") if k is not None else aggregate_predict([model], X)


def matches_retrain(policy: Policy, model: str, stored_model, rows: pd.DataFrame, shard: int) -> tuple[bool, float, int]:
    """(equal bit for bit, max abs difference, probe rows) of a stored model vs an independent retrain."""
    fresh, _ = train_shard_model(policy, model, rows, shard)
    probe = probe_set(policy, rows, shard)
    k = n_classes(policy, model)
    a, b = constituent_output(stored_model, probe, k), constituent_output(fresh, probe, k)
    diff = float(np.max(np.abs(a - b))) if len(probe) else 0.0
    return bool(np.array_equal(a, b)), diff, len(probe)

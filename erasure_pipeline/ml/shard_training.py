"""Training and re-checking one shard's model, shared by the assets and by ``verify`` (no Dagster)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.sisa import aggregate_proba, fit_shard, shard_seed
from erasure_pipeline.policy import Policy

CLASSES = np.array([0, 1])
PROBE_ROWS = 256


def train_shard_model(policy: Policy, rows: pd.DataFrame, shard: int):
    """The constituent of one shard, from that shard's training rows alone (holdout rows excluded)."""
    train = rows[~rows[ft.HOLDOUT].astype(bool)]
    X = train[ft.feature_names(policy)].to_numpy(dtype="float64")
    y = train[ft.LABEL].to_numpy(dtype="int64")
    model, _ = fit_shard(ft.build_estimator(policy), X, y, n_classes=len(CLASSES), seed=shard_seed(policy.seed, shard))
    return model, len(train)


def probe_set(policy: Policy, rows: pd.DataFrame, shard: int) -> np.ndarray:
    """The shard's own rows plus a fixed random probe: where two models must agree bit for bit."""
    names = ft.feature_names(policy)
    rng = np.random.default_rng(identity.derive_seed(policy.seed, "probe", shard))
    own = rows[names].to_numpy(dtype="float64")
    scale = own.std(axis=0) if len(own) else np.ones(len(names))
    centre = own.mean(axis=0) if len(own) else np.zeros(len(names))
    synthetic = centre + rng.standard_normal((PROBE_ROWS, len(names))) * np.where(scale > 0, scale, 1.0)
    return np.vstack([own, synthetic])


def constituent_proba(model, X: np.ndarray) -> np.ndarray:
    return aggregate_proba([model], X, len(CLASSES), "mean_proba") if model is not None else np.zeros((len(X), len(CLASSES)))


def matches_retrain(policy: Policy, stored_model, rows: pd.DataFrame, shard: int) -> tuple[bool, float, int]:
    """(equal bit for bit, max abs difference, probe rows) of a stored model vs an independent retrain."""
    fresh, _ = train_shard_model(policy, rows, shard)
    probe = probe_set(policy, rows, shard)
    a, b = constituent_proba(stored_model, probe), constituent_proba(fresh, probe)
    diff = float(np.max(np.abs(a - b))) if len(probe) else 0.0
    return bool(np.array_equal(a, b)), diff, len(probe)

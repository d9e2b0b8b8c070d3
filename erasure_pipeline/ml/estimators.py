"""The per-shard estimator a declared model names: a short alias or any scikit-learn-compatible class.

A short name (``logistic_regression``, ``sgd``, ``random_forest``, ``hist_gradient_boosting`` for
classifiers; ``ridge``, ``random_forest_regressor``, ``hist_gradient_boosting_regressor`` for
regressions) or an import path (``sklearn.svm.LinearSVC``, ``package.module:Class``) called with the
model's ``params``. Its ``random_state`` (anywhere in a pipeline) is set per shard by SISA, so a
shard's model is a function of that shard's rows. No Dagster import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erasure_pipeline.core.declared import load
from erasure_pipeline.core.policy import ModelSpec, PolicyError


def _aliases() -> dict[str, tuple[str, Callable[[dict], Any]]]:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic_regression": ("classifier", lambda p: make_pipeline(StandardScaler(), LogisticRegression(**{"max_iter": 1000, **p}))),
        "sgd": ("classifier", lambda p: make_pipeline(StandardScaler(), SGDClassifier(**{"loss": "log_loss", **p}))),
        "random_forest": ("classifier", lambda p: RandomForestClassifier(**{"n_estimators": 100, "n_jobs": 1, **p})),
        "hist_gradient_boosting": ("classifier", lambda p: HistGradientBoostingClassifier(**p)),
        "ridge": ("regressor", lambda p: make_pipeline(StandardScaler(), Ridge(**p))),
        "random_forest_regressor": ("regressor", lambda p: RandomForestRegressor(**{"n_estimators": 100, "n_jobs": 1, **p})),
        "hist_gradient_boosting_regressor": ("regressor", lambda p: HistGradientBoostingRegressor(**p)),
    }


def build_estimator(model: ModelSpec, name: str = "model", code_dirs: tuple = ()):
    """A fresh, unfitted estimator for one shard of model ``name`` (``code_dirs``: where declared code lives,
    ``Policy.code_dirs``). Errors name the declaration's field."""
    from sklearn.base import is_classifier, is_regressor

    field = f"models.{name}"
    aliases = _aliases()
    try:
        if model.estimator in aliases:
            est = aliases[model.estimator][1](dict(model.params))
        else:
            est = load(model.estimator, f"{field}.estimator", code_dirs)(**model.params)
    except TypeError as exc:
        raise PolicyError(f"field '{field}.params': {model.estimator} does not take these params ({exc})") from None
    wants = "regressor" if model.task == "regression" else "classifier"
    needs = ("fit", "predict")
    if not all(callable(getattr(est, m, None)) for m in needs):
        raise PolicyError(f"field '{field}.estimator': {model.estimator} is not an estimator (it needs fit and predict)")
    try:
        kind = "classifier" if is_classifier(est) else "regressor" if is_regressor(est) else None
    except Exception:  # noqa: BLE001 (a foreign estimator without scikit-learn's tags)
        kind = None
    if kind is not None and kind != wants:
        raise PolicyError(f"field '{field}.estimator': {model.estimator} is a {kind}; a {model.task} model needs a {wants}")
    return est

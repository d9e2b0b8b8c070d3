"""Training rows for one shard, built from that shard's raw rows only.

Everything here is shard-local and stateless (categoricals are one-hot encoded into hashed
buckets, not a vocabulary learnt across shards), so a shard's training set, and hence its
model, depends on nothing outside the shard. Rows are sorted by ``subject_key``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from erasure_pipeline.ml.labels import BinaryLabel
from erasure_pipeline.policy import Policy

CATEGORY_BUCKETS = 8
KEY, LABEL, HOLDOUT = "subject_key", "label", "holdout"


def _bucket(column: str, value: str) -> int:
    return int(hashlib.sha256(f"{column}={value}".encode()).hexdigest()[:8], 16) % CATEGORY_BUCKETS


def feature_names(policy: Policy) -> list[str]:
    m = policy.model
    names = [f"num_{c}" for c in m.numeric_features]
    names += [f"cat_{c}_{b}" for c in m.categorical_features for b in range(CATEGORY_BUCKETS)]
    names += [f"events_{e}" for e in m.event_features]
    return names


def is_holdout(keys: pd.Series, fraction: float) -> np.ndarray:
    """A fixed, key-derived holdout: the same subjects are held out in every build."""
    cut = int(fraction * 10_000)
    return np.fromiter((int(k[8:16], 16) % 10_000 < cut for k in keys), dtype=bool, count=len(keys))


def consenting(subjects: pd.DataFrame, policy: Policy) -> pd.Series:
    col = policy.consent.column
    if col not in subjects.columns:
        raise KeyError(f"consent column '{col}' (policy consent.column) is not in raw_subjects")
    return subjects[col].isin(policy.consent.allowed_values)


def model_label(policy: Policy) -> BinaryLabel:
    return BinaryLabel(policy.model.label, None if policy.model.positive_class is None else str(policy.model.positive_class))


@dataclass(frozen=True)
class TrainingSet:
    rows: pd.DataFrame
    """One row per consenting subject: key, holdout flag, label (class 0/1), features; sorted by key."""
    label_encoding: str
    """How the label's values became classes, for the materialisation's metadata."""


def training_rows(subjects: pd.DataFrame, events: pd.DataFrame, policy: Policy, *, where: str = "raw_subjects") -> TrainingSet:
    """The training set of one shard. ``where`` names the partition in a label error (``ml.labels``)."""
    m = policy.model
    names = feature_names(policy)
    chosen = subjects[consenting(subjects, policy)] if not subjects.empty else subjects
    if chosen.empty:
        return TrainingSet(pd.DataFrame({KEY: pd.Series(dtype=str), HOLDOUT: pd.Series(dtype=bool), LABEL: pd.Series(dtype="int64"),
                                         **{n: pd.Series(dtype="float64") for n in names}}), "no rows")
    for col in [m.label, *m.numeric_features, *m.categorical_features]:
        if col not in chosen.columns:
            raise KeyError(f"column '{col}' named in policy model settings is not in raw_subjects")
    chosen = chosen.sort_values(KEY, kind="stable")
    out = pd.DataFrame({KEY: chosen[KEY].to_numpy()})
    out[HOLDOUT] = is_holdout(out[KEY], m.holdout_fraction)
    out[LABEL], encoding = model_label(policy).encode(chosen[m.label], where=where)
    for c in m.numeric_features:
        out[f"num_{c}"] = pd.to_numeric(chosen[c], errors="coerce").fillna(0.0).astype("float64").to_numpy()
    for c in m.categorical_features:
        buckets = np.fromiter((_bucket(c, str(v)) for v in chosen[c]), dtype=np.int64, count=len(chosen))
        for b in range(CATEGORY_BUCKETS):
            out[f"cat_{c}_{b}"] = (buckets == b).astype("float64")
    if m.event_features:
        if events.empty or "event_type" not in events.columns:
            counts = pd.DataFrame(0.0, index=out[KEY], columns=m.event_features)
        else:
            counts = (
                events[events["event_type"].isin(m.event_features)]
                .groupby([KEY, "event_type"]).size().unstack(fill_value=0)
                .reindex(index=out[KEY], columns=m.event_features, fill_value=0)
            )
        for e in m.event_features:
            out[f"events_{e}"] = np.log1p(counts[e].fillna(0).to_numpy(dtype="float64"))
    return TrainingSet(out[[KEY, HOLDOUT, LABEL, *names]].reset_index(drop=True), encoding)


def training_class_counts(subjects: pd.DataFrame, policy: Policy, *, where: str) -> dict[int, int]:
    """Rows per class among the subjects that would train a model: consenting, not held out."""
    from erasure_pipeline.ml.labels import class_counts

    chosen = subjects[consenting(subjects, policy).to_numpy() & ~is_holdout(subjects[KEY], policy.model.holdout_fraction)]
    return class_counts(model_label(policy).encode(chosen[policy.model.label], where=where)[0])


def constant_features(rows: pd.DataFrame, names: list[str]) -> int:
    """Features that take one value over every row: they teach a model nothing (a sign of a wrong column)."""
    if rows.empty:
        return 0
    return int((rows[names].nunique(dropna=False) <= 1).sum())


def build_estimator(policy: Policy):
    """The per-shard scikit-learn estimator the policy names (scaled where the model needs it)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    m = policy.model
    params = dict(m.params)
    if m.estimator == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(**{"max_iter": 1000, **params}))
    if m.estimator == "sgd":
        return make_pipeline(StandardScaler(), SGDClassifier(**{"loss": "log_loss", **params}))
    if m.estimator == "random_forest":
        return RandomForestClassifier(**{"n_estimators": 100, "n_jobs": 1, **params})
    return HistGradientBoostingClassifier(**params)

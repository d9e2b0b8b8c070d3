"""Training rows for one shard and one declared model, built from that shard's raw rows only.

The features a declaration names (``policy.FeaturesPolicy``): columns of the features' dataset
(numbers as they are, categories one-hot encoded into hashed buckets, so no vocabulary is learnt
across shards), per-subject aggregates of other datasets (count, sum, mean, last; optionally of
rows whose column has a value), and columns a named function computes from the shard's rows.

Everything here is shard-local and stateless, so a shard's training set, and hence its model,
depends on nothing outside the shard. Rows are sorted by ``subject_key`` (then the dataset's id).
No Dagster import.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from erasure_pipeline.core.declaration import Aggregate, FeaturesPolicy, FunctionFeature, Join
from erasure_pipeline.core.declared import load
from erasure_pipeline.core.errors import BlockingError
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.ml.labels import Label, label_encoder

CATEGORY_BUCKETS = 8
KEY, LABEL, HOLDOUT = "subject_key", "label", "holdout"


class FeatureError(BlockingError):
    """A feature the declaration names cannot be computed from the rows; the message names no value."""


def _bucket(column: str, value: str) -> int:
    return int(hashlib.sha256(f"{column}={value}".encode()).hexdigest()[:8], 16) % CATEGORY_BUCKETS


def _buckets(column: str, values: pd.Series) -> np.ndarray:
    """``_bucket`` of each row's value as text, each distinct text hashed once (a category has few values: a hash
    per row was 0.9 s of a 200 000-subject build's training sets under cProfile). Read as a list: iterating an
    Arrow-backed Series item by item cost ~1 µs a value more (the same texts, nulls included)."""
    texts = [str(v) for v in values.tolist()]
    of = {t: _bucket(column, t) for t in set(texts)}
    return np.fromiter((of[t] for t in texts), dtype=np.int64, count=len(texts))


def feature_names(policy: Policy) -> list[str]:
    """The model inputs, in order: the same for every model of the declaration."""
    f = policy.features
    names = [f"num_{c}" for c in f.numeric_columns]
    names += [f"cat_{c}_{b}" for c in f.categorical for b in range(CATEGORY_BUCKETS)]
    names += [a.name for a in f.aggregates]
    names += [o for fn in f.functions for o in fn.outputs]
    return names


def is_holdout(keys: pd.Series, fraction: float) -> np.ndarray:
    """A fixed, key-derived holdout: the same subjects are held out in every build."""
    cut = int(fraction * 10_000)
    return np.fromiter((int(k[8:16], 16) % 10_000 < cut for k in keys.tolist()), dtype=bool, count=len(keys))


def consenting(rows: pd.DataFrame, policy: Policy) -> pd.Series:
    """Rows of the features' dataset whose subject may reach training (``consent.column``; none: every row)."""
    if policy.consent is None:
        return pd.Series(True, index=rows.index)
    col = policy.consent.column
    if col not in rows.columns:
        raise FeatureError(f"raw_{policy.features.dataset}: consent column '{col}' (policy consent.column) is missing")
    return allowed(rows[col], policy)


def _token(value) -> str:
    return str(value).strip().casefold()


def allowed(values: pd.Series, policy: Policy) -> pd.Series:
    """Which consent values are in ``consent.allowed_values``, compared as text (case and blanks aside), so
    a boolean column (parsed when every allowed value is a boolean) and a text one read alike."""
    wanted = {_token(v) for v in policy.consent.allowed_values}
    return values.astype(str).str.strip().str.casefold().isin(wanted)


def _allowed(rows: pd.DataFrame, column: str | None, policy: Policy) -> pd.DataFrame:
    return rows if column is None else rows[allowed(rows[column], policy)]


@dataclass(frozen=True)
class TrainingSet:
    rows: pd.DataFrame
    """One row per consenting row of the features' dataset: key, holdout flag, label, features; sorted by key."""
    label_encoding: str
    """How the label's values became classes (or targets), for the materialisation's metadata."""
    filled: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Numeric feature -> the subject keys of the rows whose missing value was filled (or dropped) as declared."""


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def aggregate(rows: pd.DataFrame, agg: Aggregate, policy: Policy, keys: pd.Series) -> np.ndarray:
    """One aggregate per key of ``keys`` (0 for a subject without rows), from one shard's rows of its dataset."""
    spec = policy.datasets[agg.dataset]
    if rows.empty:
        return np.zeros(len(keys))
    rows = _allowed(rows, spec.consent, policy)
    for column, wanted in agg.where.items():
        values = [str(v) for v in (wanted if isinstance(wanted, list) else [wanted])]
        rows = rows[rows[column].astype(str).isin(values)]
    if agg.agg == "count":
        per_key = rows.groupby(KEY).size().astype("float64")
    elif agg.agg == "last":
        ordered = rows.sort_values([spec.timestamp, spec.id], kind="stable")
        per_key = _numbers(ordered[agg.column]).groupby(ordered[KEY]).last()
    else:
        per_key = _numbers(rows[agg.column]).groupby(rows[KEY]).agg(agg.agg)
    out = per_key.reindex(keys.to_numpy()).fillna(0.0).to_numpy(dtype="float64")
    if agg.transform == "log1p":
        out = np.sign(out) * np.log1p(np.abs(out))
    return out


def function_features(fn: FunctionFeature, index: int, frames: Mapping[str, pd.DataFrame], keys: pd.Series,
                      code_dirs: tuple = ()) -> pd.DataFrame:
    """The columns a declared function computes, aligned to ``keys`` (0 for a subject it leaves out)."""
    field = f"features.functions.{index}"
    func = load(fn.function, f"{field}.function", code_dirs)
    try:
        got = func({d: frames[d] for d in fn.datasets})
    except Exception as exc:  # noqa: BLE001 (their code: name where it failed, never the message, which may hold values)
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise FeatureError(f"{field} ({fn.function}) raised {type(exc).__name__} at {frame.filename}:{frame.lineno}") from None
    if not isinstance(got, pd.DataFrame):
        raise FeatureError(f"{field} ({fn.function}) returned {type(got).__name__}, not a DataFrame with one row per subject_key")
    if KEY in got.columns:
        got = got.set_index(KEY)
    missing = [o for o in fn.outputs if o not in got.columns]
    if missing:
        raise FeatureError(f"{field} ({fn.function}) returned no column '{missing[0]}' (listed in {field}.outputs)")
    if got.index.duplicated().any():
        raise FeatureError(f"{field} ({fn.function}) returned {int(got.index.duplicated().sum())} repeated subject_key rows")
    out = got[fn.outputs].apply(_numbers).reindex(keys.to_numpy()).fillna(0.0)
    return out.reset_index(drop=True)


def model_label(policy: Policy, model: str) -> Label:
    return label_encoder(policy.models[model], model)


def joined(base: pd.DataFrame, frames: Mapping[str, pd.DataFrame], joins: list[Join], *, where: str) -> pd.DataFrame:
    """``base`` with each join's lookup columns brought in by key (a key absent from the lookup gives no value)."""
    for i, j in enumerate(joins):
        table, key = frames[j.dataset], j.key or j.on
        dup = int(table[key].duplicated().sum())
        if dup:
            raise FeatureError(f"features.joins.{i}: lookup '{j.dataset}' repeats {dup:,} keys in column '{key}' (a key must be unique)")
        right = table[[key, *j.columns]].rename(columns={key: f"__join_{i}"})
        base = base.merge(right, how="left", left_on=j.on, right_on=f"__join_{i}", sort=False).drop(columns=[f"__join_{i}"])
    return base


def _no_value(where: str, column: str, n: int) -> str:
    return (f"{where}: features.numeric '{column}': {n:,} row{'s have' if n != 1 else ' has'} no numeric value; declare how to "
            "fill it ({column: " + column + ", fill: zero | mean | drop}, or features.fill)")


def require_numbers(rows: pd.DataFrame, policy: Policy, *, where: str) -> None:
    """Before anything is trained: numeric features whose declaration says ``error`` have a value in every
    consenting row of the features' dataset (columns a join brings are checked when the join is made)."""
    f = policy.features
    chosen = rows[consenting(rows, policy).to_numpy()]
    for c in f.numeric_columns:
        if c in chosen and f.fill_of(c) == "error":
            n = int(_numbers(chosen[c]).isna().sum())
            if n:
                raise FeatureError(_no_value(where, c, n))


def filled_numbers(rows: pd.DataFrame, f: FeaturesPolicy, *, where: str) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(numeric feature -> values with missing ones filled, rows to drop, feature -> which rows were missing).
    ``mean`` is the mean over this shard's rows: a shard's features stay a function of its own rows."""
    values, drop, missing_rows = {}, np.zeros(len(rows), dtype=bool), {}
    for c in f.numeric_columns:
        x = _numbers(rows[c]).to_numpy()
        missing = np.isnan(x)
        n = int(missing.sum())
        if n:
            fill = f.fill_of(c)
            if fill == "error":
                raise FeatureError(_no_value(where, c, n))
            if fill == "drop":
                drop |= missing
            else:
                x = np.where(missing, float(np.nanmean(x)) if fill == "mean" and n < len(x) else 0.0, x)
            missing_rows[c] = missing
        values[c] = x
    return values, drop, missing_rows


def training_rows(frames: Mapping[str, pd.DataFrame], policy: Policy, model: str, *, where: str) -> TrainingSet:
    """The training set of one shard for one model. ``frames`` maps each dataset the features read to the
    shard's rows (an empty frame for one without rows; a lookup table whole); ``where`` names the partition."""
    f, spec = policy.features, policy.models[model]
    names = feature_names(policy)
    label = model_label(policy, model)
    base = frames[f.dataset]
    chosen = base[consenting(base, policy)] if not base.empty else base
    if chosen.empty:
        label_dtype = "float64" if label.n_classes is None else "int64"
        return TrainingSet(pd.DataFrame({KEY: pd.Series(dtype=str), HOLDOUT: pd.Series(dtype=bool), LABEL: pd.Series(dtype=label_dtype),
                                         **{n: pd.Series(dtype="float64") for n in names}}), "no rows", {})
    chosen = joined(chosen.sort_values([KEY, policy.datasets[f.dataset].id], kind="stable"), frames, f.joins, where=where)
    numbers, drop, missing = filled_numbers(chosen, f, where=where)
    filled = {c: chosen[KEY].to_numpy()[m] for c, m in missing.items()}
    chosen, numbers = chosen[~drop], {c: v[~drop] for c, v in numbers.items()}
    keys = chosen[KEY].reset_index(drop=True)
    out = pd.DataFrame({KEY: keys.to_numpy()})
    out[HOLDOUT] = is_holdout(keys, spec.holdout_fraction)
    out[LABEL], encoding = label.encode(chosen[spec.label], where=where)
    for c in f.numeric_columns:
        out[f"num_{c}"] = numbers[c]
    for c in f.categorical:
        buckets = _buckets(c, chosen[c])
        for b in range(CATEGORY_BUCKETS):
            out[f"cat_{c}_{b}"] = (buckets == b).astype("float64")
    for agg in f.aggregates:
        out[agg.name] = aggregate(frames[agg.dataset], agg, policy, keys)
    for i, fn in enumerate(f.functions):
        computed = function_features(fn, i, frames, keys, policy.code_dirs)
        for o in fn.outputs:
            out[o] = computed[o].to_numpy()
    return TrainingSet(out[[KEY, HOLDOUT, LABEL, *names]].reset_index(drop=True), encoding, filled)


def training_labels(rows: pd.DataFrame, policy: Policy, model: str, *, where: str) -> np.ndarray:
    """The encoded labels of the rows of the features' dataset that would train ``model``: consenting, not held out."""
    chosen = rows[consenting(rows, policy).to_numpy() & ~is_holdout(rows[KEY], policy.models[model].holdout_fraction)]
    return model_label(policy, model).encode(chosen[policy.models[model].label], where=where)[0]


def constant_features(rows: pd.DataFrame, names: list[str]) -> int:
    """Features that take one value over every row: they teach a model nothing (a sign of a wrong column)."""
    if rows.empty:
        return 0
    return int((rows[names].nunique(dropna=False) <= 1).sum())

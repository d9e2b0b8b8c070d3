"""SISA exact unlearning (Bourtoule et al., 2021) as a scikit-learn estimator.

Rows are assigned to shards by group (a data subject) with the pipeline's rule,
``shard = int(key[:8], 16) % n_shards`` where ``key`` is the group's keyed hash. Each shard
trains one clone of ``estimator`` on its rows in their given order with a seed derived from
``(random_state, shard)``, so a shard's model depends on nothing but that shard's rows.
``unlearn(groups)`` therefore refits only the shards holding those groups and the result
equals, bit for bit, a fresh ``fit`` on the data without them.

The module-level helpers (:func:`shard_seed`, :func:`fit_shard`, :func:`aggregate_proba`) are
what the Dagster assets use: one shard model per partition, one ensemble from them.
No Dagster import here.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from erasure_pipeline.ml.folding import folded

__all__ = ["SISAClassifier", "SISARegressor", "SingleClass", "aggregate_predict", "aggregate_proba", "fit_shard", "group_keys", "shard_seed"]


def shard_seed(random_state: int, shard: int) -> int:
    """The seed of shard ``shard``: the same in the estimator and the pipeline."""
    payload = f"{int(random_state)}:shard:{int(shard)}".encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:4], "big") >> 1


def group_keys(groups: Sequence[Any], *, hash_groups: bool = True, pepper: str = "") -> np.ndarray:
    """Keyed hashes of group labels (``hash_groups``), or the labels themselves if they are keys."""
    if not hash_groups:
        keys = np.asarray([str(g) for g in groups], dtype=object)
        for k in keys[:1]:
            int(k[:16], 16)  # raises ValueError when the groups are not hex keys
        return keys
    mac = hmac.new(pepper.encode(), digestmod=hashlib.sha256)
    out = []
    for g in groups:
        m = mac.copy()
        m.update(str(g).encode())
        out.append(m.hexdigest())
    return np.asarray(out, dtype=object)


def _shards_and_slices(keys: np.ndarray, n_shards: int, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    shards = np.fromiter((int(k[:8], 16) % n_shards for k in keys), dtype=np.int64, count=len(keys))
    slices = np.fromiter((int(k[8:16], 16) % n_slices for k in keys), dtype=np.int64, count=len(keys))
    return shards, slices


def _set_seed(estimator: BaseEstimator, seed: int) -> BaseEstimator:
    params = {k: seed for k in estimator.get_params(deep=True) if k == "random_state" or k.endswith("__random_state")}
    if params:
        estimator.set_params(**params)
    return estimator


class SingleClass:
    """A shard whose rows all carry one class predicts that class with probability 1."""

    def __init__(self, class_index: int):
        self.class_index = int(class_index)
        self.classes_ = np.array([self.class_index])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.ones((X.shape[0], 1))


def fit_shard(
    estimator: BaseEstimator,
    X: np.ndarray,
    y_index: np.ndarray,
    *,
    n_classes: int | None,
    seed: int,
    slice_ids: np.ndarray | None = None,
    n_slices: int = 1,
    start_slice: int = 0,
    checkpoint: Any = None,
) -> tuple[Any, list[Any]]:
    """Train one shard's constituent on ``(X, y_index)`` (class indices; a regression's targets when
    ``n_classes`` is None), rows in the given order.

    With ``n_slices > 1`` the estimator must support ``partial_fit``; slice ``r`` is learnt after
    slices ``0..r-1`` and a checkpoint is kept after each, so unlearning restarts at the first
    affected slice from ``checkpoint`` (the state after ``start_slice - 1``).
    Returns ``(constituent or None for no rows, checkpoints from start_slice on)``.
    """
    if X.shape[0] == 0:
        return None, []
    if n_slices == 1:
        if n_classes is not None:
            present = np.unique(y_index)
            if present.size == 1:
                return SingleClass(int(present[0])), []
        model = _set_seed(clone(estimator), seed)
        model.fit(X, y_index)
        return model, []
    model = copy.deepcopy(checkpoint) if checkpoint is not None else _set_seed(clone(estimator), seed)
    checkpoints = []
    extra = {} if n_classes is None else {"classes": np.arange(n_classes)}
    for r in range(start_slice, n_slices):
        rows = slice_ids == r
        if rows.any():
            model.partial_fit(X[rows], y_index[rows], **extra)
        checkpoints.append(copy.deepcopy(model) if _fitted(model) else None)
    if not _fitted(model):
        return None, checkpoints
    return model, checkpoints


def _fitted(model: Any) -> bool:
    return hasattr(model, "classes_") or hasattr(model, "coef_") or hasattr(model, "n_features_in_")


def _proba_full(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """A constituent's class probabilities, placed in the columns of the ensemble's classes.

    A classifier without ``predict_proba`` (``LinearSVC``) gives its predicted class probability 1."""
    model = folded(model)  # a scaler before a linear model folded into it: no copy of X per constituent
    full = np.zeros((X.shape[0], n_classes))
    classes = np.asarray(model.classes_, dtype=np.int64)
    if hasattr(model, "predict_proba"):
        full[:, classes] = model.predict_proba(X)
    else:
        full[np.arange(X.shape[0]), np.asarray(model.predict(X), dtype=np.int64)] = 1.0
    return full


def aggregate_proba(constituents: Sequence[Any], X: np.ndarray, n_classes: int, aggregation: str) -> np.ndarray:
    """SISA aggregation of the non-empty shards: mean of probabilities, or share of votes."""
    models = [m for m in constituents if m is not None]
    if not models:
        raise ValueError("every shard is empty: there is no model to aggregate")
    total = np.zeros((X.shape[0], n_classes))
    for m in models:
        p = _proba_full(m, X, n_classes)
        if aggregation == "vote":
            total[np.arange(X.shape[0]), p.argmax(axis=1)] += 1.0
        else:
            total += p
    return total / len(models)


def aggregate_predict(constituents: Sequence[Any], X: np.ndarray) -> np.ndarray:
    """SISA aggregation of regressors: the mean prediction of the non-empty shards."""
    models = [m for m in constituents if m is not None]
    if not models:
        raise ValueError("every shard is empty: there is no model to aggregate")
    return np.mean([np.asarray(folded(m).predict(X), dtype="float64") for m in models], axis=0)


class _SISA(BaseEstimator):
    """What the classifier and the regressor share: sharding, seeding, slicing, unlearning."""

    def __init__(self, estimator=None, *, n_shards=4, n_slices=1, random_state=None, hash_groups=True, pepper=""):
        self.estimator = estimator
        self.n_shards = n_shards
        self.n_slices = n_slices
        self.random_state = random_state
        self.hash_groups = hash_groups
        self.pepper = pepper

    def _validate_params_(self) -> BaseEstimator:
        for name in ("n_shards", "n_slices"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        base = self._default_estimator() if self.estimator is None else self.estimator
        if self.n_slices > 1 and not hasattr(base, "partial_fit"):
            raise ValueError(f"n_slices > 1 needs an estimator with partial_fit; {type(base).__name__} has none")
        return base

    def fit(self, X, y, groups=None):
        """Fit one constituent per shard. ``groups`` labels rows by data subject (default: each row)."""
        base = self._validate_params_()
        X, y = validate_data(self, X, y, y_numeric=isinstance(self, RegressorMixin))
        self._check_targets(y)
        groups = np.arange(X.shape[0]) if groups is None else np.asarray(groups)
        if groups.shape[0] != X.shape[0]:
            raise ValueError(f"groups has {groups.shape[0]} entries but X has {X.shape[0]} rows")
        keys = group_keys(groups, hash_groups=self.hash_groups, pepper=self.pepper)
        if isinstance(self.random_state, Integral):
            self.shard_seeds_ = np.array([shard_seed(self.random_state, s) for s in range(self.n_shards)])
        else:
            rng = check_random_state(self.random_state)
            self.shard_seeds_ = rng.randint(0, 2**31 - 1, size=self.n_shards)
        self._base_ = base
        self._data_ = (X, y, keys)
        self._fit_all()
        return self

    def _fit_all(self) -> None:
        _X, y, keys = self._data_
        self._y_index_ = self._encode(y)
        shards, slices = _shards_and_slices(keys, self.n_shards, self.n_slices)
        self._shard_of_row_, self._slice_of_row_ = shards, slices
        self.estimators_, self.shard_groups_, self.checkpoints_ = [], [], []
        for s in range(self.n_shards):
            model, checkpoints = self._fit_one(s)
            self.estimators_.append(model)
            self.checkpoints_.append(checkpoints)
            self.shard_groups_.append(np.unique(keys[shards == s]))

    def _fit_one(self, shard: int, start_slice: int = 0, checkpoint: Any = None) -> tuple[Any, list[Any]]:
        X, _, _ = self._data_
        rows = self._shard_of_row_ == shard
        return fit_shard(
            self._base_,
            X[rows],
            self._y_index_[rows],
            n_classes=self._n_classes_of,
            seed=int(self.shard_seeds_[shard]),
            slice_ids=self._slice_of_row_[rows],
            n_slices=self.n_slices,
            start_slice=start_slice,
            checkpoint=checkpoint,
        )

    def unlearn(self, groups) -> list[int]:
        """Forget every row of ``groups``; refit only the shards (and slices) that held them.

        Returns the shards that were refit. If a class leaves the data entirely, the class
        encoding changes and every shard is refit, as a fresh fit would.
        """
        check_is_fitted(self)
        forget = set(group_keys(np.asarray(groups), hash_groups=self.hash_groups, pepper=self.pepper).tolist())
        X, y, keys = self._data_
        drop = np.fromiter((k in forget for k in keys), dtype=bool, count=len(keys))
        if not drop.any():
            return []
        touched = np.unique(self._shard_of_row_[drop])
        first_slice = {int(s): int(self._slice_of_row_[drop & (self._shard_of_row_ == s)].min()) for s in touched}
        keep = ~drop
        if keep.sum() == 0:
            raise ValueError("unlearning these groups would leave no training rows")
        self._data_ = (X[keep], y[keep], keys[keep])
        if self._encoding_changes(y[keep]):
            self._fit_all()
            return list(range(self.n_shards))
        self._y_index_ = self._y_index_[keep]
        self._shard_of_row_ = self._shard_of_row_[keep]
        self._slice_of_row_ = self._slice_of_row_[keep]
        for s in touched.tolist():
            r0 = first_slice[s] if self.n_slices > 1 else 0
            checkpoint = self.checkpoints_[s][r0 - 1] if r0 > 0 else None
            model, checkpoints = self._fit_one(s, start_slice=r0, checkpoint=checkpoint)
            self.estimators_[s] = model
            self.checkpoints_[s] = self.checkpoints_[s][:r0] + checkpoints
            self.shard_groups_[s] = np.unique(self._data_[2][self._shard_of_row_ == s])
        return [int(s) for s in touched]

    @classmethod
    def _assemble(cls, constituents: Sequence[Any], n_features: int, params: dict):
        est = cls(**params)
        est.estimators_ = list(constituents)
        est.n_features_in_ = n_features
        est.shard_groups_ = [np.array([], dtype=object) for _ in constituents]
        est.shard_seeds_ = np.array(
            [shard_seed(params["random_state"], s) if isinstance(params.get("random_state"), Integral) else -1 for s in range(len(constituents))]
        )
        return est

    def __getstate__(self):
        # Training rows are kept to unlearn without re-reading the data, but a pickled model
        # should not carry personal data: drop them; an unpickled model can predict, not unlearn.
        state = super().__getstate__()
        state.pop("_data_", None)
        state.pop("_y_index_", None)
        state.pop("_shard_of_row_", None)
        state.pop("_slice_of_row_", None)
        return state


class SISAClassifier(ClassifierMixin, _SISA):
    """A sharded, isolated, sliced and aggregated ensemble that can forget groups exactly.

    Parameters
    ----------
    estimator : estimator, default=None
        Cloned once per shard. ``None`` means ``DecisionTreeClassifier()``.
    n_shards : int, default=4
    n_slices : int, default=1
        Slices per shard, each followed by a checkpoint; >1 needs an estimator with
        ``partial_fit``.
    aggregation : {"mean_proba", "vote"}, default="mean_proba"
    random_state : int, RandomState instance or None
        An int makes fits reproducible and unlearning exact against a fresh fit.
    hash_groups : bool, default=True
        Hash group labels with HMAC-SHA256 under ``pepper``; ``False`` when the groups are
        already keyed hashes (the pipeline's ``subject_key``).
    pepper : str, default=""

    Attributes
    ----------
    estimators_ : list of length n_shards; ``None`` for a shard without rows.
    classes_ : ndarray of shape (n_classes,)
    shard_groups_ : list of ndarray; the group keys each shard holds.
    shard_seeds_ : ndarray of shape (n_shards,)
    n_features_in_ : int
    """

    def __init__(
        self,
        estimator=None,
        *,
        n_shards=4,
        n_slices=1,
        aggregation="mean_proba",
        random_state=None,
        hash_groups=True,
        pepper="",
    ):
        super().__init__(estimator, n_shards=n_shards, n_slices=n_slices, random_state=random_state, hash_groups=hash_groups,
                         pepper=pepper)
        self.aggregation = aggregation

    def _default_estimator(self) -> BaseEstimator:
        return DecisionTreeClassifier()

    def _validate_params_(self) -> BaseEstimator:
        if self.aggregation not in ("mean_proba", "vote"):
            raise ValueError(f"aggregation must be 'mean_proba' or 'vote', got {self.aggregation!r}")
        return super()._validate_params_()

    @property
    def _n_classes_of(self) -> int:
        return len(self.classes_)

    def _check_targets(self, y) -> None:
        check_classification_targets(y)
        self.classes_ = np.unique(y)

    def _encode(self, y) -> np.ndarray:
        self.classes_, y_index = np.unique(y, return_inverse=True)
        return y_index

    def _encoding_changes(self, y_keep) -> bool:
        return not np.array_equal(np.unique(y_keep), self.classes_)

    @classmethod
    def from_constituents(cls, constituents: Sequence[Any], classes: np.ndarray, n_features: int, **params):
        """An ensemble from shard models trained elsewhere (the pipeline's ``shard_models``)."""
        est = cls._assemble(constituents, n_features, params)
        est.classes_ = np.asarray(classes)
        return est

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return aggregate_proba(self.estimators_, X, len(self.classes_), self.aggregation)

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class SISARegressor(RegressorMixin, _SISA):
    """The regression counterpart of :class:`SISAClassifier`: the ensemble predicts the mean of its
    shards' predictions. Same parameters, without ``aggregation``; ``estimator=None`` means
    ``DecisionTreeRegressor()``."""

    _n_classes_of = None

    def _default_estimator(self) -> BaseEstimator:
        return DecisionTreeRegressor()

    def _check_targets(self, y) -> None:
        pass

    def _encode(self, y) -> np.ndarray:
        return np.asarray(y, dtype="float64")

    def _encoding_changes(self, y_keep) -> bool:
        return False

    @classmethod
    def from_constituents(cls, constituents: Sequence[Any], n_features: int, **params):
        """An ensemble from shard regressors trained elsewhere (the pipeline's ``shard_models``)."""
        return cls._assemble(constituents, n_features, params)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return aggregate_predict(self.estimators_, X)

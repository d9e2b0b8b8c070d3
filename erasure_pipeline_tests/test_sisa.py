"""SISAClassifier: scikit-learn's estimator checks and exact unlearning, property-tested."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from erasure_pipeline.ml.sisa import SISAClassifier, SISARegressor, group_keys

ESTIMATORS = {
    "logreg": lambda: LogisticRegression(max_iter=500),
    "sgd": lambda: SGDClassifier(loss="log_loss", max_iter=50, tol=None),
    "forest": lambda: RandomForestClassifier(n_estimators=8),
    "hgb": lambda: HistGradientBoostingClassifier(max_iter=15),
}


@parametrize_with_checks([SISAClassifier(), SISAClassifier(n_shards=2, aggregation="vote", random_state=0),
                          SISARegressor(), SISARegressor(n_shards=2, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _data(seed, n_groups, n_classes=2):
    rng = np.random.default_rng(seed)
    rows_per_group = rng.integers(1, 5, n_groups)
    groups = np.repeat(np.arange(n_groups), rows_per_group)
    X = rng.normal(size=(len(groups), 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=len(groups)) > 0).astype(int)
    if n_classes == 3:
        y = y + (X[:, 1] > 1)
    return X, y, groups


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(ESTIMATORS)),
    n_shards=st.sampled_from([1, 3, 8]),
    seed=st.integers(0, 10_000),
    n_forget=st.integers(1, 12),
    aggregation=st.sampled_from(["mean_proba", "vote"]),
)
def test_unlearn_equals_fresh_fit_without_the_groups(name, n_shards, seed, n_forget, aggregation):
    X, y, groups = _data(seed, n_groups=60)
    rng = np.random.default_rng(seed + 1)
    forget = rng.choice(np.unique(groups), size=n_forget, replace=False)
    params = {"estimator": ESTIMATORS[name](), "n_shards": n_shards, "aggregation": aggregation, "random_state": seed}
    model = SISAClassifier(**params).fit(X, y, groups=groups)
    refit = model.unlearn(forget)
    keep = ~np.isin(groups, forget)
    fresh = SISAClassifier(**params).fit(X[keep], y[keep], groups=groups[keep])
    probe = np.random.default_rng(seed + 2).normal(size=(50, 4))
    np.testing.assert_array_equal(model.predict_proba(probe), fresh.predict_proba(probe))
    np.testing.assert_array_equal(model.predict_proba(X), fresh.predict_proba(X))
    # only the shards holding the forgotten groups were refit
    shards_of = {int(k[:8], 16) % n_shards for k in group_keys(forget)}
    assert set(refit) == shards_of or set(refit) == set(range(n_shards))  # all only if a class vanished
    assert all(k not in set(np.concatenate(model.shard_groups_)) for k in group_keys(forget))


def test_groups_spanning_several_shards_refit_only_those():
    X, y, groups = _data(5, n_groups=200)
    model = SISAClassifier(LogisticRegression(), n_shards=8, random_state=1).fit(X, y, groups=groups)
    forget = [3, 77, 150]
    expected = sorted({int(k[:8], 16) % 8 for k in group_keys(forget)})
    assert len(expected) > 1
    assert model.unlearn(forget) == expected
    assert model.unlearn(forget) == []  # nothing left to forget


def test_sliced_sgd_restarts_from_checkpoint_and_stays_exact():
    X, y, groups = _data(9, n_groups=300)
    params = {"estimator": SGDClassifier(loss="log_loss"), "n_shards": 3, "n_slices": 4, "random_state": 4}
    model = SISAClassifier(**params).fit(X, y, groups=groups)
    forget = [10, 11, 250]
    model.unlearn(forget)
    keep = ~np.isin(groups, forget)
    fresh = SISAClassifier(**params).fit(X[keep], y[keep], groups=groups[keep])
    np.testing.assert_array_equal(model.predict_proba(X), fresh.predict_proba(X))
    with pytest.raises(ValueError, match="partial_fit"):
        SISAClassifier(LogisticRegression(), n_slices=2).fit(X, y)


def test_empty_shard_and_single_class_shard_and_vanishing_class():
    X, y, groups = _data(2, n_groups=40, n_classes=3)
    model = SISAClassifier(LogisticRegression(), n_shards=64, random_state=0).fit(X, y, groups=groups)
    assert any(e is None for e in model.estimators_)  # empty shards
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(axis=1), 1)
    # forget every group of class 2: the class leaves the data, so every shard is refit
    vanish = np.unique(groups[y == 2])
    refit = model.unlearn(vanish)
    keep = ~np.isin(groups, vanish)
    fresh = SISAClassifier(LogisticRegression(), n_shards=64, random_state=0).fit(X[keep], y[keep], groups=groups[keep])
    assert refit == list(range(64))
    np.testing.assert_array_equal(model.classes_, fresh.classes_)
    np.testing.assert_array_equal(model.predict_proba(X), fresh.predict_proba(X))


def test_pickled_model_keeps_no_training_rows():
    import pickle

    X, y, groups = _data(1, n_groups=30)
    model = SISAClassifier(LogisticRegression(), n_shards=2, random_state=0).fit(X, y, groups=groups)
    clone = pickle.loads(pickle.dumps(model))
    assert not hasattr(clone, "_data_")
    np.testing.assert_array_equal(clone.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("estimator", [None, "ridge", "sgd"])
def test_regressor_unlearn_equals_fresh_fit_without_the_groups(estimator):
    from sklearn.linear_model import Ridge, SGDRegressor

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.1, size=300)
    groups = rng.integers(0, 60, 300)
    base = {None: None, "ridge": Ridge(), "sgd": SGDRegressor(max_iter=20, tol=None)}[estimator]
    n_slices = 3 if estimator == "sgd" else 1
    model = SISARegressor(base, n_shards=3, n_slices=n_slices, random_state=7).fit(X, y, groups)
    forget = [4, 17, 33]
    refit = model.unlearn(forget)
    keep = ~np.isin(groups, forget)
    fresh = SISARegressor(base, n_shards=3, n_slices=n_slices, random_state=7).fit(X[keep], y[keep], groups[keep])
    assert 0 < len(refit) <= 3
    np.testing.assert_array_equal(model.predict(X), fresh.predict(X))

"""A scaler folded into the linear model after it: the same predictions to rounding, through the ensemble too."""

import pickle

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVC, LinearSVC

from erasure_pipeline.ml.folding import MAX_CENTRE_RATIO, folded
from erasure_pipeline.ml.sisa import SISAClassifier, aggregate_proba


def _data(n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 6)) * rng.uniform(0.1, 40, 6) + rng.uniform(-500, 500, 6)  # far from unit scale
    z = (X - X.mean(axis=0)) / X.std(axis=0)
    y = (z[:, 0] + z[:, 1] + rng.normal(size=len(X)) > 0).astype(int)
    if n_classes == 3:
        y += z[:, 2] > 0.8
    return X, y


class _TheirLogistic(LogisticRegression):
    """A declared estimator of a user's own (a subclass may predict from coef_ as it likes)."""


CLASSIFIERS = {
    "logistic_regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    "sgd": lambda: make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0)),
    "no_mean": lambda: make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=1000)),
    "no_std": lambda: make_pipeline(StandardScaler(with_std=False), LogisticRegression(max_iter=1000)),
    "linear_svc": lambda: make_pipeline(StandardScaler(), LinearSVC(random_state=0)),
}


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_folded_classifier_predicts_what_the_pipeline_predicts(name, n_classes):
    X, y = _data(n_classes)
    model = CLASSIFIERS[name]().fit(X, y)
    before = pickle.dumps(model)
    fold = folded(model)
    assert fold is not model and not hasattr(fold, "steps")
    if hasattr(model, "predict_proba"):
        np.testing.assert_allclose(fold.predict_proba(X), model.predict_proba(X), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fold.decision_function(X), model.decision_function(X), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(fold.predict(X), model.predict(X))
    np.testing.assert_array_equal(fold.classes_, model.classes_)
    assert pickle.dumps(model) == before  # the stored model is untouched


def test_folded_regressor_predicts_what_the_pipeline_predicts():
    X, _ = _data(2)
    y = X @ np.array([0.3, -1.0, 2.0, 0.0, 0.5, 1.5]) + 7
    model = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    np.testing.assert_allclose(folded(model).predict(X), model.predict(X), rtol=1e-12, atol=1e-9)


def test_what_does_not_fold_is_left_as_it_is():
    X, y = _data(2)
    forest = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
    minmax = make_pipeline(MinMaxScaler(), LogisticRegression()).fit(X, y)
    three = make_pipeline(StandardScaler(), StandardScaler(), LogisticRegression()).fit(X, y)
    unfitted = make_pipeline(StandardScaler(), LogisticRegression())
    # SVC's coef_ (linear kernel) is derived from its support vectors, which are what predict; a class of someone
    # else's may read coef_ its own way: neither is folded.
    svc = make_pipeline(StandardScaler(), SVC(kernel="linear")).fit(X[:300], y[:300])
    theirs = make_pipeline(StandardScaler(), _TheirLogistic(max_iter=1000)).fit(X, y)
    for model in (forest, minmax, three, unfitted, svc, theirs, None):
        assert folded(model) is model
    # A feature far from zero with a small spread: folding would lose digits there, so the scaler stays.
    far = X.copy()
    far[:, 0] = 1e9 + far[:, 0] * 1e-3
    centred = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(far, y)
    assert np.abs(centred[0].mean_ / centred[0].scale_).max() > MAX_CENTRE_RATIO
    assert folded(centred) is centred


def test_the_ensemble_evaluates_folded_constituents_to_the_same_numbers():
    X, y = _data(3)
    groups = np.arange(len(X)) % 97
    model = SISAClassifier(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), n_shards=4, random_state=0)
    model.fit(X, y, groups=groups)
    by_pipeline = np.mean([m.predict_proba(X) for m in model.estimators_], axis=0)
    np.testing.assert_allclose(model.predict_proba(X), by_pipeline, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(aggregate_proba(model.estimators_, X, 3, "mean_proba"), model.predict_proba(X))

"""Membership-inference audit: the attack finds members of an overfit model, and after an exact
SISA unlearn the forgotten subjects look like never-seen ones."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.ensemble import RandomForestClassifier

from erasure_pipeline.ml.audit import auc_interval, audit, audit_rows, membership_scores, tpr_at_fpr
from erasure_pipeline.ml.sisa import SISAClassifier


def test_tpr_at_fpr_and_interval():
    y = np.r_[np.ones(4), np.zeros(4)]
    assert tpr_at_fpr(y, np.array([9, 8, 7, 6, 1, 2, 3, 4]), 0.0) == 1.0
    assert tpr_at_fpr(y, np.array([1, 2, 3, 9, 5, 6, 7, 8]), 0.0) == 0.25
    low, high = auc_interval(100, 100)
    assert 0.4 < low < 0.5 < high < 0.6
    with pytest.raises(ValueError, match="at least one target"):
        audit(np.array([]), np.array([1.0]))


def _noisy_data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = ((X[:, 0] + rng.normal(scale=2.0, size=n)) > 0).astype(int)  # mostly noise: an RF memorises it
    return X, y


def test_attack_detects_members_and_not_unlearned_subjects():
    X, y = _noisy_data(1600, 1)
    groups = np.arange(1600)
    train, ref = slice(0, 1200), slice(1200, 1600)
    model = SISAClassifier(RandomForestClassifier(n_estimators=30, random_state=0), n_shards=2, random_state=3, aggregation="mean_proba")
    model.fit(X[train], y[train], groups=groups[train])
    ref_scores = membership_scores(model, X[ref], y[ref])
    forget = groups[:400]
    before = audit(membership_scores(model, X[forget], y[forget]), ref_scores)
    assert before.auc_low > 0.6  # members are plainly visible (significantly above chance)
    model.unlearn(forget)
    after = audit(membership_scores(model, X[forget], y[forget]), ref_scores)
    assert after.auc_low - 0.02 < 0.5 < after.auc_high + 0.02 and after.auc < 0.6  # indistinguishable from never-seen


def test_audit_rows_groups_rows_per_subject():
    X, y = _noisy_data(60, 2)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)]).assign(label=y, subject_key=[f"k{i // 3}" for i in range(60)])
    res = audit_rows(model, [f"f{i}" for i in range(6)], frame[:30], frame[30:])
    assert (res.targets, res.references) == (10, 10)


def test_audit_cli_on_the_demo(demo_home):
    from erasure_pipeline.app.cli import main

    out = CliRunner().invoke(main, ["audit", "--sample", "50"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "loss-threshold" in out.output and "| 50 |" in out.output

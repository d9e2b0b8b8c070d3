"""Membership-inference audit: how distinguishable a set of subjects is from never-seen subjects.

The attack (stated, so results can be compared): **loss-threshold membership inference**
(Yeom et al., "Privacy Risk in Machine Learning", CSF 2018), black-box. The attacker scores
each row by the model's log-probability of its true label, ``log p(y | x)`` (a regression: minus
its squared error); training members tend to score higher. Sweeping the threshold over those scores gives the attack's ROC curve
between *targets* (the subjects under audit) and *references* (subjects the model never saw:
the key-derived holdout). Reported: ROC-AUC (0.5 = indistinguishable) and TPR at 0.1 % and 1 %
FPR (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022, argue for
the low-FPR regime). Per subject, rows are averaged, so a subject counts once.

After an exact SISA erasure the ensemble is, bit for bit, one that never saw the erased
subjects, so their AUC should sit at 0.5 up to sampling noise; ``auc_interval`` gives that noise.

No Dagster import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

ATTACK = ("loss-threshold membership inference (Yeom et al. 2018): score = log p(true label | x) "
          "(regression: -squared error), per subject mean")


@dataclass(frozen=True)
class AuditResult:
    attack: str
    targets: int
    references: int
    auc: float
    auc_low: float
    auc_high: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float

    def as_dict(self) -> dict:
        return asdict(self)


def membership_scores(model, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """``log p(y | x)`` (a regressor: ``-(y - f(x))²``) per row, or per group (mean over its rows) when
    ``groups`` is given."""
    if not hasattr(model, "predict_proba"):
        scores = -np.square(np.asarray(y, dtype="float64") - model.predict(X))
    else:
        proba = model.predict_proba(X)
        classes = list(model.classes_)
        idx = np.array([classes.index(v) if v in classes else -1 for v in y])
        p = np.where(idx >= 0, proba[np.arange(len(y)), np.clip(idx, 0, None)], 0.0)
        scores = np.log(np.clip(p, 1e-12, 1.0))
    if groups is None:
        return scores
    return pd.Series(scores).groupby(np.asarray(groups), sort=True).mean().to_numpy()


def tpr_at_fpr(y_true: np.ndarray, scores: np.ndarray, fpr_target: float) -> float:
    """The best true-positive rate the attack reaches with false-positive rate <= ``fpr_target``."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


def auc_interval(n_targets: int, n_references: int, auc: float = 0.5) -> tuple[float, float]:
    """A 95 % interval for the AUC (Hanley & McNeil 1982 standard error)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_targets - 1) * (q1 - auc * auc) + (n_references - 1) * (q2 - auc * auc)) / max(n_targets * n_references, 1)
    se = float(np.sqrt(max(var, 0.0)))
    return max(0.0, auc - 1.96 * se), min(1.0, auc + 1.96 * se)


def audit(target_scores: np.ndarray, reference_scores: np.ndarray) -> AuditResult:
    """The attack's ROC between targets (label 1) and never-seen references (label 0)."""
    t, r = np.asarray(target_scores, float), np.asarray(reference_scores, float)
    if len(t) == 0 or len(r) == 0:
        raise ValueError("an audit needs at least one target and one reference subject")
    y = np.r_[np.ones(len(t)), np.zeros(len(r))]
    s = np.r_[t, r]
    auc = float(roc_auc_score(y, s))
    low, high = auc_interval(len(t), len(r), auc)
    return AuditResult(ATTACK, len(t), len(r), auc, low, high, tpr_at_fpr(y, s, 0.001), tpr_at_fpr(y, s, 0.01))


def audit_rows(model, feature_names: list[str], targets: pd.DataFrame, references: pd.DataFrame,
               *, key: str = "subject_key", label: str = "label") -> AuditResult:
    """Audit ``model`` on training-row frames (as ``training_shards`` stores them): one score per subject."""
    def scores(rows: pd.DataFrame) -> np.ndarray:
        return membership_scores(model, rows[feature_names].to_numpy(dtype="float64"), rows[label].to_numpy(), rows[key].to_numpy())

    return audit(scores(targets), scores(references))

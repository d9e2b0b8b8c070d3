"""SISA ensemble vs one monolithic model: accuracy, and the cost of forgetting one subject.

    python -m benchmarks.sisa_accuracy

Data sets shipped inside scikit-learn (no download at run time), both licensed CC BY 4.0 by the
UCI Machine Learning Repository:
- ``load_digits``: Optical Recognition of Handwritten Digits, 1,797 rows x 64 features, 10 classes;
- ``load_breast_cancer``: Breast Cancer Wisconsin (Diagnostic), 569 rows x 30 features, 2 classes.
Every row is its own subject (group). Five stratified 80/20 splits; mean and standard deviation.
Estimator: StandardScaler + LogisticRegression (the pipeline's default estimator family);
aggregation ``mean_proba`` (the pipeline's default) and ``vote``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks._common import machine, table
from erasure_pipeline.ml.sisa import SISAClassifier

DATASETS = {"digits": load_digits, "breast_cancer": load_breast_cancer}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--splits", type=int, default=5)
    args = ap.parse_args(argv)
    base = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    print(f"Machine: {machine()}\n")
    for name, loader in DATASETS.items():
        X, y = loader(return_X_y=True)
        groups = np.arange(len(y))
        splitter = StratifiedShuffleSplit(n_splits=args.splits, test_size=0.2, random_state=0)
        mono, mono_fit = [], []
        res: dict[tuple[int, str], list[float]] = {}
        fit_t: dict[int, list[float]] = {}
        unlearn_t: dict[int, list[float]] = {}
        for train, test in splitter.split(X, y):
            t0 = time.perf_counter()
            m = clone(base).fit(X[train], y[train])
            mono_fit.append(time.perf_counter() - t0)
            mono.append(float((m.predict(X[test]) == y[test]).mean()))
            for s in args.shards:
                for agg in ("mean_proba", "vote"):
                    t0 = time.perf_counter()
                    model = SISAClassifier(clone(base), n_shards=s, aggregation=agg, random_state=1).fit(X[train], y[train], groups=groups[train])
                    if agg == "mean_proba":
                        fit_t.setdefault(s, []).append(time.perf_counter() - t0)
                    res.setdefault((s, agg), []).append(float((model.predict(X[test]) == y[test]).mean()))
                    if agg == "mean_proba":
                        t0 = time.perf_counter()
                        model.unlearn(groups[train][:1])
                        unlearn_t.setdefault(s, []).append(time.perf_counter() - t0)
        mono_acc = np.mean(mono)
        rows = [["monolithic", f"{100 * mono_acc:.2f} ± {100 * np.std(mono):.2f}", "", "0.00", f"{1000 * np.mean(mono_fit):.0f}", ""]]
        for s in args.shards:
            a, v = np.array(res[(s, "mean_proba")]), np.array(res[(s, "vote")])
            rows.append([
                f"SISA S={s}", f"{100 * a.mean():.2f} ± {100 * a.std():.2f}", f"{100 * v.mean():.2f} ± {100 * v.std():.2f}",
                f"{100 * (a.mean() - mono_acc):+.2f}", f"{1000 * np.mean(fit_t[s]):.0f}", f"{1000 * np.mean(unlearn_t[s]):.0f}",
            ])
        X_shape = f"{len(y):,} rows x {X.shape[1]} features, {len(np.unique(y))} classes"
        print(f"### {name} ({X_shape}; {len(train):,} training rows per split)\n")
        print(table(
            ["model", "accuracy % (mean_proba)", "accuracy % (vote)", "Δ vs monolithic (points, mean_proba)", "fit (ms)", "forget 1 subject (ms)"],
            rows,
        ))
        print()


if __name__ == "__main__":
    main()

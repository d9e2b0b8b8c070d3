"""Membership-inference audit of erased subjects, before and after erasure through the pipeline.

    python -m benchmarks.membership_audit --subjects 4000 --targets 200

For each estimator: build the demo (S = 16), keep in memory the training rows of ``--targets``
member subjects (the benchmark's own copy, dropped at exit), audit the ensemble on them against
the never-seen holdout subjects, erase them all (``erase`` + ``drain``: one run per tick),
and audit the new ensemble on the same rows. Attack: loss-threshold membership inference
(Yeom et al. 2018), see erasure_pipeline/ml/audit.py. A control row audits members that stayed.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from benchmarks._common import PEPPER, lake, landing, machine, project_home, table
from erasure_pipeline.app.demo import DEMO_POLICY

REPO = Path(__file__).resolve().parents[1]
ESTIMATORS = {
    "logistic_regression": "{C: 1.0}",
    "random_forest": "{n_estimators: 100, min_samples_leaf: 1}",
}


def _policy(estimator: str) -> str:
    text = DEMO_POLICY.read_text()
    text = re.sub(r"estimator: \w+", f"estimator: {estimator}", text)
    return re.sub(r"params: \{[^}]*\}", f"params: {ESTIMATORS[estimator]}", text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=4000)
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    args = ap.parse_args(argv)
    rows = []
    for estimator in args.estimators:
        with project_home(_policy(estimator)):
            import dagster as dg

            from erasure_pipeline.app import demo
            from erasure_pipeline.app.cli.common import quiet_dagster as _quiet_dagster
            from erasure_pipeline.app.process import drain
            from erasure_pipeline.app.runner import materialize_all
            from erasure_pipeline.core import identity
            from erasure_pipeline.core.contracts import contracts_for
            from erasure_pipeline.core.policy import load_policy
            from erasure_pipeline.defs.pipeline import build_definitions
            from erasure_pipeline.erasure.intake import erase
            from erasure_pipeline.ml import features as ft
            from erasure_pipeline.ml.audit import audit_rows
            from erasure_pipeline.stores import lake as lk
            from erasure_pipeline.stores.landing import read_landing_table

            _quiet_dagster()
            policy = load_policy()
            demo.write_landing(landing(), demo.generate(args.subjects, 11))
            # read before the build: it removes the landing files it took (the demo declares landing.keep_days: 0)
            subjects = read_landing_table(landing(), contracts_for(policy)["subjects"], policy.keyer(PEPPER.encode()))
            defs = build_definitions(policy)
            instance = dg.DagsterInstance.get()
            assert materialize_all(defs, instance).success
            store = lake()

            def current(store=store, policy=policy):
                saved = lk.loads_model(store.read_bytes(lk.model_name("ensemble_model")))
                frame = pd.concat([lk.require_table(store, "training_shards", p) for p in identity.partition_keys(policy.shards)])
                return saved, frame

            saved, frame = current()
            members = frame[~frame[ft.HOLDOUT].astype(bool)]
            holdout = frame[frame[ft.HOLDOUT].astype(bool)]
            keys = members[ft.KEY].drop_duplicates().sample(n=2 * args.targets, random_state=0)
            target_keys, control_keys = set(keys[: args.targets]), set(keys[args.targets :])
            targets, control = members[members[ft.KEY].isin(target_keys)], members[members[ft.KEY].isin(control_keys)]
            before = audit_rows(saved["model"], saved["features"], targets, holdout)
            before_ctl = audit_rows(saved["model"], saved["features"], control, holdout)

            for sid in subjects.loc[subjects["subject_key"].isin(target_keys), "subject_id"]:
                erase(sid, reason="benchmark")
            result = drain(defs, instance)
            assert not result.failed_runs
            saved, frame = current()
            assert not frame[ft.KEY].isin(target_keys).any()
            after = audit_rows(saved["model"], saved["features"], targets, holdout)
            after_ctl = audit_rows(saved["model"], saved["features"], control, holdout)
            for label, a, b in (("erased subjects", before, after), ("control: members kept", before_ctl, after_ctl)):
                rows.append([estimator, label, a.targets, a.references,
                             f"{a.auc:.3f} ({a.auc_low:.2f}-{a.auc_high:.2f})", f"{b.auc:.3f} ({b.auc_low:.2f}-{b.auc_high:.2f})",
                             f"{a.tpr_at_1pct_fpr:.3f} → {b.tpr_at_1pct_fpr:.3f}", f"{a.tpr_at_0_1pct_fpr:.3f} → {b.tpr_at_0_1pct_fpr:.3f}"])
            print(f"{estimator}: {len(result.runs)} erasure runs", flush=True)
    print(f"\nMachine: {machine()}")
    print(f"Demo: {args.subjects:,} subjects, S = 16; attack: {before.attack}\n")
    print(table(
        ["estimator", "audited set", "targets", "never-seen references", "ROC-AUC before (95 %)", "ROC-AUC after (95 %)",
         "TPR @ 1 % FPR before → after", "TPR @ 0.1 % FPR before → after"],
        rows,
    ))


if __name__ == "__main__":
    main()

"""Cohorts: per-shard invertible partials, the k-anonymous published table, a cohort-only model.

The maths (partials, merge, suppression, keyed noise) is ``ml.cohorts``; these kinds store, record and
prove it.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

from erasure_pipeline.core import identity
from erasure_pipeline.core.errors import PipelineError
from erasure_pipeline.core.graph import CheckSpec, Node
from erasure_pipeline.core.identity import NO_SUBJECT
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds import raw
from erasure_pipeline.kinds.base import (
    CheckOutcome,
    Env,
    Finding,
    Kind,
    Markdown,
    NodeResult,
    NodeRun,
    finish,
    input_key,
    md_table,
    purge,
)
from erasure_pipeline.ml import cohorts as cm
from erasure_pipeline.stores import lake as lk

PUBLISHED = "all"
PARTIALS, TABLE, MODEL = "cohort_partials", "anonymised_cohorts", "cohort_model"
NOISE_RISK = ("Published cohort numbers carry Laplace noise drawn afresh when a cell's membership changes, so tables "
              "published before and after this erasure do not reveal the subject's values by subtraction.")


def noise_key(pepper: bytes) -> bytes:
    """Cohort noise is keyed by a secret derived from the pepper: a reader cannot replay it."""
    return hmac.new(pepper, b"erasure_pipeline/cohort-noise", hashlib.sha256).digest()


def read_partials(run: NodeRun) -> tuple[list[pd.DataFrame], dict[str, str]]:
    """Every shard's partial and the content hash of each object as read (the merge's inputs)."""
    parts, inputs = [], {}
    (source,) = run.node.parents
    for p in run.env.partitions:
        data = run.env.lake.read_bytes(lk.table_name(source, p))
        if data is None:
            raise lk.not_materialised(run.env.lake, source, p)
        parts.append(lk.table_from_bytes(data))
        inputs[input_key(source, p)] = lk.content_hash(data)
    return parts, inputs


class CohortPartial(Kind):
    """Per-cohort counts, clipped sums and a membership digest of one shard: invertible, merged in O(S)."""

    name = "cohort_partial"
    action = "COHORT_RECOMPUTE"
    residual_risk = NOISE_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        c = policy.cohorts
        if c is None:
            return []
        return [Node(PARTIALS, self.name, "cohorts", True, (raw.node_name(c.dataset),), ("cohorts",), self.action, kinds=("parquet",),
                     description="Per-cohort counts, clipped sums and a membership digest for one shard: invertible, merged in O(S).")]

    def compute(self, run: NodeRun) -> NodeResult:
        c, store = run.env.policy.cohorts, run.env.lake
        (source,) = run.node.parents
        # the columns the partial reads, so sealed fields it does not need stay sealed (and cost no AES)
        wanted = list(dict.fromkeys(["subject_key", *c.quasi_identifiers, *c.measures, *([c.label] if c.label else [])]))
        subjects = run.env.read_rows(source, run.partition, columns=wanted)
        if subjects is None:
            raise lk.not_materialised(store, source, run.partition)
        subjects = subjects[~subjects["subject_key"].isin(run.env.ledger.tombstones.active(run.shard) | {NO_SUBJECT})]
        repeated = int(subjects["subject_key"].duplicated().sum()) if len(subjects) else 0
        if repeated:
            raise PipelineError(f"{source}[{run.partition}]: {repeated:,} rows repeat a subject; cohorts.dataset needs one row "
                                "per subject (counts are subjects, k_min is about people)")
        partial = cm.compute_partial(subjects, c.quasi_identifiers, c.generalise, c.measures, c.label, c.measure_clip,
                                     positive_class=None if c.positive_class is None else str(c.positive_class),
                                     where=f"{source}[{run.partition}]")
        digest = lk.write_table(store, run.node.name, run.partition, partial)
        finish(run, digest)
        return NodeResult(digest, None, {
            "cells": len(partial), "subjects": int(partial[cm.COUNT].sum()) if len(partial) else 0, "content_hash": digest,
            "noncurrent_versions_purged": purge(run, lk.table_name(run.node.name, run.partition)),
        })


class CohortTable(Kind):
    """The published cohort table: cells of at least k_min subjects, each number with membership-keyed noise."""

    name = "cohort_publish"
    action = "COHORT_RECOMPUTE"
    residual_risk = NOISE_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        if policy.cohorts is None:
            return []
        return [Node(TABLE, self.name, "cohorts", False, (PARTIALS,), ("k_min",), self.action, kinds=("parquet",),
                     checks=(CheckSpec("k_anonymous", "Every published cell holds at least k_min subjects (true counts, from the partials)."),),
                     description=("The published cohort table: cells with at least k_min subjects, every number with Laplace noise "
                                  "keyed to the cell's membership, so tables published before and after an erasure cannot be differenced."))]

    def compute(self, run: NodeRun) -> NodeResult:
        policy, store = run.env.policy, run.env.lake
        c = policy.cohorts
        parts, inputs = read_partials(run)
        merged = cm.merge_partials(parts)
        published = cm.publish(merged, k_min=policy.k_min, measures=c.measures, clip=c.measure_clip, epsilon=c.noise_epsilon,
                               noise_key=noise_key(run.env.pepper))
        digest = lk.write_table(store, run.node.name, PUBLISHED, published, inputs=inputs)
        finish(run, digest)
        suppressed = int((merged[cm.COUNT] < policy.k_min).sum()) if len(merged) else 0
        bad = cm.k_anonymity_violations(published, merged, policy.k_min)
        preview = published.sort_values(cm.COUNT, ascending=False).head(10).drop(columns=[cm.CELL])
        return NodeResult(digest, None, {
            "published_cells": len(published), "suppressed_cells": suppressed, "k_min": policy.k_min, "content_hash": digest,
            "noncurrent_versions_purged": purge(run, lk.table_name(run.node.name, PUBLISHED)),
            "largest_cells": Markdown(md_table(preview.to_dict("records"))),
        }, (CheckOutcome("k_anonymous", not bad, {"cells_below_k": len(bad), "k_min": policy.k_min, "published_cells": len(published)}),))

    def recorded_inputs(self, env: Env, node: Node) -> list[tuple[str, dict | None]]:
        return [(self.object_name(node, None), lk.table_inputs(env.lake, node.name, PUBLISHED))]

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        if node.name not in cache:
            cache[node.name] = self._k_anonymous(env, node)
        return [cache[node.name], *super().prove(env, node, subject_key, partition, cache)]

    @staticmethod
    def _k_anonymous(env: Env, node: Node) -> Finding:
        published = lk.read_table(env.lake, node.name, PUBLISHED)
        parts = [lk.read_table(env.lake, node.parents[0], p) for p in env.partitions]
        if published is None or any(p is None for p in parts):
            return Finding("published cohorts are k-anonymous", node.name, False, "not materialised")
        bad = cm.k_anonymity_violations(published, cm.merge_partials(parts), env.policy.k_min)
        return Finding("published cohorts are k-anonymous", node.name, not bad, f"{len(bad)} cells below k_min={env.policy.k_min}")


class CohortModel(Kind):
    """A label-rate model trained on the published cohort table only: no individual row ever reaches it."""

    name = "cohort_model"
    action = "COHORT_RECOMPUTE"
    residual_risk = NOISE_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        if policy.cohorts is None or not policy.cohorts.label:
            return []
        return [Node(MODEL, self.name, "cohorts", False, (TABLE,), ("seed",), self.action, kinds=("scikitlearn",),
                     description="A label-rate model trained on the published cohort table only: no individual row ever reaches it.")]

    def compute(self, run: NodeRun) -> NodeResult:
        policy, store = run.env.policy, run.env.lake
        (source,) = run.node.parents
        data = store.read_bytes(lk.table_name(source, PUBLISHED))
        if data is None:
            raise lk.not_materialised(store, source, None)
        model, metrics = _fit_cohort_model(lk.table_from_bytes(data), list(policy.cohorts.quasi_identifiers), policy.seed)
        saved = {"model": model, "quasi_identifiers": list(policy.cohorts.quasi_identifiers), "inputs": {source: lk.content_hash(data)}}
        name = lk.model_name(run.node.name)
        store.write_bytes(name, lk.dumps_model(saved))
        digest = lk.model_fingerprint(saved)
        finish(run, digest)
        return NodeResult(digest, None, {
            **metrics, "trained": model is not None, "content_hash": digest, "metrics": Markdown(md_table([metrics])),
            "noncurrent_versions_purged": purge(run, name),
        })

    def object_name(self, node: Node, partition: str | None) -> str:
        return lk.model_name(node.name, partition)

    def stored_version(self, env: Env, node: Node, partition: str | None) -> str | None:
        blob = env.lake.read_bytes(self.object_name(node, partition))
        return None if blob is None else lk.model_fingerprint(lk.loads_model(blob))

    def recorded_inputs(self, env: Env, node: Node) -> list[tuple[str, dict | None]]:
        blob = env.lake.read_bytes(self.object_name(node, None))
        return [(self.object_name(node, None), lk.loads_model(blob).get("inputs") if blob else None)]


def _fit_cohort_model(published: pd.DataFrame, qi: list[str], seed: int):
    """(a weighted logistic regression of the label rate on the cohort cells, or None with one class; its metrics)."""
    # scikit-learn is imported when a cohort model is fitted, not when the kinds load (the CLI's quick paths).
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    records, labels, weights = [], [], []
    for row in published.to_dict("records"):
        feats = {col: str(row[col]) for col in qi}
        positives = row["label_rate"] * row[cm.COUNT]
        for label, weight in ((1, positives), (0, row[cm.COUNT] - positives)):
            if weight > 0:
                records.append(feats)
                labels.append(label)
                weights.append(weight)
    metrics: dict = {"cells": len(published)}
    if len(set(labels)) != 2:
        return None, metrics
    model = make_pipeline(DictVectorizer(), LogisticRegression(max_iter=1000, random_state=identity.derive_seed(seed, "cohort_model")))
    model.fit(records, labels, logisticregression__sample_weight=weights)
    proba = model.predict_proba(records)[:, 1]
    w, y = np.asarray(weights), np.asarray(labels)
    eps = 1e-12
    metrics["weighted_log_loss"] = float(-(w * (y * np.log(proba + eps) + (1 - y) * np.log(1 - proba + eps))).sum() / w.sum())
    return model, metrics

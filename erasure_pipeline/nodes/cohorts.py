"""Cohorts: per-shard invertible partials, the k-anonymous published table, a cohort-only model."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

from erasure_pipeline import identity
from erasure_pipeline.anonymise import cohorts as cm
from erasure_pipeline.errors import PipelineError
from erasure_pipeline.nodes import CheckOutcome, Markdown, NodeResult, NodeRun, finish, input_key, md_table
from erasure_pipeline.storage import lake as lk

PUBLISHED = "all"


def noise_key(pepper: bytes) -> bytes:
    """Cohort noise is keyed by a secret derived from the pepper: a reader cannot replay it."""
    return hmac.new(pepper, b"erasure_pipeline/cohort-noise", hashlib.sha256).digest()


def read_partials(run: NodeRun) -> tuple[list[pd.DataFrame], dict[str, str]]:
    """Every shard's partial and the content hash of each object as read (the merge's inputs)."""
    parts, inputs = [], {}
    (source,) = run.node.parents
    for p in identity.partition_keys(run.env.policy.shards):
        data = run.env.lake.read_bytes(lk.table_name(source, p))
        if data is None:
            raise lk.not_materialised(run.env.lake, source, p)
        parts.append(lk.table_from_bytes(data))
        inputs[input_key(source, p)] = lk.content_hash(data)
    return parts, inputs


def _purge(run: NodeRun, name: str) -> int:
    return len(run.env.lake.purge_noncurrent(name)) if run.purges_versions else 0


def compute_partial(run: NodeRun) -> NodeResult:
    c = run.env.policy.cohorts
    store = run.env.lake
    source = run.node.parents[0]
    subjects = lk.require_table(store, source, run.partition)
    subjects = subjects[~subjects["subject_key"].isin(run.env.ledger.tombstoned_keys(run.shard))]
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
        "noncurrent_versions_purged": _purge(run, lk.table_name(run.node.name, run.partition)),
    })


def compute_published(run: NodeRun) -> NodeResult:
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
        "published_cells": len(published),
        "suppressed_cells": suppressed,
        "k_min": policy.k_min,
        "content_hash": digest,
        "noncurrent_versions_purged": _purge(run, lk.table_name(run.node.name, PUBLISHED)),
        "largest_cells": Markdown(md_table(preview.to_dict("records"))),
    }, (CheckOutcome("k_anonymous", not bad, {"cells_below_k": len(bad), "k_min": policy.k_min, "published_cells": len(published)}),))


def compute_cohort_model(run: NodeRun) -> NodeResult:
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    policy, store = run.env.policy, run.env.lake
    (source,) = run.node.parents
    data = store.read_bytes(lk.table_name(source, PUBLISHED))
    if data is None:
        raise lk.not_materialised(store, source, None)
    published = lk.table_from_bytes(data)
    qi = list(policy.cohorts.quasi_identifiers)
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
    model = None
    if len(set(labels)) == 2:
        model = make_pipeline(DictVectorizer(), LogisticRegression(max_iter=1000, random_state=identity.derive_seed(policy.seed, "cohort_model")))
        model.fit(records, labels, logisticregression__sample_weight=weights)
        proba = model.predict_proba(records)[:, 1]
        w, y = np.asarray(weights), np.asarray(labels)
        eps = 1e-12
        metrics["weighted_log_loss"] = float(-(w * (y * np.log(proba + eps) + (1 - y) * np.log(1 - proba + eps))).sum() / w.sum())
    saved = {"model": model, "quasi_identifiers": qi, "inputs": {source: lk.content_hash(data)}}
    name = lk.model_name(run.node.name)
    store.write_bytes(name, lk.dumps_model(saved))
    digest = lk.model_fingerprint(saved)
    finish(run, digest)
    return NodeResult(digest, None, {
        **metrics, "trained": model is not None, "content_hash": digest, "metrics": Markdown(md_table([metrics])),
        "noncurrent_versions_purged": _purge(run, name),
    })


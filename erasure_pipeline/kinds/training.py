"""Training sets: per shard and declared model, the consenting subjects' feature rows, in a stable order.

Each subject's features come from their own rows only (``ml.features``), so a shard's training set,
and hence its SISA constituent, is a function of that shard's rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from erasure_pipeline.core.graph import Node
from erasure_pipeline.core.identity import NO_SUBJECT
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds import lookup, raw
from erasure_pipeline.kinds.base import (
    TOMBSTONE_CHECK,
    Env,
    Finding,
    Kind,
    NodeResult,
    NodeRun,
    Table,
    finish,
    old_versions_holding,
    purge,
    recorded_as,
    rows_changed,
    rows_of_subject,
    tombstone_check,
)
from erasure_pipeline.kinds.raw_rows import key_counts
from erasure_pipeline.ml import features as ft
from erasure_pipeline.ml.labels import class_counts
from erasure_pipeline.ml.shard_training import n_classes
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk

LOOKUP_INPUT = "table"
"""How a lookup parent's one object is recorded among a training set's inputs (raw parents: ``b_NNN`` buckets)."""
SISA_RISK = ("The subject's shard model was retrained from rows without the subject and equals an independent "
             "retrain bit for bit; other shard models never saw the subject. Model copies exported before the "
             "completion date are out of scope of this certificate.")


def model_suffix(model: str) -> str:
    """A model named ``model`` (the one-model form) keeps the plain names; others are suffixed."""
    return "" if model == "model" else f"_{model}"


def node_name(model: str) -> str:
    return f"training_shards{model_suffix(model)}"


def class_table(counts: dict[int, int], classes: list | None = None) -> Table:
    total = sum(counts.values()) or 1
    return Table([{"class": c, "value": str(classes[c]) if classes else str(c), "rows": n, "share": round(n / total, 4)}
                  for c, n in counts.items()],
                 [("class", "int"), ("value", "string"), ("rows", "int"), ("share", "float")])


def declared_classes(policy: Policy, model: str) -> list | None:
    """What class index i means, when the declaration says (multiclass); None for binary (0/1) and regression."""
    spec = policy.models[model]
    return [str(c) for c in spec.classes] if spec.task == "multiclass" else None


def holdout_last(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(the training rows, then the holdout rows, each in the order they came; how many training rows). Written so,
    the holdout is a row group of its own: what the ensemble reads of every shard (``lake.read_flagged``), a fifth
    of the table, where it read and split every row (what grew most with the data in one subject's erasure)."""
    held = rows[ft.HOLDOUT].astype(bool).to_numpy()
    n_train = int((~held).sum())
    if n_train in (0, len(rows)) or not held[:n_train].any():
        return rows, n_train
    return pd.concat([rows[~held], rows[held]], ignore_index=True), n_train


def _bucket_hashes(env: Env, parent: str, partition: str) -> dict[str, str] | None:
    """The parent partition's bucket hashes (a lookup table: its one object's); None when it is laid out with
    another bucket count than the policy gives (lake.buckets changed and the raw partition not yet rewritten)."""
    if env.graph.node(parent).prepare:
        return {LOOKUP_INPUT: lk.object_hash(env.lake, env.kind_of(parent).object_name(env.graph.node(parent), None)) or ""}
    manifest = bk.read_manifest(env.lake, parent, partition)
    if manifest is not None and manifest.of not in (0, env.policy.lake.buckets):
        return None
    return {} if manifest is None else {bk.bucket_name(b): i.hash for b, i in manifest.buckets.items()}


def _changed_buckets(run: NodeRun, inputs: dict, recorded: dict | None, stored: bytes | None, previous: pd.DataFrame | None,
                     tombstoned: set[str]) -> set[int] | None:
    """The raw buckets whose subjects must be computed again (None: all of them). Diffed bucket by bucket only
    when the stored table is the one the ledger recorded (a write whose record a crash lost: all again, so its
    provenance is made whole) and this build and the recorded one both read every parent in the policy's layout
    (a parent awaiting relayout after a lake.buckets change records None)."""
    env = run.env
    if recorded is None or not recorded_as(run, lk.content_hash(stored)) or set(recorded) != set(inputs) \
            or any(h is None for h in (*inputs.values(), *recorded.values())) \
            or any(LOOKUP_INPUT in inputs[parent] and inputs[parent] != recorded[parent] for parent in inputs):  # a lookup changed: all
        return None
    changed = {int(b[2:]) for parent in inputs for b in set(inputs[parent]) | set(recorded[parent])
               if b != LOOKUP_INPUT and inputs[parent].get(b) != recorded[parent].get(b)}
    return changed | set(bk.buckets_of(previous.loc[previous[ft.KEY].isin(tombstoned), ft.KEY], env.policy.lake.buckets).tolist())


COUNTS = "#subject_counts"
"""An entry of the table's recorded inputs that names no node: per raw bucket, the subjects with a row in the
features' dataset (``with_row``), those with rows only in an aggregated one (``only_aggregated``) and the
training rows whose number each fill gave (``filled_<column>``), so a build that reads the changed buckets only
still counts the shard's (from the rows read, ``subjects_without_consent`` went negative)."""


def _bucket_counts(frames: dict, training: ft.TrainingSet, policy: Policy) -> dict[str, dict[str, int]]:
    """The counts of ``COUNTS`` in the buckets ``frames`` hold (tombstoned subjects and rows of nobody left out)."""
    f, n = policy.features, policy.lake.buckets
    base = set(frames[f.dataset][ft.KEY].unique().tolist()) if len(frames[f.dataset]) else set()
    others = {k for d in {a.dataset for a in f.aggregates} if len(frames[d]) for k in frames[d][ft.KEY].unique().tolist()}
    keys = {"with_row": list(base), "only_aggregated": list(others - base), **{f"filled_{c}": ks for c, ks in training.filled.items()}}
    per = {name: np.bincount(bk.buckets_of(pd.Series(ks, dtype=object), n), minlength=n) for name, ks in keys.items()}
    return {bk.bucket_name(b): {name: int(c[b]) for name, c in per.items() if c[b]} for b in range(n) if any(c[b] for c in per.values())}


def _metadata(run: NodeRun, written: pd.DataFrame, training: ft.TrainingSet, counts: dict, changed: set[int] | None) -> dict:
    policy, model = run.env.policy, run.node.model
    total = {name: sum(c.get(name, 0) for c in counts.values()) for name in {name for c in counts.values() for name in c}}
    names = ft.feature_names(policy)
    k = n_classes(policy, model)
    target = written[ft.LABEL].to_numpy()
    shape = ({"class_balance": class_table(class_counts(target, k), declared_classes(policy, model))} if k is not None else
             {"target_mean": float(target.mean()) if len(target) else 0.0, "target_std": float(target.std()) if len(target) else 0.0})
    return {
        "model": model,
        "rows": len(written),
        "train_rows": int((~written[ft.HOLDOUT]).sum()),
        "holdout_rows": int(written[ft.HOLDOUT].sum()),
        "subjects_without_consent": total.get("with_row", 0) - int(written[ft.KEY].nunique()),
        **shape,
        "label_encoding": training.label_encoding,
        "features": len(names),
        "constant_features": ft.constant_features(written, names),
        "subjects_recomputed": f"{len(training.rows)} rows in {len(changed)} changed buckets" if changed is not None else
                               f"all (filled with the shard's mean: {', '.join(policy.features.shard_wide)})" if policy.features.shard_wide else "all",
        "subjects_without_features_row": total.get("only_aggregated", 0),
        **{name: n for name, n in sorted(total.items()) if name.startswith("filled_")},
    }


class TrainingSet(Kind):
    name = "training_set"
    action = "SISA_RETRAIN"
    residual_risk = SISA_RISK

    def nodes(self, policy: Policy) -> list[Node]:
        f = policy.features
        if f is None or not policy.models:
            return []
        tables = list(dict.fromkeys([f.dataset, *(a.dataset for a in f.aggregates), *(d for fn in f.functions for d in fn.datasets),
                                     *(j.dataset for j in f.joins)]))
        parents = tuple(lookup.node_name(t) if policy.datasets[t].is_lookup else raw.node_name(t) for t in tables)
        out = []
        for model, spec in policy.models.items():
            reads = ("consent", "features", *(f"models.{model}.{k}" for k in ("label", "task", "positive_class", "classes", "holdout_fraction")))
            out.append(Node(
                node_name(model), self.name, "training", True, parents, reads, self.action,
                subject_rows=True, checks=(TOMBSTONE_CHECK,), kinds=("parquet",), model=model,
                description=f"Feature rows of one shard's consenting subjects for model `{model}` ({spec.task}, label "
                            f"`{spec.label}`): the training rows, then the key-derived holdout in a row group of its own, each "
                            "sorted by subject_key."))
        return out

    def compute(self, run: NodeRun) -> NodeResult:
        """A shard's training rows. When the raw buckets it was built from are known (recorded in the table),
        only the subjects of the buckets that changed since are computed again; the rest are kept as they
        are: the same rows a full build makes."""
        env, p, node = run.env, run.partition, run.node
        store, policy = env.lake, env.policy
        # A subject tombstoned after its raw partition was last written (an erasure filed mid-cycle) is
        # still there until its erasure run: a derived partition leaves them out itself.
        tombstoned = env.ledger.tombstones.active(run.shard)
        base = raw.node_name(policy.features.dataset)
        inputs = {parent: _bucket_hashes(env, parent, p) for parent in node.parents}
        stored = store.read_bytes(lk.table_name(node.name, p))
        previous = None if stored is None else lk.table_from_bytes(stored, name=lk.table_name(node.name, p))
        recorded = lk.table_inputs(store, node.name, p, stored) if previous is not None else None
        counted = recorded.pop(COUNTS, None) if recorded is not None else None  # None: a table written before they were kept
        # A missing number filled with the shard's mean depends on every row of the shard: a change (an erasure
        # above all) in one bucket changes the filled rows of all of them, so the whole shard is computed again.
        changed = None if policy.features.shard_wide or counted is None else \
            _changed_buckets(run, inputs, recorded, stored, previous, tombstoned)
        frames = {}
        for parent in node.parents:
            rows = env.read_rows(parent, p, buckets=changed, cache=True)
            if rows is None and parent == base:
                raise lk.not_materialised(store, parent, p)
            rows = rows if rows is not None else pd.DataFrame({ft.KEY: pd.Series(dtype=str)})
            # rows of nobody (missing_subject: keep) and of tombstoned subjects feed no training row
            keyed = ft.KEY in rows and len(rows)
            frames[env.graph.node(parent).table] = rows[~rows[ft.KEY].isin(tombstoned | {NO_SUBJECT})] if keyed else rows
        training = ft.training_rows(frames, policy, node.model, where=f"{base}[{p}]")
        rows, scope, held = training.rows, None, key_counts(training.rows[ft.KEY])
        if changed is not None:
            in_changed = np.isin(bk.buckets_of(previous[ft.KEY], policy.lake.buckets), list(changed))
            # the ledger's rows of these buckets' subjects whose rows changed are rewritten; the others' stand as they are
            scope = rows_changed(key_counts(previous.loc[in_changed, ft.KEY]), held)
            kept = previous[~in_changed]
            rows = pd.concat([kept, rows], ignore_index=True).sort_values(ft.KEY, kind="stable").reset_index(drop=True) \
                if len(rows) else kept.reset_index(drop=True)
            rows = rows.astype(training.rows.dtypes.to_dict())
        counts = _bucket_counts(frames, training, policy)
        if changed is not None:
            counts = {b: c for b, c in counted.items() if int(b[2:]) not in changed} | counts
        rows, n_train = holdout_last(rows)
        digest = lk.write_table(store, node.name, p, rows, inputs={**inputs, COUNTS: dict(sorted(counts.items()))}, split=n_train)
        finish(run, digest, provenance=held if scope is None else {k: held[k] for k in scope if k in held}, provenance_scope=scope)
        return NodeResult(digest, None, {
            **_metadata(run, rows, training, counts, changed), "content_hash": digest,
            "noncurrent_versions_purged": purge(run, lk.table_name(node.name, p)),
        }, (tombstone_check(rows[ft.KEY], tombstoned),))

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        """No rows of the subject, and no old version of the table holds them. The table's keys are read once per
        shard and batch (a batch of 100 read them 100 times)."""
        target = f"{node.name}[{partition}]"
        if ("training_keys", node.name, partition) not in cache:
            cache[("training_keys", node.name, partition)] = self.read_rows(env, node, partition, columns=[ft.KEY])
        return [rows_of_subject(cache[("training_keys", node.name, partition)], subject_key, target),
                old_versions_holding(env, [lk.table_name(node.name, partition)], subject_key, target)]

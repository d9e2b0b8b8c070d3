"""The policy: ``policy.yaml``, validated, with a hash of exactly the fields each asset reads.

A change of a field changes the ``code_version`` of the assets that read it (and of the
assets below them), so the Dagster UI marks exactly those stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from erasure_pipeline.core.errors import BlockingError
from erasure_pipeline.core.identity import DEFAULT_NORMALISE, NORMALISERS, Keyer, partition_keys
from erasure_pipeline.core.settings import Settings


class PolicyError(BlockingError):
    """A policy file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """One subject-level table a source drops into landing (a folder, or files named after it)."""

    id: str
    """The column that identifies a row (later files win on it)."""
    subject: str = "subject_id"
    """The column holding the subject's id: hashed into subject_key, the shard, every erasure."""
    timestamp: str | None = None
    """A timestamp column: rows older than retention_days leave the lake; ``last`` aggregates order by it."""
    text: list[str] = Field(default_factory=list)
    """Free-text columns: chunked, embedded and indexed for retrieval (the vector index)."""
    consent: str | None = None
    """A per-row consent column of a dataset features aggregate: rows whose value is not in
    consent.allowed_values feed no feature. (The features' own dataset uses consent.column.)"""
    missing_subject: Literal["reject", "drop", "keep"] = "reject"
    """Rows whose subject column is empty: ``reject`` the file (the error counts them), ``drop`` them, or
    ``keep`` them as rows of nobody (never linked to a person: no provenance, no training row, no cohort);
    ``drop`` and ``keep`` are counted in each ingest's metadata."""


def _demo_datasets() -> dict[str, DatasetSpec]:
    return {
        "subjects": DatasetSpec(id="subject_id"),
        "events": DatasetSpec(id="event_id", timestamp="ts"),
        "tickets": DatasetSpec(id="ticket_id", timestamp="created_at", text=["text"]),
    }


class ConsentPolicy(_Strict):
    column: str | None = "consent_training"
    """Column of the features' dataset that says whether a subject may reach training (None: every row may)."""
    allowed_values: list[bool | str | int] = Field(default_factory=lambda: [True])


class CohortPolicy(_Strict):
    dataset: str = "subjects"
    """The dataset (one row per subject) whose quasi-identifiers make the cohorts."""
    quasi_identifiers: list[str] = Field(default_factory=lambda: ["region", "segment", "age"], min_length=1)
    generalise: dict[str, int] = Field(default_factory=lambda: {"age": 10})
    """Numeric quasi-identifiers floored to bands of this width before grouping."""
    measures: list[str] = Field(default_factory=lambda: ["lifetime_value"])
    label: str | None = "converted"
    positive_class: str | int | bool | None = None
    """The label value that counts as positive; unset, only yes/no-like or boolean labels are read."""
    measure_clip: float = Field(1000.0, gt=0)
    """Per-subject clip of each measure: bounds what one subject can move a published sum."""
    noise_epsilon: float = Field(2.0, gt=0)
    """Laplace noise scale is clip/epsilon for sums, 1/epsilon for counts."""


class Aggregate(_Strict):
    """A per-subject feature from another dataset's rows: how many, the sum, the mean, or the latest value."""

    name: str
    dataset: str
    agg: Literal["count", "sum", "mean", "last"]
    column: str | None = None
    """The column summed, averaged or taken last (not for count)."""
    where: dict[str, Any] = Field(default_factory=dict)
    """Only rows whose column equals the value (or is in the list) count."""
    transform: Literal["none", "log1p"] = "none"

    @model_validator(mode="after")
    def _column_for_value_aggregates(self) -> Aggregate:
        if self.agg != "count" and not self.column:
            raise ValueError(f"agg '{self.agg}' needs a column")
        return self


class FunctionFeature(_Strict):
    """Features a function computes: ``function(frames) -> DataFrame`` with one row per ``subject_key``.

    ``frames`` maps each dataset named in ``datasets`` to that shard's rows (with ``subject_key``). It must
    use nothing but those rows (no other shard, no clock, no randomness), so a shard's features, and its
    model, stay a function of its own rows."""

    function: str
    """An import path: ``package.module:name`` (the policy file's folder and the working directory are importable)."""
    datasets: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(min_length=1)
    """The feature columns it returns (known before any data is read: the models' inputs)."""


class FeaturesPolicy(_Strict):
    dataset: str = "subjects"
    """The dataset with one row per subject: its rows are the training rows (label, consent, columns)."""
    numeric: list[str] = Field(default_factory=lambda: ["age", "tenure_days", "lifetime_value"])
    categorical: list[str] = Field(default_factory=lambda: ["region", "segment"])
    """One-hot encoded into hashed buckets: no vocabulary learnt across shards."""
    aggregates: list[Aggregate] = Field(default_factory=lambda: [
        Aggregate(name=f"events_{e}", dataset="events", agg="count", where={"event_type": e}, transform="log1p")
        for e in ("email_open", "email_click", "web_visit", "purchase")])
    functions: list[FunctionFeature] = Field(default_factory=list)


ESTIMATORS = ("logistic_regression", "sgd", "random_forest", "hist_gradient_boosting",
              "ridge", "random_forest_regressor", "hist_gradient_boosting_regressor")
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "r2"}
METRICS = {"binary": ("roc_auc", "accuracy"), "multiclass": ("accuracy", "macro_f1"), "regression": ("r2",)}
"""Metrics a floor can apply to: higher is better for every one (losses are reported, not floored)."""


class QualityPolicy(_Strict):
    metric: str | None = None
    """Holdout metric the floor applies to (default: roc_auc, accuracy, r2 by task)."""
    min: float = 0.6
    """Below it the ensemble is kept only as a candidate and the published model is withdrawn."""


class ModelSpec(_Strict):
    label: str = "converted"
    task: Literal["binary", "multiclass", "regression"] = "binary"
    positive_class: str | int | bool | None = None
    """Binary: the label value that is class 1 (case-insensitive). Unset: booleans, 0/1 and yes/no-like
    strings are read as they are, anything else is an error naming the file and column."""
    classes: list[str | int | bool] | None = None
    """Multiclass: every class the label may take, in order (a value outside them is an error)."""
    estimator: str = "logistic_regression"
    """A short name (logistic_regression, sgd, random_forest, hist_gradient_boosting, ridge,
    random_forest_regressor, hist_gradient_boosting_regressor) or an import path to any
    scikit-learn-compatible estimator class (``sklearn.svm.LinearSVC``, ``package.module:Class``)."""
    params: dict[str, Any] = Field(default_factory=dict)
    aggregation: Literal["vote", "mean_proba"] = "mean_proba"
    """How the SISA ensemble combines shard classifiers (regressors: the mean prediction)."""
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    quality: QualityPolicy = Field(default_factory=QualityPolicy)

    @model_validator(mode="after")
    def _task_fits(self) -> ModelSpec:
        if self.task == "multiclass" and not self.classes:
            raise ValueError("a multiclass model needs its classes listed (classes: [...])")
        metric = self.quality.metric or DEFAULT_METRIC[self.task]
        if metric not in METRICS[self.task]:
            raise ValueError(f"quality.metric '{metric}' does not fit a {self.task} model (use one of {', '.join(METRICS[self.task])})")
        return self

    @property
    def metric(self) -> str:
        return self.quality.metric or DEFAULT_METRIC[self.task]


class LakePolicy(_Strict):
    buckets: int = Field(16, ge=1, le=1024)
    """Files per shard partition of every raw dataset: an erasure rewrites the one holding the subject.
    Changing it rewrites every raw partition (its code version changes), nothing else."""


class VectorPolicy(_Strict):
    chunk_chars: int = Field(400, ge=50, le=10_000)
    dimensions: int = Field(256, ge=16, le=4096)


class EmbedderPolicy(_Strict):
    function: str | None = None
    """None: the stateless hashing embedder. Or an import path to ``embed(texts, dimensions) -> array``; it
    must be stateless too (learnt from no data), or erasure could not reach what it learnt."""


class IdentityPolicy(_Strict):
    normalise: list[str] = Field(default_factory=lambda: list(DEFAULT_NORMALISE))
    """Applied, in order, to every subject id before it is hashed, at intake and at ingest: ``format``
    removes invisible format characters (a byte-order mark, zero-width spaces and joiners), ``strip``
    surrounding blanks, Unicode ``nfkc``, ``lowercase``/``casefold`` every id, or case-fold only ids that
    look like e-mails (``email``). Changing it changes every subject_key: a reshard (tombstones keep
    matching under the rule each was filed with)."""

    @field_validator("normalise")
    @classmethod
    def _known_steps(cls, v: list[str]) -> list[str]:
        unknown = [step for step in v if step not in NORMALISERS]
        if unknown:
            raise ValueError(f"unknown step '{unknown[0]}' (use {', '.join(NORMALISERS)})")
        return v


class CyclePolicy(_Strict):
    """The retraining cycle's schedule (no asset reads it: changing it makes nothing stale)."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("must be a cron expression with 5 fields, e.g. '0 3 * * *'")
        return v


RESERVED = frozenset({"subject_key", "label", "holdout"})
LEGACY_MODEL_KEYS = {"numeric_features": "numeric", "categorical_features": "categorical"}


class Policy(_Strict):
    """The whole pipeline in one declaration: datasets, cohorts, features, models, the vector index, and the rules."""

    shards: int = Field(16, ge=1, le=256)
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)
    seed: int = Field(1729, ge=0)
    k_min: int = Field(10, ge=2)
    datasets: dict[str, DatasetSpec] = Field(default_factory=_demo_datasets)
    consent: ConsentPolicy = Field(default_factory=ConsentPolicy)
    cohorts: CohortPolicy | None = Field(default_factory=CohortPolicy)
    """None: no cohort assets."""
    features: FeaturesPolicy = Field(default_factory=FeaturesPolicy)
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"model": ModelSpec()})
    lake: LakePolicy = Field(default_factory=LakePolicy)
    vectors: VectorPolicy = Field(default_factory=VectorPolicy)
    embedder: EmbedderPolicy = Field(default_factory=EmbedderPolicy)
    retention_days: int = Field(730, ge=1)
    """Rows of datasets with a timestamp older than this leave the lake on the next retraining cycle."""
    cycle: CyclePolicy = Field(default_factory=CyclePolicy)
    erasure_due_days: int = Field(30, ge=1, le=30)
    """Art.17 asks for erasure "without undue delay" and at the latest within one month."""
    erasure_extension_days: int = Field(60, ge=0, le=60)
    _code_dir: Path | None = PrivateAttr(None)
    """The folder of the policy file: code the declaration names may live beside it (not a field: no hash)."""

    @model_validator(mode="before")
    @classmethod
    def _earlier_forms(cls, data: Any) -> Any:
        """Policy files written before declarations keep working: ``model:`` is the one-model form, and
        its feature lists and quality floor move to where they live now."""
        if not isinstance(data, dict) or "model" not in data:
            return data
        data = dict(data)
        model = dict(data.pop("model") or {})
        if "models" in data:
            raise ValueError("give either model (one model) or models (several), not both")
        features = dict(data.get("features") or {})
        for old, new in LEGACY_MODEL_KEYS.items():
            if old in model:
                features.setdefault(new, model.pop(old))
        if "event_features" in model:
            features.setdefault("aggregates", [
                {"name": f"events_{e}", "dataset": "events", "agg": "count", "where": {"event_type": e}, "transform": "log1p"}
                for e in model.pop("event_features")])
        if "min_holdout_auc" in model:
            model["quality"] = {"metric": "roc_auc", "min": model.pop("min_holdout_auc")}
        if features:
            data["features"] = features
        data["models"] = {"model": model}
        return data

    @model_validator(mode="after")
    def _references(self) -> Policy:
        """Every dataset and column a declaration names exists; labels are not features."""
        def dataset(name: str, field: str) -> DatasetSpec:
            if name not in self.datasets:
                raise ValueError(f"{field}: no dataset '{name}' is declared (datasets: {', '.join(self.datasets)})")
            return self.datasets[name]

        dataset(self.features.dataset, "features.dataset")
        for i, agg in enumerate(self.features.aggregates):
            dataset(agg.dataset, f"features.aggregates.{i}.dataset")
        for i, fn in enumerate(self.features.functions):
            for d in fn.datasets:
                dataset(d, f"features.functions.{i}.datasets")
        if self.cohorts is not None:
            dataset(self.cohorts.dataset, "cohorts.dataset")
        base = self.datasets[self.features.dataset]
        if base.consent and base.consent != self.consent.column:
            raise ValueError(f"datasets.{self.features.dataset}.consent: the features' dataset takes its consent from "
                             "consent.column; give the column there")
        for i, agg in enumerate(self.features.aggregates):
            if agg.agg == "last" and not self.datasets[agg.dataset].timestamp:
                raise ValueError(f"features.aggregates.{i}.agg: 'last' needs a timestamp on dataset '{agg.dataset}' "
                                 f"(datasets.{agg.dataset}.timestamp) to know which row is the latest")
        columns = [*self.features.numeric, *self.features.categorical]
        derived = [*(a.name for a in self.features.aggregates), *(o for fn in self.features.functions for o in fn.outputs)]
        if len(set(columns + derived)) != len(columns + derived):
            raise ValueError("features: a name is used twice (numeric, categorical, aggregate and function output names must differ)")
        for n in derived:
            if n in RESERVED or n.startswith(("num_", "cat_")):
                raise ValueError(f"features: the name '{n}' is reserved (subject_key, label, holdout, and the num_/cat_ prefixes)")
        if not self.models:
            raise ValueError("models: declare at least one model")
        for name, model in self.models.items():
            if model.label in columns:
                raise ValueError(f"models.{name}.label: '{model.label}' is also listed as a feature")
        return self

    def keyer(self, pepper: bytes) -> Keyer:
        return Keyer(pepper, self.shards, tuple(self.identity.normalise))

    @property
    def code_dirs(self) -> tuple[Path, ...]:
        """Where code the declaration names is imported from, besides installed packages: the policy file's folder."""
        return (self._code_dir,) if self._code_dir else ()

    @property
    def partitions(self) -> list[str]:
        """The shard partition keys, ``shard_00`` … (``identity.partition_keys``)."""
        return partition_keys(self.shards)

    @property
    def model(self) -> ModelSpec:
        """The first model (the demo's only one)."""
        return next(iter(self.models.values()))

    @property
    def text_datasets(self) -> list[str]:
        return [name for name, d in self.datasets.items() if d.text]

    def fields_hash(self, *fields: str) -> str:
        """Hash of exactly the named (dotted) fields, e.g. ``fields_hash("k_min", "cohorts")``."""
        dumped = self.model_dump(mode="json")
        picked = {}
        for f in sorted(set(fields)):
            node: Any = dumped
            for part in f.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            picked[f] = node
        blob = json.dumps(picked, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_policy(data: Any, *, source: str = "policy") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping of fields at the top level")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            named, _, rest = message.partition(": ")
            if not field and rest and all(part.replace("_", "").isalnum() for part in named.split(".")):
                field, message = named, rest  # a cross-reference error names its own field
            problems.append(f"field '{field or '(top level)'}': {message}")
        raise PolicyError(f"{source}: " + "; ".join(problems)) from None


def load_policy(path: Path | None = None, *, settings: Settings | None = None) -> Policy:
    """Load and validate the policy: ``path``, else the settings' (``$ERASURE_PIPELINE_POLICY``, else
    ``policy.yaml`` in the working directory). No ``policy.yaml`` in the working directory means the
    defaults; a file named explicitly that does not exist is an error."""
    named, from_env = path is not None, False
    if path is None:
        path, from_env = (settings or Settings.from_environ()).policy_file
        named = from_env
    if not path.exists():
        if named:
            raise PolicyError(f"{path}: the policy file{' ($ERASURE_PIPELINE_POLICY)' if from_env else ''} does not exist")
        return Policy()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    policy = parse_policy(data, source=str(path))
    policy._code_dir = path.resolve().parent
    return policy

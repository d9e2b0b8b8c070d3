"""The parts of a declaration (``policy.yaml``): datasets, consent, cohorts, features, models and the rules.

A field left out means "none" (no consent column, no cohorts, no aggregates, no retention, no quality
floor) unless a neutral default is documented beside it here and in the README; the demo's values live
only in the demo's declaration (``app/demo_policy.yaml``). ``erasure-pipeline policy show`` prints the
declaration in effect with every default marked.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from erasure_pipeline.core.identity import DEFAULT_NORMALISE, NORMALISERS

Fill = Literal["zero", "mean", "drop", "error"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    """One table a source drops into landing (a folder, or files named after it)."""

    id: str
    """The column that identifies a row (later files win on it)."""
    subject: str | None
    """The column holding the subject's id: hashed into subject_key, the shard, every erasure. ``null``
    declares a lookup table (carriers, airports): no person's data, not partitioned, joinable by features."""
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
    personal: list[str] | None = Field(None, exclude_if=lambda v: v is None)
    """Columns holding personal data (names, phones, addresses, free text…), stored sealed under a key of
    their subject's own (AES-256-GCM) in the lake, the staging area and the vector store's payloads, so an
    erasure that destroys the key makes every copy unreadable, backups included. Once declared (``[]``
    too), the subject column and the text columns are sealed with them. Unset: nothing of the dataset is sealed
    (and left out of the declaration's hashes, so code versions of declarations without it do not change)."""

    @property
    def is_lookup(self) -> bool:
        return self.subject is None

    @property
    def sealed(self) -> tuple[str, ...]:
        """The columns stored sealed: the declared personal ones, the subject column and the text columns."""
        if self.personal is None or self.subject is None:
            return ()
        return tuple(dict.fromkeys([self.subject, *self.text, *self.personal]))

    @model_validator(mode="after")
    def _lookup_has_no_person(self) -> DatasetSpec:
        if self.subject is None and (self.text or self.consent or self.personal):
            raise ValueError("a lookup table (subject: null) holds no person's data: it takes no text, consent or personal columns")
        return self


class ConsentPolicy(Strict):
    column: str
    """Column of the features' dataset that says whether a subject may reach training."""
    allowed_values: list[bool | str | int] = Field(default_factory=lambda: [True])
    """Values that allow training (default: ``[true]``); compared as text, case aside."""


class CohortPolicy(Strict):
    dataset: str
    """The dataset (one row per subject) whose quasi-identifiers make the cohorts."""
    quasi_identifiers: list[str] = Field(min_length=1)
    generalise: dict[str, int] = Field(default_factory=dict)
    """Numeric quasi-identifiers floored to bands of this width before grouping."""
    measures: list[str] = Field(default_factory=list)
    label: str | None = None
    """A label whose rate each cell publishes, and the cohort model learns (none: no cohort model)."""
    positive_class: str | int | bool | None = None
    """The label value that counts as positive; unset, only yes/no-like or boolean labels are read."""
    measure_clip: float = Field(1000.0, gt=0)
    """Per-subject clip of each measure: bounds what one subject can move a published sum (default 1000)."""
    noise_epsilon: float = Field(2.0, gt=0)
    """Laplace noise scale is clip/epsilon for sums, 1/epsilon for counts (default 2)."""


class Aggregate(Strict):
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


class FunctionFeature(Strict):
    """Features a function computes: ``function(frames) -> DataFrame`` with one row per ``subject_key``.

    ``frames`` maps each dataset named in ``datasets`` to that shard's rows (with ``subject_key``), and a
    lookup table to the whole table. It must use nothing but those rows (no other shard, no clock, no
    randomness), so a shard's features, and its model, stay a function of its own rows."""

    function: str
    """An import path: ``package.module:name`` (the policy file's folder and the working directory are importable)."""
    datasets: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(min_length=1)
    """The feature columns it returns (known before any data is read: the models' inputs)."""


class NumericFeature(Strict):
    column: str
    fill: Fill | None = None
    """When the column has no value: ``zero``, the shard's ``mean``, ``drop`` the row, or ``error`` (with the
    count). Unset: ``features.fill``."""


class Join(Strict):
    """Columns of a lookup table brought onto each row of the features' dataset, by key."""

    dataset: str
    """A lookup table (``datasets.<d>.subject: null``)."""
    on: str
    """The column of the features' dataset holding the key."""
    key: str | None = None
    """The lookup table's key column (default: ``on``); unique in the table."""
    columns: list[str] = Field(min_length=1)
    """The lookup's columns brought in; list them under numeric or categorical to use them."""


class FeaturesPolicy(Strict):
    dataset: str
    """The dataset with one row per subject: its rows are the training rows (label, consent, columns)."""
    numeric: list[str | NumericFeature] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    """One-hot encoded into hashed buckets: no vocabulary learnt across shards."""
    aggregates: list[Aggregate] = Field(default_factory=list)
    functions: list[FunctionFeature] = Field(default_factory=list)
    joins: list[Join] = Field(default_factory=list)
    fill: Fill = "error"
    """What a missing numeric value becomes when its feature does not say: ``error`` (default, with the count)."""

    @property
    def numeric_features(self) -> list[NumericFeature]:
        return [NumericFeature(column=n) if isinstance(n, str) else n for n in self.numeric]

    @property
    def numeric_columns(self) -> list[str]:
        return [n.column for n in self.numeric_features]

    def fill_of(self, column: str) -> Fill:
        return next((n.fill for n in self.numeric_features if n.column == column and n.fill), self.fill)

    @property
    def shard_wide(self) -> list[str]:
        """Numeric columns filled with the shard's mean: every filled row depends on every row of the shard."""
        return [c for c in self.numeric_columns if self.fill_of(c) == "mean"]


ESTIMATORS = {
    "logistic_regression": "classifier: StandardScaler + LogisticRegression (max_iter 1000)",
    "sgd": "classifier: StandardScaler + SGDClassifier (loss log_loss)",
    "random_forest": "classifier: RandomForestClassifier (100 trees)",
    "hist_gradient_boosting": "classifier: HistGradientBoostingClassifier",
    "ridge": "regressor: StandardScaler + Ridge",
    "random_forest_regressor": "regressor: RandomForestRegressor (100 trees)",
    "hist_gradient_boosting_regressor": "regressor: HistGradientBoostingRegressor",
}
"""The estimator short names (``ml.estimators`` builds them; ``erasure-pipeline models`` lists them); ``params`` override."""
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "r2"}
METRICS = {"binary": ("roc_auc", "accuracy"), "multiclass": ("accuracy", "macro_f1"), "regression": ("r2",)}
"""Metrics a floor can apply to: higher is better for every one (losses are reported, not floored)."""


class QualityPolicy(Strict):
    metric: str | None = None
    """Holdout metric the floor applies to (default: roc_auc, accuracy, r2 by task)."""
    min: float
    """Below it the ensemble is kept only as a candidate and the published model is withdrawn."""


class ModelSpec(Strict):
    label: str
    task: Literal["binary", "multiclass", "regression"]
    positive_class: str | int | bool | None = None
    """Binary: the label value that is class 1 (case-insensitive). Unset: booleans, 0/1 and yes/no-like
    strings are read as they are, anything else is an error naming the file and column."""
    classes: list[str | int | bool] | None = None
    """Multiclass: every class the label may take, in order (a value outside them is an error)."""
    estimator: str = "logistic_regression"
    """A short name (logistic_regression, sgd, random_forest, hist_gradient_boosting, ridge,
    random_forest_regressor, hist_gradient_boosting_regressor) or an import path to any
    scikit-learn-compatible estimator class (``sklearn.svm.LinearSVC``, ``package.module:Class``).
    Default: ``logistic_regression``."""
    params: dict[str, Any] = Field(default_factory=dict)
    aggregation: Literal["vote", "mean_proba"] = "mean_proba"
    """How the SISA ensemble combines shard classifiers (regressors: the mean prediction). Default ``mean_proba``."""
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    """The share of subjects held out (by key) to evaluate the ensemble. Default 0.2."""
    quality: QualityPolicy | None = None
    """A floor under the holdout metric (none: the metric is reported, nothing is withheld)."""

    @model_validator(mode="after")
    def _task_fits(self) -> ModelSpec:
        if self.task == "multiclass" and not self.classes:
            raise ValueError("a multiclass model needs its classes listed (classes: [...])")
        if self.metric not in METRICS[self.task]:
            raise ValueError(f"quality.metric '{self.metric}' does not fit a {self.task} model "
                             f"(use one of {', '.join(METRICS[self.task])})")
        return self

    @property
    def metric(self) -> str:
        return (self.quality.metric if self.quality else None) or DEFAULT_METRIC[self.task]


class LakePolicy(Strict):
    buckets: int = Field(16, ge=1, le=1024)
    """Files per shard partition of every raw dataset: an erasure rewrites the one holding the subject.
    Changing it rewrites every raw partition (its code version changes), nothing else. Default 16."""


class LandingPolicy(Strict):
    keep_days: float | None = Field(None, ge=0)
    """Ingested landing files are removed this many days after their ingest (0: by the ingest run that
    took them), so the source's plaintext does not outlive its ingest in our stores; the lake, whose
    personal fields are sealed, is then what a rebuild starts from (with the landing files still there).
    Unset: landing files are kept."""


class VectorPolicy(Strict):
    chunk_chars: int = Field(400, ge=50, le=10_000)
    dimensions: int = Field(256, ge=16, le=4096)


class EmbedderPolicy(Strict):
    function: str | None = None
    """None: the stateless hashing embedder. Or an import path to ``embed(texts, dimensions) -> array``; it
    must be stateless too (learnt from no data), or erasure could not reach what it learnt."""


class IdentityPolicy(Strict):
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


class CyclePolicy(Strict):
    """The retraining cycle's schedule (no asset reads it: changing it makes nothing stale)."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("must be a cron expression with 5 fields, e.g. '0 3 * * *'")
        return v


def _key_bytes(value: str, field: str, what: str) -> str:
    """A 32-byte key given as base64 (how libsodium tools print them)."""
    import base64
    import binascii

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field}: not base64 (a {what}: 32 bytes, base64)") from None
    if len(raw) != 32:
        raise ValueError(f"{field}: {len(raw)} bytes, a {what} has 32")
    return value


def https_or_local(url: str) -> bool:
    """An ``https://`` URL, or ``http://`` to this machine (tests, sidecars): where notices and callbacks may go."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    return bool(parts.hostname) and (parts.scheme == "https" or local)


class RecipientSpec(Strict):
    """A processor, service provider or third party our data went to (GDPR Art.17(2) and 19, CCPA
    §1798.105(c)): told of each erasure of a subject whose data it received, until it confirms."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    role: Literal["processor", "service_provider", "third_party"] = "processor"
    endpoint: str
    """Where notices are POSTed: ``https://…`` (``http://`` only to this machine, for tests and sidecars)."""
    received: list[str] = Field(min_length=1)
    """What it received: dataset names, model names, or asset names (``vector_index``, ``cohort_stats``).
    A request notifies it only when one of these held the subject's data."""
    knows_subject_by: Literal["subject_id", "subject_key"] = "subject_id"
    """``subject_id``: the id as filed, sealed to ``public_key`` at intake (we never hold it in the clear);
    ``subject_key``: our keyed hash (a recipient of pseudonymised data)."""
    public_key: str | None = None
    """Its X25519 public key (libsodium ``crypto_box``, base64): the subject id travels as a sealed box only it opens."""
    token_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    """The environment variable holding its bearer token (read through ``dg.EnvVar``; never in this file)."""
    receipt_key: str | None = None
    """Its Ed25519 verify key (base64): when given, an answer counts as a confirmation only with a receipt it signed."""
    timeout_seconds: float = Field(10.0, gt=0, le=120)

    @field_validator("endpoint")
    @classmethod
    def _https(cls, v: str) -> str:
        if not https_or_local(v):
            raise ValueError(f"'{v}' is not an https:// URL (http:// only to 127.0.0.1 or localhost)")
        return v

    @field_validator("public_key")
    @classmethod
    def _public(cls, v: str | None) -> str | None:
        return v if v is None else _key_bytes(v, "public_key", "X25519 public key")

    @field_validator("receipt_key")
    @classmethod
    def _receipt(cls, v: str | None) -> str | None:
        return v if v is None else _key_bytes(v, "receipt_key", "Ed25519 verify key")

    @model_validator(mode="after")
    def _sealable(self) -> RecipientSpec:
        if self.knows_subject_by == "subject_id" and self.public_key is None:
            raise ValueError("knows_subject_by: subject_id needs public_key (the id is sealed to it; we never keep it in the clear)")
        return self


class DeliveryPolicy(Strict):
    """How notices to recipients (and DRP status callbacks) are retried (no asset reads it)."""

    first_retry_seconds: float = Field(30.0, gt=0)
    """The wait after a first failed attempt; each later one doubles it (with jitter: ×0.5–1.0)."""
    max_retry_seconds: float = Field(3600.0, gt=0)
    dead_letter_days: float = Field(7.0, gt=0)
    """A notice not confirmed this long after it was queued is a dead letter: shown by ``status --overdue``,
    a failing ``recipients_confirmed`` check and the certificate; its sealed subject id is destroyed."""
    workers: int = Field(8, ge=1, le=64)
    """Notices POSTed at once."""


class DrpAgent(Strict):
    """An Authorized Agent of the Data Rights Protocol, as the network's directory lists it."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    verify_key: str
    """Its Ed25519 verify key (base64): requests it signs are checked with it."""
    name: str | None = None

    @field_validator("verify_key")
    @classmethod
    def _verify(cls, v: str) -> str:
        return _key_bytes(v, "verify_key", "Ed25519 verify key")


class DrpPolicy(Strict):
    """Requests taken in over the Data Rights Protocol 1.0 (``erasure-pipeline serve``), as a covered business."""

    business_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    identifier: str = "email"
    """The identity claim (schema.org/Person, e.g. ``email``, ``phone_number``) that carries the subject id."""
    agents: list[DrpAgent] = Field(default_factory=list)
    max_body_bytes: int = Field(65536, ge=1024, le=1 << 20)
    requests_per_minute: int = Field(60, ge=1)
    """Per agent: more is answered ``429`` with the spec's error shape and files nothing."""

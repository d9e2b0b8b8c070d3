"""The policy: ``policy.yaml``, validated, with a hash of exactly the fields each asset reads.

A change of a field changes the ``code_version`` of the assets that read it (and of the
assets below them), so the Dagster UI marks exactly those stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from erasure_pipeline.errors import PipelineError

POLICY_ENV = "ERASURE_PIPELINE_POLICY"
ESTIMATORS = ("logistic_regression", "sgd", "random_forest", "hist_gradient_boosting")


class PolicyError(PipelineError):
    """A policy file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentPolicy(_Strict):
    column: str = "consent_training"
    """Subjects column that says whether a subject may reach training."""
    allowed_values: list[bool | str | int] = Field(default_factory=lambda: [True])


class CohortPolicy(_Strict):
    quasi_identifiers: list[str] = Field(default_factory=lambda: ["region", "segment", "age"])
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

    @field_validator("quasi_identifiers")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one column")
        return v


class ModelPolicy(_Strict):
    label: str = "converted"
    positive_class: str | int | bool | None = None
    """The label value that is class 1 (case-insensitive). Unset: booleans, 0/1 and yes/no-like strings
    are read as they are, anything else is an error naming the file and column."""
    numeric_features: list[str] = Field(default_factory=lambda: ["age", "tenure_days", "lifetime_value"])
    categorical_features: list[str] = Field(default_factory=lambda: ["region", "segment"])
    event_features: list[str] = Field(
        default_factory=lambda: ["email_open", "email_click", "web_visit", "purchase"]
    )
    """Event types counted per subject from raw_events."""
    estimator: Literal["logistic_regression", "sgd", "random_forest", "hist_gradient_boosting"] = (
        "logistic_regression"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    aggregation: Literal["vote", "mean_proba"] = "mean_proba"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    min_holdout_auc: float = Field(0.6, ge=0, le=1)


class VectorPolicy(_Strict):
    chunk_chars: int = Field(400, ge=50, le=10_000)
    dimensions: int = Field(256, ge=16, le=4096)


class IdentityPolicy(_Strict):
    normalise: list[Literal["strip", "nfkc", "lowercase", "casefold", "email"]] = Field(
        default_factory=lambda: ["strip", "nfkc", "email"])
    """Applied, in order, to every subject id before it is hashed, at intake and at ingest: ``strip``
    surrounding blanks, Unicode ``nfkc``, ``lowercase``/``casefold`` every id, or case-fold only ids that
    look like e-mails (``email``). Changing it changes every subject_key: a reshard."""


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


class Policy(_Strict):
    shards: int = Field(16, ge=1, le=256)
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)
    seed: int = Field(1729, ge=0)
    k_min: int = Field(10, ge=2)
    consent: ConsentPolicy = Field(default_factory=ConsentPolicy)
    cohorts: CohortPolicy = Field(default_factory=CohortPolicy)
    model: ModelPolicy = Field(default_factory=ModelPolicy)
    vectors: VectorPolicy = Field(default_factory=VectorPolicy)
    retention_days: int = Field(730, ge=1)
    """Event and ticket rows older than this leave the lake on the next retraining cycle."""
    cycle: CyclePolicy = Field(default_factory=CyclePolicy)
    erasure_due_days: int = Field(30, ge=1, le=30)
    """Art.17 asks for erasure "without undue delay" and at the latest within one month."""
    erasure_extension_days: int = Field(60, ge=0, le=60)

    @model_validator(mode="after")
    def _label_not_a_feature(self) -> Policy:
        feats = {*self.model.numeric_features, *self.model.categorical_features}
        if self.model.label in feats:
            raise ValueError(f"model.label {self.model.label!r} is also listed as a feature")
        return self

    def keyer(self, pepper: bytes):
        from erasure_pipeline.identity import Keyer

        return Keyer(pepper, self.shards, tuple(self.identity.normalise))

    def fields_hash(self, *fields: str) -> str:
        """Hash of exactly the named (dotted) fields, e.g. ``fields_hash("k_min", "cohorts")``."""
        dumped = self.model_dump(mode="json")
        picked = {}
        for f in sorted(set(fields)):
            node: Any = dumped
            for part in f.split("."):
                node = node[part]
            picked[f] = node
        blob = json.dumps(picked, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def default_policy_path() -> Path:
    """``$ERASURE_PIPELINE_POLICY``, else ``policy.yaml`` in the working directory."""
    return Path(os.environ.get(POLICY_ENV) or "policy.yaml").expanduser().resolve()


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
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"field '{field}': {err['msg']}")
        raise PolicyError(f"{source}: " + "; ".join(problems)) from None


def load_policy(path: Path | None = None) -> Policy:
    """Load and validate the policy. No ``policy.yaml`` in the working directory means the defaults; a
    file named explicitly (an argument, or ``$ERASURE_PIPELINE_POLICY``) that does not exist is an error."""
    from_env = path is None and bool(os.environ.get(POLICY_ENV))
    named = path is not None or from_env
    path = path or default_policy_path()
    if not path.exists():
        if named:
            raise PolicyError(f"{path}: the policy file{f' (${POLICY_ENV})' if from_env else ''} does not exist")
        return Policy()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    return parse_policy(data, source=str(path))

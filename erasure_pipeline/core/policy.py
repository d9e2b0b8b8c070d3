"""The policy: ``policy.yaml``, the pipeline's one declaration, validated, with a hash of exactly the fields
each asset reads.

A change of a field changes the ``code_version`` of the assets that read it (and of the assets below
them), so the Dagster UI marks exactly those stale. Its parts are in ``core/declaration.py``; a field left
out means "none" unless a neutral default is documented (``show`` marks every default in effect).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from erasure_pipeline.core.declaration import (
    CohortPolicy,
    ConsentPolicy,
    CyclePolicy,
    DatasetSpec,
    DeliveryPolicy,
    DrpPolicy,
    EmbedderPolicy,
    FeaturesPolicy,
    IdentityPolicy,
    LakePolicy,
    LandingPolicy,
    ModelSpec,
    RecipientSpec,
    Strict,
    VectorPolicy,
)
from erasure_pipeline.core.errors import BlockingError
from erasure_pipeline.core.identity import Keyer, partition_keys
from erasure_pipeline.core.settings import Settings, policy_path


class PolicyError(BlockingError):
    """A policy file that cannot be used; the message names the file and the field."""


RECEIVABLE = ("vectors", "cohorts")
"""What a recipient may have received besides datasets and models: the vector index's points, the cohort tables."""
RESERVED = frozenset({"subject_key", "label", "holdout"})
LEGACY_MODEL_KEYS = {"numeric_features": "numeric", "categorical_features": "categorical"}


class Policy(Strict):
    """The whole pipeline in one declaration: datasets, cohorts, features, models, the vector index, and the rules."""

    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    """The tables a source drops into landing: one raw asset each (a lookup table: one unpartitioned asset)."""
    shards: int = Field(16, ge=1, le=256)
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)
    seed: int = Field(1729, ge=0)
    k_min: int = Field(10, ge=2)
    """Published cohort cells need at least this many subjects (only with cohorts)."""
    consent: ConsentPolicy | None = None
    """None: every row of the features' dataset may reach training."""
    cohorts: CohortPolicy | None = None
    """None: no cohort assets."""
    features: FeaturesPolicy | None = None
    """What the models learn from (needed when models are declared)."""
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    lake: LakePolicy = Field(default_factory=LakePolicy)
    landing: LandingPolicy = Field(default_factory=LandingPolicy)
    """What happens to landing files once ingested (no asset reads it)."""
    vectors: VectorPolicy = Field(default_factory=VectorPolicy)
    embedder: EmbedderPolicy = Field(default_factory=EmbedderPolicy)
    retention_days: int | None = Field(None, ge=1)
    """None: no retention. Else rows of datasets with a timestamp older than this leave the lake on the next cycle."""
    cycle: CyclePolicy = Field(default_factory=CyclePolicy)
    owners: list[str] = Field(default_factory=list)
    """Who answers for the pipeline: Dagster owners (``team:name`` or an e-mail) on every asset, job, sensor and
    schedule, shown in the UI's catalog and filters. None: no owners. No asset reads it (no code version changes)."""
    recipients: list[RecipientSpec] = Field(default_factory=list)
    """Processors, service providers and third parties told of each erasure that reaches what they received.
    None: nobody outside this pipeline holds the data. No asset reads it."""
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    drp: DrpPolicy | None = None
    """None: no Data Rights Protocol intake (``serve`` refuses to start)."""
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
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("consent"), dict) and data["consent"].get("column", "") is None:
            data["consent"] = None  # ``consent: {column: null}``, the earlier way to say "no consent column"
        if "model" not in data:
            return data
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
        """Every dataset and column a declaration names exists and is of the right kind; labels are not features."""
        if self.models and self.features is None:
            raise ValueError("features: the models need features (features.dataset: the table with one row per subject)")
        if self.consent is not None and self.features is None:
            raise ValueError("consent: consent.column is a column of the features' dataset; declare features")
        if self.features is not None:
            self._check_features(self.features)
        if self.cohorts is not None:
            self._dataset(self.cohorts.dataset, "cohorts.dataset")
        columns = [*self.features.numeric_columns, *self.features.categorical] if self.features else []
        for name, model in self.models.items():
            if model.label in columns:
                raise ValueError(f"models.{name}.label: '{model.label}' is also listed as a feature")
        self._check_recipients()
        return self

    def _check_recipients(self) -> None:
        names = [r.name for r in self.recipients]
        if len(set(names)) != len(names):
            raise ValueError(f"recipients: '{next(n for n in names if names.count(n) > 1)}' is declared twice")
        known = {*self.datasets, *self.models, *RECEIVABLE}
        for r in self.recipients:
            for what in r.received:
                if what not in known:
                    raise ValueError(f"recipients.{r.name}.received: '{what}' is neither a dataset, a model nor one of "
                                     f"{', '.join(RECEIVABLE)} (datasets: {', '.join(self.datasets)}; models: {', '.join(self.models) or 'none'})")

    @field_validator("owners")
    @classmethod
    def _owners(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if not (re.fullmatch(r"team:[A-Za-z0-9_.-]+", o) or re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", o))]
        if bad:
            raise ValueError(f"'{bad[0]}' is neither team:<name> nor an e-mail address")
        return v

    def _dataset(self, name: str, field: str, lookup_ok: bool = False) -> DatasetSpec:
        if name not in self.datasets:
            raise ValueError(f"{field}: no dataset '{name}' is declared (datasets: {', '.join(self.datasets)})")
        spec = self.datasets[name]
        if spec.is_lookup and not lookup_ok:
            raise ValueError(f"{field}: '{name}' is a lookup table (subject: null); this needs a dataset of people")
        return spec

    def _check_features(self, f: FeaturesPolicy) -> None:
        base = self._dataset(f.dataset, "features.dataset")
        for i, agg in enumerate(f.aggregates):
            spec = self._dataset(agg.dataset, f"features.aggregates.{i}.dataset")
            if agg.agg == "last" and not spec.timestamp:
                raise ValueError(f"features.aggregates.{i}.agg: 'last' needs a timestamp on dataset '{agg.dataset}' "
                                 f"(datasets.{agg.dataset}.timestamp) to know which row is the latest")
        for i, fn in enumerate(f.functions):
            for d in fn.datasets:
                self._dataset(d, f"features.functions.{i}.datasets", lookup_ok=True)
        for i, join in enumerate(f.joins):
            if not self._dataset(join.dataset, f"features.joins.{i}.dataset", lookup_ok=True).is_lookup:
                raise ValueError(f"features.joins.{i}.dataset: '{join.dataset}' is not a lookup table (subject: null); "
                                 "aggregate a dataset of people instead (features.aggregates)")
        if base.consent and (self.consent is None or base.consent != self.consent.column):
            raise ValueError(f"datasets.{f.dataset}.consent: the features' dataset takes its consent from consent.column; give the column there")
        columns = [*f.numeric_columns, *f.categorical]
        derived = [*(a.name for a in f.aggregates), *(o for fn in f.functions for o in fn.outputs)]
        if len(set(columns + derived)) != len(columns + derived):
            raise ValueError("features: a name is used twice (numeric, categorical, aggregate and function output names must differ)")
        for n in derived:
            if n in RESERVED or n.startswith(("num_", "cat_")):
                raise ValueError(f"features: the name '{n}' is reserved (subject_key, label, holdout, and the num_/cat_ prefixes)")

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
    def text_datasets(self) -> list[str]:
        return [name for name, d in self.datasets.items() if d.text]

    @property
    def subject_datasets(self) -> list[str]:
        """Datasets of people (partitioned by shard); the others are lookup tables."""
        return [name for name, d in self.datasets.items() if not d.is_lookup]

    @property
    def lookup_datasets(self) -> list[str]:
        return [name for name, d in self.datasets.items() if d.is_lookup]

    def fields_values(self, *fields: str) -> dict[str, Any]:
        """The values of exactly the named (dotted) fields, e.g. ``fields_values("k_min", "cohorts")``."""
        dumped = self.model_dump(mode="json")
        picked = {}
        for f in sorted(set(fields)):
            node: Any = dumped
            for part in f.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            picked[f] = node
        return picked

    def fields_hash(self, *fields: str) -> str:
        """Hash of exactly the named (dotted) fields (``fields_values``)."""
        blob = json.dumps(self.fields_values(*fields), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted paths whose values differ between two JSON-like values: (path, old, new), deepest first reached."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if old == new else [(prefix, old, new)]


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


NO_POLICY = ("no policy file: write policy.yaml here (README, \"Point it at your data\"), set $ERASURE_PIPELINE_POLICY, "
             "or run `erasure-pipeline demo`, which writes the demo's declaration into the project home")


def load_policy(path: Path | None = None, *, settings: Settings | None = None) -> Policy:
    """Load and validate the declaration: ``path``, else the one ``policy_path`` finds. There is no
    built-in declaration: none found is an error saying what to do; a file named explicitly that does
    not exist is an error too."""
    from_env = False
    if path is None:
        path, from_env = policy_path(settings)
        if path is None:
            raise PolicyError(NO_POLICY)
    if not path.exists():
        raise PolicyError(f"{path}: the policy file{' ($ERASURE_PIPELINE_POLICY)' if from_env else ''} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    policy = parse_policy(data, source=str(path))
    policy._code_dir = path.resolve().parent
    return policy


def show(policy: Policy) -> str:
    """The declaration in effect, as YAML, every value the file did not give marked ``# default``."""
    lines: list[str] = []

    def walk(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name in type(model).model_fields:
            value = getattr(model, name)
            mark = "" if name in model.model_fields_set else "  # default"
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:{mark}")
                walk(value, indent + 1)
            elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
                lines.append(f"{pad}{name}:{mark}")
                for key, item in value.items():
                    lines.append(f"{pad}  {key}:")
                    walk(item, indent + 2)
            else:
                dumped = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000, allow_unicode=True).strip()
                lines.append(f"{pad}{name}: {dumped.removesuffix(chr(10) + '...')}{mark}")

    walk(policy, 0)
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value

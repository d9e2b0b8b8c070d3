"""The landing data contract: what a company drops into landing, and the errors it gets.

Errors name the file, the column and the first bad row (1-based data row; for CSV also the
line), and never repeat a value: a bad value may be a personal identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import pandas as pd

from erasure_pipeline.errors import PipelineError

TABLES = ("subjects", "events", "tickets")
SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class TableContract:
    name: str
    id_column: str
    required: tuple[str, ...]
    timestamps: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()


CONTRACTS: dict[str, TableContract] = {
    "subjects": TableContract(
        "subjects", "subject_id", ("subject_id", "consent_training"), booleans=("consent_training",)
    ),
    "events": TableContract("events", "event_id", ("event_id", "subject_id", "ts"), timestamps=("ts",)),
    "tickets": TableContract(
        "tickets",
        "ticket_id",
        ("ticket_id", "subject_id", "created_at", "text"),
        timestamps=("created_at",),
        texts=("text",),
    ),
}

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class LandingContractError(PipelineError):
    """A landing file that breaks the contract."""

    def __init__(self, file: str, column: str | None, row: int | None, problem: str, csv: bool = False):
        self.file, self.column, self.row, self.problem = file, column, row, problem
        where = [file]
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (line {row + 1})" if csv else ""))
        super().__init__(": ".join([", ".join(where), problem]))


def table_of(path: str | PurePath) -> str | None:
    """Which table a landing file belongs to: its folder (``events/2026-11.csv``) or its name prefix."""
    p = PurePath(str(path))
    if p.suffix.lower() not in SUFFIXES:
        return None
    for candidate in (p.parent.name, p.stem.split("_")[0].split(".")[0].split("-")[0]):
        if candidate in CONTRACTS:
            return candidate
    return None


def read_landing_bytes(data: bytes, name: str) -> pd.DataFrame:
    """Parse one landing file's bytes (CSV or Parquet) without validating it."""
    import io

    suffix = PurePath(name).suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(data))
        ids = {"subject_id": str, "event_id": str, "ticket_id": str}
        return pd.read_csv(io.BytesIO(data), dtype=ids, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001  (any parser error; its message may quote file content)
        raise LandingContractError(name, None, None, f"cannot be read as {suffix[1:]} ({type(exc).__name__})") from None


def validate(df: pd.DataFrame, table: str, file: str) -> pd.DataFrame:
    """Check one landing table against its contract and return it with normalised types."""
    contract = CONTRACTS[table]
    csv = file.lower().endswith(".csv")

    def fail(column: str | None, mask: np.ndarray | None, problem: str) -> None:
        row = int(np.flatnonzero(mask)[0]) + 1 if mask is not None else None
        raise LandingContractError(file, column, row, problem, csv=csv)

    for col in contract.required:
        if col not in df.columns:
            fail(col, None, f"required column is missing (a {table} file needs {', '.join(contract.required)})")
    out = df.copy()
    for col in ("subject_id", contract.id_column):
        values = out[col]
        if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
            fail(col, None, f"must hold strings, found {values.dtype}")
        empty = values.isna().to_numpy() | (values.astype("string").str.strip().fillna("") == "").to_numpy()
        if empty.any():
            fail(col, empty, "empty id")
        bad = ~values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        if bad.any():
            fail(col, bad, "must hold strings")
        out[col] = values.astype(str)
    dup = out[contract.id_column].duplicated().to_numpy()
    if dup.any():
        fail(contract.id_column, dup, "duplicate id (each row needs a unique id)")
    for col in contract.booleans:
        out[col] = _as_bool(out[col], lambda m, c=col: fail(c, m, "must be a boolean (true/false, yes/no, 1/0)"))
    for col in contract.timestamps:
        parsed = pd.to_datetime(out[col], errors="coerce", utc=True, format="mixed")
        bad = parsed.isna().to_numpy()
        if bad.any():
            fail(col, bad, "must be a timestamp (ISO 8601)")
        out[col] = parsed.astype("datetime64[us, UTC]")
    for col in contract.texts:
        bad = out[col].isna().to_numpy()
        if bad.any():
            fail(col, bad, "missing text")
        out[col] = out[col].astype(str)
    return out


def subjects_columns_named_by(policy) -> dict[str, str]:
    """Columns of the ``subjects`` table the policy reads, each with the first policy field naming it."""
    named: dict[str, str] = {}
    m, c = policy.model, policy.cohorts
    fields = [("consent.column", [policy.consent.column]), ("model.label", [m.label]),
              ("model.numeric_features", m.numeric_features), ("model.categorical_features", m.categorical_features),
              ("cohorts.quasi_identifiers", c.quasi_identifiers), ("cohorts.measures", c.measures),
              ("cohorts.label", [c.label] if c.label else [])]
    for field, columns in fields:
        for col in columns:
            named.setdefault(col, field)
    return named


def check_subjects_for_policy(df: pd.DataFrame, file: str, policy) -> None:
    """A ``subjects`` file holds every column the policy names and labels the pipeline can read.

    Later files replace earlier rows by id, so every subjects file must be complete.
    """
    from erasure_pipeline.ml.features import model_label
    from erasure_pipeline.ml.labels import BinaryLabel

    for col, field in subjects_columns_named_by(policy).items():
        if col not in df.columns:
            raise LandingContractError(file, col, None, f"column named by policy {field} is missing")
    labels = [model_label(policy)]
    if policy.cohorts.label:
        positive = policy.cohorts.positive_class
        labels.append(BinaryLabel(policy.cohorts.label, None if positive is None else str(positive)))
    for label in labels:
        label.encode(df[label.column], where=file)


def _as_bool(values: pd.Series, fail) -> pd.Series:
    if pd.api.types.is_bool_dtype(values) and not values.isna().any():
        return values.astype(bool)
    if pd.api.types.is_integer_dtype(values):
        bad = ~values.isin([0, 1]).to_numpy()
        if bad.any():
            fail(bad)
        return values.astype(bool)
    text = values.astype("string").str.strip().str.lower()
    is_true = text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)
    is_false = text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)
    bad = ~(is_true | is_false)
    if bad.any():
        fail(bad)
    return pd.Series(is_true, index=values.index)

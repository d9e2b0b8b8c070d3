"""The landing data contract, derived from the declaration: what a company drops into landing, and
the errors it gets.

Each declared dataset is a table: its files sit in a folder named after it (``orders/2026-11.csv``)
or start with its name (``orders_2026-11.parquet``), CSV or Parquet. A file must hold the dataset's
id and subject columns, its timestamp, text and consent columns if declared, and every column the
declaration reads from it (features, aggregates, cohorts, labels). Errors name the file, the column
and the first bad row (1-based data row; for CSV also the line) — and for a column the declaration
names, the field that names it — and never repeat a value: a bad value may be a personal identifier.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import pandas as pd

from erasure_pipeline.core.errors import BlockingError

SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class TableContract:
    name: str
    id_column: str
    subject_column: str | None = "subject_id"
    """None: a lookup table (``subject: null``), no person's data."""
    timestamps: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    named_by: Mapping[str, str] = field(default_factory=dict)
    """Column -> the declaration field that names it: every one is required."""
    missing_subject: str = "reject"
    """``reject`` | ``drop`` | ``keep`` rows whose subject column is empty (``datasets.<d>.missing_subject``)."""
    sealed: tuple[str, ...] = ()
    """Columns stored sealed under the subject's data key (``datasets.<d>.personal``, with the subject and text columns)."""

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c for c in dict.fromkeys([self.id_column, self.subject_column, *self.named_by]) if c)

    @property
    def is_lookup(self) -> bool:
        return self.subject_column is None

    @property
    def id_is_subject(self) -> bool:
        """Each row's id is its subject's own id (one row per subject): a row never changes subject
        (``superseded.movable``), and its id is one subject key's (``raw_rows.row_key``)."""
        return self.id_column == self.subject_column


def _features_read(policy, name: str, need) -> None:
    """Columns of dataset ``name`` the features (and the models' labels, the consent rule) read."""
    f = policy.features
    if f is None:
        return
    if f.dataset == name:
        need([policy.consent.column if policy.consent else None], "consent.column")
        joined = {c for j in f.joins for c in j.columns}  # the lookup's columns, required of the lookup
        need([c for c in f.numeric_columns if c not in joined], "features.numeric")
        need([c for c in f.categorical if c not in joined], "features.categorical")
        need([j.on for j in f.joins], "features.joins")
        for model_name, model in policy.models.items():
            need([model.label], f"models.{model_name}.label")
    for i, agg in enumerate(f.aggregates):
        if agg.dataset == name:
            need([agg.column], f"features.aggregates.{i}.column")
            need(agg.where, f"features.aggregates.{i}.where")
    for i, join in enumerate(f.joins):
        if join.dataset == name:
            need([join.key or join.on, *join.columns], f"features.joins.{i}")


def contracts_for(policy) -> dict[str, TableContract]:
    """One contract per declared dataset, with every column the declaration reads from it."""
    out = {}
    for name, spec in policy.datasets.items():
        named: dict[str, str] = {}

        def need(columns: Iterable[str | None], where: str, named=named) -> None:
            for col in columns:
                if col:
                    named.setdefault(col, where)

        need([spec.timestamp], f"datasets.{name}.timestamp")
        need(spec.text, f"datasets.{name}.text")
        need([spec.consent], f"datasets.{name}.consent")
        _features_read(policy, name, need)
        c = policy.cohorts
        if c is not None and c.dataset == name:
            need([*c.quasi_identifiers, *c.measures, c.label], "cohorts")
        need(spec.personal or [], f"datasets.{name}.personal")  # a column declared personal must exist: never sealed by a typo's absence
        base_consent = policy.consent.column if policy.consent and policy.features and policy.features.dataset == name else None
        boolean_consent = policy.consent is None or all(isinstance(v, bool) for v in policy.consent.allowed_values)
        bools = tuple(dict.fromkeys(col for col in (spec.consent, base_consent) if col and boolean_consent))
        out[name] = TableContract(name, spec.id, spec.subject, (spec.timestamp,) if spec.timestamp else (), bools,
                                  tuple(spec.text), named, spec.missing_subject, spec.sealed)
    return out


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class LandingContractError(BlockingError):
    """A landing file that breaks the contract."""

    def __init__(self, file: str, column: str | None, row: int | None, problem: str, csv: bool = False):
        self.file, self.column, self.row, self.problem = file, column, row, problem
        where = [file]
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (line {row + 1})" if csv else ""))
        super().__init__(": ".join([", ".join(where), problem]))


def table_of(path: str | PurePath, tables: Iterable[str]) -> str | None:
    """Which table a landing file belongs to: its folder (``events/2026-11.csv``) or its name prefix."""
    p = PurePath(str(path))
    if p.suffix.lower() not in SUFFIXES:
        return None
    names = set(tables)
    if p.parent.name in names:
        return p.parent.name
    stem = p.stem
    for name in sorted(names, key=len, reverse=True):  # the longest name that prefixes the file
        if stem == name or stem.startswith((f"{name}_", f"{name}.", f"{name}-")):
            return name
    return None


def read_landing_bytes(data: bytes, name: str, contract: TableContract | None = None) -> pd.DataFrame:
    """Parse one landing file's bytes (CSV or Parquet) without validating it."""
    suffix = PurePath(name).suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(data))
        ids = {c: str for c in ((contract.id_column, contract.subject_column) if contract else ())}
        return pd.read_csv(io.BytesIO(data), dtype=ids, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001  (any parser error; its message may quote file content)
        raise LandingContractError(name, None, None, f"cannot be read as {suffix[1:]} ({type(exc).__name__})") from None


def _validated_lookup(out: pd.DataFrame, contract: TableContract, fail) -> pd.DataFrame:
    """A lookup table's rows: ids present, unique, strings."""
    ids = out[contract.id_column]
    empty = ids.isna().to_numpy() | (ids.astype("string").str.strip().fillna("") == "").to_numpy()
    if empty.any():
        fail(contract.id_column, empty, "empty id")
    out[contract.id_column] = ids.astype(str)
    dup = out[contract.id_column].duplicated().to_numpy()
    if dup.any():
        fail(contract.id_column, dup, "duplicate id (each row needs a unique id)")
    return out


def without_subject(df: pd.DataFrame, contract: TableContract) -> np.ndarray:
    """Rows whose subject column is empty (missing, or blank)."""
    if contract.subject_column is None or contract.subject_column not in df:
        return np.zeros(len(df), dtype=bool)
    values = df[contract.subject_column]
    return values.isna().to_numpy() | (values.astype("string").str.strip().fillna("") == "").to_numpy()


def validate(df: pd.DataFrame, contract: TableContract, file: str) -> pd.DataFrame:
    """Check one landing table against its contract and return it with normalised types."""
    csv = file.lower().endswith(".csv")

    def fail(column: str | None, mask: np.ndarray | None, problem: str) -> None:
        row = int(np.flatnonzero(mask)[0]) + 1 if mask is not None else None
        raise LandingContractError(file, column, row, problem, csv=csv)

    for col in contract.required:
        if col not in df.columns:
            by = contract.named_by.get(col)
            fail(col, None, f"column named by {by} is missing" if by else
                 f"required column is missing (a {contract.name} file needs {', '.join(contract.required)})")
    out = df.copy()
    if contract.is_lookup:
        return _validated_lookup(out, contract, fail)
    missing = without_subject(out, contract)
    if missing.any() and contract.missing_subject == "reject":
        n = int(missing.sum())
        fail(contract.subject_column, missing, f"empty subject id in {n:,} row{'s' if n != 1 else ''}; declare "
             f"datasets.{contract.name}.missing_subject: drop or keep to accept such rows")
    if missing.any() and contract.missing_subject == "drop":
        out = out[~missing]  # the file's row labels kept: a scrub rewrites the file by them
    elif missing.any():  # keep: rows of nobody
        out[contract.subject_column] = out[contract.subject_column].astype(object).where(~missing, "")
    for col in dict.fromkeys((contract.subject_column, contract.id_column)):
        values = out[col]
        if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
            fail(col, None, f"must hold strings, found {values.dtype}")
        empty = values.isna().to_numpy() | (values.astype("string").str.strip().fillna("") == "").to_numpy()
        if col == contract.subject_column and contract.missing_subject == "keep":
            empty = np.zeros(len(values), dtype=bool)
        if empty.any():
            fail(col, empty, "empty id")
        if not pd.api.types.is_string_dtype(values):  # an object column: every value must be a string
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

"""What a label column means: classes (or numbers) read from its values and the declaration. No Dagster import.

A binary label is read by its values, never by Python truthiness (``"No"`` is a non-empty string):

- booleans, and numbers that are all 0 or 1, are the classes 0 and 1 as they stand;
- strings are classes: the value the model names as ``positive_class`` is 1 and the one
  other value is 0; without a positive class, strings are read only when unambiguous, i.e. every
  value (case and surrounding blanks aside) is a yes/no-like token (``yes``/``no``, ``true``/``false``,
  ``y``/``n``, ``t``/``f``, ``1``/``0``), and the encoding is then stated so it can be shown;
- anything else is an error naming the file, the column and what was seen as counts: label values
  can be personal data, so an error never repeats one.

A multi-class label is one of the model's declared ``classes`` (matched like positive classes: case
and surrounding blanks aside), in their declared order; a regression target is a number.

The encoding depends only on the policy and the value itself, never on which values a shard
happens to hold, so every shard encodes alike and a shard's training set stays a function of its
own rows (the exactness SISA needs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from erasure_pipeline.core.errors import BlockingError

POSITIVE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
NEGATIVE_TOKENS = frozenset({"false", "f", "no", "n", "0"})


class LabelError(BlockingError):
    """A label column this pipeline cannot read as classes. The message names no value."""


def _counts_text(counts: pd.Series) -> str:
    """``"3 distinct values holding 1,200 / 800 / 5 rows"``: shapes, never values."""
    sizes = " / ".join(f"{int(n):,}" for n in counts.sort_values(ascending=False).to_numpy())
    return f"{len(counts)} distinct values holding {sizes} rows"


@dataclass(frozen=True)
class BinaryLabel:
    """How one label column becomes the classes 0 and 1."""

    column: str
    positive_class: str | None = None
    """The value that means class 1 (compared case-insensitively, blanks stripped)."""
    field: str = "model"
    """The declaration's field of the model (``models.<name>``), named in errors."""
    n_classes = 2

    def encode(self, values: pd.Series, *, where: str) -> tuple[np.ndarray, str]:
        """Class indices (int64, 0/1) of ``values`` and a one-line statement of the encoding.

        ``where`` names what is being read (a landing file, a raw partition) for the error.
        Raises :class:`LabelError` on a missing value or values that are not one binary class.
        """
        missing = values.isna().to_numpy()
        if missing.any():
            raise LabelError(f"{where}, column '{self.column}': row {int(np.flatnonzero(missing)[0]) + 1}: missing label")
        if self.positive_class is not None:
            return self._by_positive_class(values, where)
        if pd.api.types.is_bool_dtype(values):
            return values.to_numpy(dtype=bool).astype("int64"), "boolean: true → 1, false → 0"
        if pd.api.types.is_numeric_dtype(values):
            ok = values.isin([0, 1]).to_numpy()
            if not ok.all():
                raise LabelError(
                    f"{where}, column '{self.column}': row {int(np.flatnonzero(~ok)[0]) + 1}: a numeric label must be 0 or 1 "
                    f"({_counts_text(values.value_counts())}); a numeric target is a regression, not a class"
                )
            return values.to_numpy().astype("int64"), "numeric: 1 → 1, 0 → 0"
        tokens = values.astype(str).str.strip().str.casefold()
        positive = tokens.isin(POSITIVE_TOKENS).to_numpy()
        negative = tokens.isin(NEGATIVE_TOKENS).to_numpy()
        unknown = ~(positive | negative)
        if unknown.any():
            raise LabelError(
                f"{where}, column '{self.column}': row {int(np.flatnonzero(unknown)[0]) + 1}: a label value that is not "
                f"yes/no, true/false or 1/0 ({_counts_text(tokens.value_counts())}); set {self.field}.positive_class "
                f"in the policy to the value that means the positive class"
            )
        seen_pos = sorted(set(tokens[positive]))
        seen_neg = sorted(set(tokens[negative]))
        statement = "inferred from yes/no-like values: " + ", ".join(
            [*(f"{v} → 1" for v in seen_pos), *(f"{v} → 0" for v in seen_neg)])
        return positive.astype("int64"), statement

    def _by_positive_class(self, values: pd.Series, where: str) -> tuple[np.ndarray, str]:
        wanted = str(self.positive_class).strip().casefold()
        tokens = values.astype(str).str.strip().str.casefold()
        distinct = tokens.value_counts()
        if len(distinct) > 2:
            raise LabelError(
                f"{where}, column '{self.column}': a binary label needs two values, found {_counts_text(distinct)}"
            )
        if len(distinct) == 2 and wanted not in distinct.index:
            raise LabelError(
                f"{where}, column '{self.column}': neither of its two values is {self.field}.positive_class ({_counts_text(distinct)})"
            )
        return (tokens == wanted).to_numpy().astype("int64"), f"policy {self.field}.positive_class → 1, the other value → 0"


@dataclass(frozen=True)
class MulticlassLabel:
    """A label that is one of the declared classes, encoded as its index in the declared order."""

    column: str
    classes: tuple[str, ...]
    field: str = "model"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def encode(self, values: pd.Series, *, where: str) -> tuple[np.ndarray, str]:
        missing = values.isna().to_numpy()
        if missing.any():
            raise LabelError(f"{where}, column '{self.column}': row {int(np.flatnonzero(missing)[0]) + 1}: missing label")
        index = {str(c).strip().casefold(): i for i, c in enumerate(self.classes)}
        tokens = _tokens(values)
        codes = tokens.map(index)
        unknown = codes.isna().to_numpy()
        if unknown.any():
            raise LabelError(
                f"{where}, column '{self.column}': row {int(np.flatnonzero(unknown)[0]) + 1}: a label value that is not one "
                f"of {self.field}.classes ({_counts_text(tokens[unknown].value_counts())} outside them)"
            )
        return codes.to_numpy(dtype="int64"), f"declared classes in order: {self.n_classes} classes → 0..{self.n_classes - 1}"


@dataclass(frozen=True)
class NumericLabel:
    """A regression target: a number per row."""

    column: str
    field: str = "model"
    n_classes = None

    def encode(self, values: pd.Series, *, where: str) -> tuple[np.ndarray, str]:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna().to_numpy() | ~np.isfinite(numbers.to_numpy(dtype="float64", na_value=np.nan))
        if bad.any():
            problem = "missing target" if values.isna().to_numpy()[int(np.flatnonzero(bad)[0])] else "a target that is not a finite number"
            raise LabelError(f"{where}, column '{self.column}': row {int(np.flatnonzero(bad)[0]) + 1}: {problem}")
        return numbers.to_numpy(dtype="float64"), "numeric target (regression)"


Label = BinaryLabel | MulticlassLabel | NumericLabel


def _tokens(values: pd.Series) -> pd.Series:
    return values.map(lambda v: str(v).strip().casefold() if not isinstance(v, bool) else str(v).casefold())


def label_encoder(model, name: str = "model") -> Label:
    """How a declared model (``policy.ModelSpec``) reads its label column."""
    field = f"models.{name}"
    if model.task == "regression":
        return NumericLabel(model.label, field)
    if model.task == "multiclass":
        return MulticlassLabel(model.label, tuple(str(c) for c in model.classes), field)
    return BinaryLabel(model.label, None if model.positive_class is None else str(model.positive_class), field)


def class_counts(y: np.ndarray, n_classes: int = 2) -> dict[int, int]:
    """Rows per class index, every class (0 .. n_classes-1) listed even when empty."""
    return {c: int((y == c).sum()) for c in range(n_classes)}


def require_two_classes(counts: Mapping[int, int], *, column: str, where: str, field: str = "model") -> None:
    """A model needs two classes in its training set: raise before anything is trained."""
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) < 2:
        held = ", ".join(f"class {c}: {n:,} rows" for c, n in sorted(present.items())) or "no rows"
        raise LabelError(
            f"{where}, column '{column}': the training set holds one class ({held}); a model cannot learn from it. "
            f"Check the label column and {field}.positive_class"
        )


def require_learnable(label: Label, y: np.ndarray, *, where: str) -> None:
    """Raise before training when the rows cannot teach the model anything: one class, or a constant target."""
    if label.n_classes is not None:
        require_two_classes(class_counts(y, label.n_classes), column=label.column, where=where,
                            field=getattr(label, "field", "model"))
    elif len(np.unique(y)) < 2:
        raise LabelError(f"{where}, column '{label.column}': the target takes {len(np.unique(y))} value(s) over "
                         f"{len(y):,} rows; a regression cannot learn from it. Check {label.field}.label")


def check_labels(df: pd.DataFrame, file: str, policy) -> None:
    """A file of the features' dataset holds labels every model (and the cohorts) can read."""
    for name, model in policy.models.items():
        if model.label in df:
            label_encoder(model, name).encode(df[model.label], where=file)
    c = policy.cohorts
    if c is not None and c.label and c.label in df:
        BinaryLabel(c.label, None if c.positive_class is None else str(c.positive_class), "cohorts").encode(df[c.label], where=file)

"""What a tombstone keeps out: the subject's rows, under any identity rule, and their id inside text.

No Dagster import. A tombstone is a keyed hash made under the identity rule in force when it was
filed (``identity.normalise``). Rows arriving later are matched under that rule too, so changing the
rule never lets an erased subject back in. Inside free-text columns, every token that looks like an
e-mail address is normalised and hashed like an id; a token whose key is tombstoned is replaced by
``[erased]``. What cannot be caught from a keyed hash: the subject's name, phone number, or any
identifier other than their id appearing in someone else's text (the ledger never holds them); the
certificate says so under residual risk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from erasure_pipeline.core.freetext import candidates
from erasure_pipeline.core.identity import Keyer, rule_name

REDACTED = "[erased]"


def mentions_by_row(frame: pd.DataFrame | None, columns: Sequence[str], keyer: Keyer) -> list[list[str]]:
    """Per row of ``frame``, the keys (under ``keyer``'s rule) of the e-mail-like tokens in its text ``columns``."""
    cols = [c for c in columns if frame is not None and c in frame]
    if not cols or frame.empty:
        return [[] for _ in range(0 if frame is None else len(frame))]
    per_row = [[tok for text in texts for _s, _e, tok in candidates(str(text))] for texts in zip(*(frame[c].tolist() for c in cols), strict=True)]
    flat = [tok for toks in per_row for tok in toks]
    keys = iter(keyer.keys(flat)) if flat else iter(())
    return [[next(keys) for _ in toks] for toks in per_row]


def mentioned_keys(frame: pd.DataFrame | None, columns: Sequence[str], keyer: Keyer) -> Counter:
    """Keys (under ``keyer``'s rule) of every e-mail-like token in the text ``columns`` of ``frame``, counted."""
    return Counter(k for keys in mentions_by_row(frame, columns, keyer) for k in keys)


@dataclass(frozen=True)
class Tombstones:
    keyer: Keyer
    current: frozenset[str]
    """Tombstoned keys made under the keyer's (current) rule."""
    legacy: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Rule name -> tombstoned keys filed under that (earlier) rule."""

    @classmethod
    def load(cls, book, keyer: Keyer, shard: int | None = None) -> Tombstones:
        """The ledger's tombstones (not those of requests on hold); ``shard`` limits the current-rule ones."""
        by_rule = book.tombstones.by_rule()
        here = rule_name(keyer.rule)
        current = book.tombstones.active(shard) if shard is not None else by_rule.get(here, set())
        legacy = {rule: frozenset(keys) for rule, keys in by_rule.items() if rule != here}
        return cls(keyer, frozenset(current), legacy)

    def __bool__(self) -> bool:
        return bool(self.current) or any(self.legacy.values())

    def _keys(self, ids: Sequence[str]) -> np.ndarray:
        """Per id: tombstoned under the current rule or any legacy rule."""
        hit = np.zeros(len(ids), dtype=bool)
        if self.current:
            hit |= np.isin(np.asarray(self.keyer.keys(ids), dtype=object), list(self.current))
        for rule, keys in self.legacy.items():
            if keys:
                hit |= np.isin(np.asarray(self.keyer.under(rule.split(",") if rule else ()).keys(ids), dtype=object), list(keys))
        return hit

    def keys_in(self, frames: Iterable[pd.DataFrame | None], subject_column: str = "subject_id") -> set[str]:
        """The current keys of every subject in ``frames`` (with the subject id column and ``subject_key``)
        that a tombstone covers, under whichever rule it was filed."""
        out: set[str] = set()
        for df in frames:
            if df is None or df.empty:
                continue
            out.update(df.loc[df["subject_key"].isin(self.current), "subject_key"])
            if self.legacy and subject_column in df:
                ids = df[subject_column].astype(str).tolist()
                out.update(df.loc[self._keys(ids) & ~df["subject_key"].isin(self.current).to_numpy(), "subject_key"])
        return out

    def redact(self, df: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, int]:
        """``df`` with every tombstoned id inside the text ``columns`` replaced by ``[erased]``; and how many."""
        if not self or df.empty:
            return df, 0
        total = 0
        out = df
        for col in columns:
            if col not in df:
                continue
            texts = df[col].astype(str).tolist()
            spans = [candidates(t) for t in texts]
            tokens = [tok for row in spans for _s, _e, tok in row]
            if not tokens:
                continue
            hit = iter(self._keys(tokens).tolist())
            changed = {}
            for i, (text, row) in enumerate(zip(texts, spans, strict=True)):
                marks = [(s, e) for s, e, _tok in row if next(hit)]
                if marks:
                    for s, e in reversed(marks):
                        text = text[:s] + REDACTED + text[e:]
                    changed[i] = text
                    total += len(marks)
            if changed:
                if out is df:
                    out = df.copy()
                values = out[col].to_numpy(dtype=object).copy()
                for i, text in changed.items():
                    values[i] = text
                out[col] = values
        return out, total

    def mentions(self, texts: Iterable[str], key: str, rule: Sequence[str]) -> int:
        """How many e-mail-like tokens in ``texts`` are the subject with ``key`` (filed under ``rule``)."""
        keyer = self.keyer.under(rule)
        tokens = [tok for t in texts for _s, _e, tok in candidates(str(t))]
        return sum(k == key for k in keyer.keys(tokens)) if tokens else 0

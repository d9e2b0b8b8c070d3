"""Free text people write beside a request (why it was filed, why it is held or extended) may quote the subject.

It is cleaned before it is stored or printed: every token that is the subject's own id under the identity
rule (or a known form of it), and every e-mail-like or phone-like token, becomes a placeholder. The text
is kept otherwise, so "asked by e-mail on 3 May" survives and "asked by ava@example.com" does not.
No pandas, no Dagster: the CLI's quick commands use it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from erasure_pipeline.core.identity import Keyer, without_format

SUBJECT, EMAIL, PHONE = "[subject id]", "[e-mail]", "[phone]"
# Broad on purpose: a candidate is any run of non-separator characters around an @ (full-width too);
# normalisation and the keyed hash decide whether it is a tombstoned id.
_CANDIDATE = re.compile(r"[^\s<>()\[\]{},;:\"'`]+[@\uFF20][^\s<>()\[\]{},;:\"'`]+")
_TRAILING = ".!?"
_TOKEN = re.compile(r"[^\s<>()\[\]{},;\"'`]+")
_PHONE = re.compile(r"(?<![\w@])\+?\d[\d ().\-]{5,}\d(?![\w@])")


def candidates(text: str) -> list[tuple[int, int, str]]:
    """(start, end, token) of every e-mail-like token in ``text``, trailing sentence punctuation left out."""
    out = []
    for m in _CANDIDATE.finditer(text):
        token = m.group(0).rstrip(_TRAILING)
        out.append((m.start(), m.start() + len(token), token))
    return out


def _replace(text: str, spans: list[tuple[int, int]], placeholder: str) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + placeholder + text[end:]
    return text


def scrub(text: str, keyer: Keyer | None = None, subject_keys: Iterable[str] = (), subject_ids: Iterable[str] = ()) -> tuple[str, int]:
    """(``text`` without identifiers, how many were replaced). A token is the subject's when its key under
    ``keyer`` is one of ``subject_keys``, or when it is one of ``subject_ids`` (any case); then e-mail-like
    and phone-like tokens of anyone."""
    clean = unicodedata.normalize("NFKC", without_format(text))
    keys, count = set(subject_keys), 0
    for sid in {s.strip() for s in subject_ids if s and s.strip()}:
        clean, n = re.subn(re.escape(unicodedata.normalize("NFKC", without_format(sid)).strip()), SUBJECT, clean, flags=re.IGNORECASE)
        count += n
    if keyer is not None and keys:
        tokens = [(m.start(), m.start() + len(m.group(0).rstrip(_TRAILING + ":")), m.group(0).rstrip(_TRAILING + ":"))
                  for m in _TOKEN.finditer(clean)]
        hits = [(s, e) for (s, e, tok), key in zip(tokens, keyer.keys([t for _, _, t in tokens]), strict=True)
                if tok and tok != SUBJECT and key in keys]
        clean, count = _replace(clean, hits, SUBJECT), count + len(hits)
    emails = [(s, e) for s, e, _tok in candidates(clean)]
    clean, count = _replace(clean, emails, EMAIL), count + len(emails)
    phones = [(m.start(), m.end()) for m in _PHONE.finditer(clean) if sum(c.isdigit() for c in m.group(0)) >= 7]
    return _replace(clean, phones, PHONE), count + len(phones)

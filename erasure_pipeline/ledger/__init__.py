"""The erasure ledger (pure Python + SQLAlchemy; no Dagster import)."""

from __future__ import annotations

import functools

from erasure_pipeline.ledger.core import Claim, Ledger, LedgerError, utcnow

__all__ = ["Claim", "Ledger", "LedgerError", "open_ledger", "utcnow"]


@functools.lru_cache(maxsize=8)
def open_ledger(url: str, schema: str = "erasure_ledger") -> Ledger:
    """One migrated ledger per URL and process (engines pool their connections)."""
    ledger = Ledger(url, schema=schema)
    ledger.migrate()
    return ledger

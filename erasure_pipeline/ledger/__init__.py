"""The erasure ledger (pure Python + SQLAlchemy; no Dagster import)."""

from __future__ import annotations

import functools

from erasure_pipeline.ledger.core import Anchor, AuditReport, Claim, Ledger, LedgerError, LedgerUnavailable, utcnow

__all__ = ["Anchor", "AuditReport", "Claim", "Ledger", "LedgerError", "LedgerUnavailable", "open_ledger", "utcnow"]


@functools.lru_cache(maxsize=8)
def open_ledger(url: str, schema: str = "erasure_ledger") -> Ledger:
    """One migrated ledger per URL and process (engines pool their connections), signing with the
    project's evidence key (``signing.load_signer``)."""
    from erasure_pipeline import home
    from erasure_pipeline.signing import load_signer

    ledger = Ledger(url, schema=schema, signer=load_signer(home.project_home()))
    ledger.migrate()
    return ledger

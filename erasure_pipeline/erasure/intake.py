"""Intake: a subject id becomes a request and a tombstone, and goes no further. No Dagster, no pandas.

The CLI, the Python API and (later) any HTTP intake call these, so normalisation, tombstones and
dedupe are one code path. The raw id is validated and keyed here; only its keyed hash is stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from erasure_pipeline.core import identity
from erasure_pipeline.core.policy import Policy, load_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.ledger import Ledger, ledger_for


def erase(subject_id: str, reason: str | None = None, *, policy: Policy | None = None, ledger: Ledger | None = None,
          settings: Settings | None = None) -> tuple[str, bool]:
    """File an erasure request: validate, hash, tombstone, request. Returns (request id, created)."""
    return erase_many([subject_id], reason, policy=policy, ledger=ledger, settings=settings)[0]


def erase_many(subject_ids: Iterable[str], reason: str | None = None, *, policy: Policy | None = None, ledger: Ledger | None = None,
               settings: Settings | None = None) -> list[tuple[str, bool]]:
    """Bulk intake: every id validated first (nothing is filed if one is bad), then filed in a few transactions."""
    ids = [identity.validate_subject_id(s) for s in subject_ids]
    settings = settings or Settings.from_environ()
    policy = policy or load_policy(settings=settings)
    book = ledger or ledger_for(settings)
    keyer = policy.keyer(identity.load_pepper(settings.pepper, settings.home))
    keys = keyer.keys(ids)
    return book.requests.file_many([(k, keyer.shard(k)) for k in keys], due_days=policy.erasure_due_days, reason=reason,
                                   rule=identity.rule_name(keyer.rule))

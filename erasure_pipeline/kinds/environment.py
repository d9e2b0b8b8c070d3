"""Opening what node computations use, from the settings: the one place stores, ledger and keys are wired.

The Dagster resources (``defs/resources.py``) build ``Settings`` from their own fields and call this;
so do the CLI's commands that need the stores. No Dagster import.
"""

from __future__ import annotations

from erasure_pipeline.core.identity import load_pepper
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.core.signing import signer_for
from erasure_pipeline.kinds.base import Env, Registry
from erasure_pipeline.kinds.registry import REGISTRY, graph_for
from erasure_pipeline.ledger import ledger_for
from erasure_pipeline.ledger.keys import KeyRing
from erasure_pipeline.stores.factory import lake_at, vector_store
from erasure_pipeline.stores.kms import KmsNotConfigured, kms_at


def open_env(policy: Policy, settings: Settings, registry: Registry = REGISTRY) -> Env:
    signer = signer_for(settings)
    book = ledger_for(settings, signer)
    return Env(policy=policy, graph=graph_for(policy, registry), lake=lake_at(settings.lake), landing=lake_at(settings.landing),
               vectors=vector_store(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_path),
               ledger=book, pepper=load_pepper(settings.pepper, settings.home), kinds=registry, signer=signer,
               evidence=lake_at(settings.evidence), keys=key_ring(book, settings))


def key_ring(book, settings: Settings) -> KeyRing:
    """The key store in the ledger's database, its key-encryption keys in the KMS the settings name (one per
    ledger and KMS in a process: it caches unwrapped root and group keys)."""
    cache_key = (settings.kms_url, book.url, book.db.schema)
    ring = _RINGS.get(cache_key)
    if ring is None or ring.db is not book.db:
        kms = kms_at(settings.kms_url) if settings.kms or not settings.is_production else NoSharedKms(settings.kms_url)
        ring = _RINGS[cache_key] = KeyRing(book.db, book.audit, kms)
    return ring


class NoSharedKms:
    """Where the ledger, lake or landing are shared, a key file beside one machine's home is no KMS: every
    other worker would make keys of its own. Nothing is sealed until ``ERASURE_PIPELINE_KMS`` says where."""

    def __init__(self, default: str):
        self.default = default

    def describe(self) -> str:
        return f"unset (a shared deployment does not use {self.default})"

    def _refuse(self, *_args):
        raise KmsNotConfigured("datasets declare personal fields and the ledger, lake or landing is shared: set "
                               "ERASURE_PIPELINE_KMS to aws-kms:alias/NAME (or local:PATH on a volume every worker mounts)")

    create_version = wrap = unwrap = destroy = exists = _refuse


_RINGS: dict[tuple, KeyRing] = {}

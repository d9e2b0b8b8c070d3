"""The stores and the ledger the environment points at, for tests to look into directly."""

from __future__ import annotations

from erasure_pipeline.core.policy import load_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.kinds.base import Env
from erasure_pipeline.kinds.environment import open_env
from erasure_pipeline.ledger import Ledger, ledger_for
from erasure_pipeline.stores.factory import lake_at, vector_store
from erasure_pipeline.stores.lake import Lake
from erasure_pipeline.stores.vectors import VectorStore

__all__ = ["default_env", "default_ledger", "keys", "lake", "lake_at", "landing", "settings", "table", "vectors"]


def settings() -> Settings:
    return Settings.from_environ()


def lake() -> Lake:
    return lake_at(Settings.from_environ().lake)


def landing() -> Lake:
    return lake_at(Settings.from_environ().landing)


def vectors() -> VectorStore:
    s = Settings.from_environ()
    return vector_store(s.qdrant_url, s.qdrant_api_key, s.qdrant_path)


def default_ledger() -> Ledger:
    return ledger_for(Settings.from_environ())


def default_env() -> Env:
    s = Settings.from_environ()
    return open_env(load_policy(settings=s), s)


def keys():
    """The key store the environment points at (its KEKs in the KMS it names)."""
    from erasure_pipeline.kinds.environment import key_ring

    return key_ring(default_ledger(), Settings.from_environ())


def table(store: Lake, asset: str, partition: str):
    """A node partition as a frame, whatever its layout (bucket files and a manifest, or one table), sealed
    personal fields opened with the environment's key store; it must exist."""
    from erasure_pipeline.stores import buckets as bk
    from erasure_pipeline.stores import lake as lk

    df = bk.read_buckets(store, asset, partition, keys=keys()) if store.read_bytes(bk.manifest_name(asset, partition)) \
        else lk.read_table(store, asset, partition)
    if df is None:
        raise lk.not_materialised(store, asset, partition)
    return df

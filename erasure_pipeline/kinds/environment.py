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
from erasure_pipeline.stores.factory import lake_at, vector_store


def open_env(policy: Policy, settings: Settings, registry: Registry = REGISTRY) -> Env:
    signer = signer_for(settings)
    return Env(policy=policy, graph=graph_for(policy, registry), lake=lake_at(settings.lake), landing=lake_at(settings.landing),
               vectors=vector_store(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_path),
               ledger=ledger_for(settings, signer), pepper=load_pepper(settings.pepper, settings.home), kinds=registry, signer=signer,
               evidence=lake_at(settings.evidence))

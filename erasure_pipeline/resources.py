"""Dagster resources: thin, immutable wrappers over the back-ends in ``settings``.

Every field defaults to ``None``, meaning "whatever the environment says when the run
starts" (see ``settings``), so one set of definitions serves the embedded default and
production; secrets are read at run time, never shown in the UI.
"""

from __future__ import annotations

import dagster as dg

from erasure_pipeline import home, identity, settings
from erasure_pipeline.ledger import Ledger, open_ledger
from erasure_pipeline.storage.lake import Lake
from erasure_pipeline.storage.vectors import VectorStore


class LakeResource(dg.ConfigurableResource):
    """Where partitions live: a local directory or ``s3://bucket/prefix``."""

    url: str | None = None

    def get(self) -> Lake:
        return settings.lake(self.url)


class LandingResource(dg.ConfigurableResource):
    """Where source files land: a local directory or ``s3://bucket/prefix``."""

    url: str | None = None

    def get(self) -> Lake:
        return settings.landing(self.url)


class VectorStoreResource(dg.ConfigurableResource):
    """Qdrant: embedded under the project home, or a server (``url``; ``api_key`` via ``dg.EnvVar``)."""

    url: str | None = None
    api_key: str | None = None
    path: str | None = None

    def get(self) -> VectorStore:
        return settings.vector_store(self.url, self.api_key, self.path)


class PepperResource(dg.ConfigurableResource):
    """The HMAC pepper, read from ``$ERASURE_PIPELINE_PEPPER`` when a run needs it (never config)."""

    def get(self) -> bytes:
        return identity.load_pepper(home.project_home())


class LedgerResource(dg.ConfigurableResource):
    """The erasure ledger: ``$ERASURE_PIPELINE_LEDGER_URL`` or a SQLite file in the project home."""

    url: str | None = None
    db_schema: str = "erasure_ledger"

    def get(self) -> Ledger:
        return open_ledger(settings.ledger_url(self.url), self.db_schema)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "lake": LakeResource(),
        "landing": LandingResource(),
        "vectors": VectorStoreResource(),
        "pepper": PepperResource(),
        "ledger": LedgerResource(),
    }

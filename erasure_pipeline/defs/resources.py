"""Dagster resources: where the pipeline's data lives, and its keys, as configuration the UI shows.

One resource, ``pipeline``, is what every op, asset, sensor and schedule takes; its nested resources
(also listed on their own, so the UI's Resources page shows each) own their configuration:

| resource | field | from |
|---|---|---|
| ``lake``, ``landing``, ``evidence`` | ``url`` | ``dg.EnvVar("ERASURE_PIPELINE_LAKE_URL")`` / ``…_LANDING_URL`` / ``…_EVIDENCE_URL``, else ``<home>/lake``, ``<home>/landing``, ``<home>/evidence`` |
| ``ledger`` | ``url`` (secret) | ``dg.EnvVar("ERASURE_PIPELINE_LEDGER_URL")``, else ``sqlite:///<home>/ledger.sqlite`` |
| ``vectors`` | ``url``, ``api_key`` (secret), ``path`` | ``dg.EnvVar("ERASURE_PIPELINE_QDRANT_URL")`` / ``…_QDRANT_API_KEY``, else Qdrant Edge at ``<home>/qdrant`` |
| ``secrets`` | ``pepper``, ``signing_key`` (secrets), ``local_dir``, ``kms`` | ``dg.EnvVar("ERASURE_PIPELINE_PEPPER")`` / ``…_SIGNING_KEY`` / ``…_KMS``, else local key files generated once in ``local_dir`` (the KEK file beside it) |

A variable that is set becomes a ``dg.EnvVar``: Dagster resolves it when a run starts and the UI
shows the variable's name, never its value. One set of definitions so serves the embedded default and
production, chosen by environment (``resources_for(Settings.from_environ())``).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from erasure_pipeline.core.policy import Policy
from erasure_pipeline.core.settings import VARIABLES, Settings
from erasure_pipeline.kinds.base import Env
from erasure_pipeline.kinds.environment import open_env
from erasure_pipeline.ledger import Ledger, ledger_for

SECRET = {"dagster__is_secret": True}


class LakeResource(dg.ConfigurableResource):
    """A lake (or the landing location): a local directory or ``s3://bucket/prefix``."""

    url: str = Field(description="A local directory or s3://bucket/prefix (S3 credentials from boto3's environment).")


class LedgerResource(dg.ConfigurableResource):
    """The erasure ledger: a SQLAlchemy URL (SQLite by default, Postgres in production)."""

    url: str = Field(description="SQLAlchemy URL; on Postgres use postgresql+psycopg2://", json_schema_extra=SECRET)
    db_schema: str = Field("erasure_ledger", description="The ledger's own schema on Postgres.")


class VectorsResource(dg.ConfigurableResource):
    """Qdrant: a server (``url``, one collection filtered by shard) or Qdrant Edge embedded under ``path``."""

    url: str | None = Field(None, description="A Qdrant server; unset: Qdrant Edge embedded under path.")
    api_key: str | None = Field(None, json_schema_extra=SECRET)
    path: str = Field(description="Where Qdrant Edge keeps one shard per data shard (when no url).")


class SecretsResource(dg.ConfigurableResource):
    """The HMAC pepper that keys subject ids, and the Ed25519 key that signs certificates and audit rows."""

    pepper: str | None = Field(None, description="Unset: a local pepper generated once in local_dir.", json_schema_extra=SECRET)
    signing_key: str | None = Field(None, description="Unset: a local key generated once in local_dir.", json_schema_extra=SECRET)
    local_dir: str = Field(description="Where local default keys live when the variables are unset (the project home).")
    kms: str | None = Field(None, description="Key-encryption keys of the sealed personal fields: local:PATH or aws-kms:alias/NAME "
                                              "(unset: a key file beside the home, <home>.kek.json).")
    allow_local_signing_key: bool = Field(False, description="Accept a signing key generated in local_dir where the ledger is shared.")


class RecipientToken(dg.Config):
    name: str = Field(description="The recipient, as the declaration names it.")
    token: str | None = Field(None, description="Its bearer token (dg.EnvVar of the declared token_env).", json_schema_extra=SECRET)


class RecipientsResource(dg.ConfigurableResource):
    """The recipients' bearer tokens, each read from the variable the declaration names (``token_env``)."""

    tokens: list[RecipientToken] = Field(default_factory=list)

    def by_name(self) -> dict[str, str | None]:
        return {t.name: t.token for t in self.tokens}


def recipients_resource(policy) -> RecipientsResource:
    return RecipientsResource(tokens=[RecipientToken(name=r.name, token=dg.EnvVar(r.token_env)) for r in policy.recipients if r.token_env])


class PipelineResource(dg.ConfigurableResource):
    """Every store the pipeline reads and writes, and its keys: what every op, asset and tick takes."""

    home: str = Field(description="The project home.")
    lake: LakeResource
    landing: LakeResource
    evidence: LakeResource
    ledger: LedgerResource
    vectors: VectorsResource
    secrets: SecretsResource

    def settings(self) -> Settings:
        unresolved = [f"{r}.{f}" for r in ("lake", "landing", "evidence", "ledger", "vectors", "secrets")
                      for f, v in getattr(self, r).__dict__.items() if isinstance(v, dg.EnvVar)]
        if unresolved:  # an EnvVar read before Dagster resolved it is the variable's name, not its value
            raise RuntimeError(f"pipeline resource used unresolved ({', '.join(unresolved)}): use defs.resources.resolve()")
        return Settings(home=Path(self.home), lake_url=self.lake.url, landing_url=self.landing.url, evidence_url=self.evidence.url,
                        ledger_url=self.ledger.url,
                        ledger_schema=self.ledger.db_schema, qdrant_url=self.vectors.url or None, qdrant_api_key=self.vectors.api_key,
                        qdrant_dir=Path(self.vectors.path), pepper=self.secrets.pepper, signing_key=self.secrets.signing_key,
                        kms=self.secrets.kms, allow_local_signing_key=self.secrets.allow_local_signing_key)

    def env(self, policy: Policy) -> Env:
        """The stores, the ledger and the keys a node computation uses."""
        return open_env(policy, self.settings())

    def book(self) -> Ledger:
        """The ledger alone (ticks read it)."""
        return ledger_for(self.settings())


def _value(settings: Settings, name: str, default: str | None):
    """The setting as a ``dg.EnvVar`` when the environment sets it, else its embedded default."""
    return dg.EnvVar(VARIABLES[name]) if settings.is_set(name) and name not in ("home", "allow_local_signing_key") else default


def resources_for(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources, each field an ``EnvVar`` where the environment sets it; nested resources listed on their own too."""
    home = settings.home
    lake = LakeResource(url=_value(settings, "lake_url", str(home / "lake")))
    landing = LakeResource(url=_value(settings, "landing_url", str(home / "landing")))
    evidence = LakeResource(url=_value(settings, "evidence_url", str(home / "evidence")))
    ledger = LedgerResource(url=_value(settings, "ledger_url", f"sqlite:///{home / 'ledger.sqlite'}"))
    vectors = VectorsResource(url=_value(settings, "qdrant_url", None), api_key=_value(settings, "qdrant_api_key", None),
                              path=str(settings.qdrant_path))
    secrets = SecretsResource(pepper=_value(settings, "pepper", None), signing_key=_value(settings, "signing_key", None),
                              local_dir=str(home), allow_local_signing_key=settings.allow_local_signing_key,
                              kms=_value(settings, "kms", None))
    pipeline = PipelineResource(home=str(home), lake=lake, landing=landing, evidence=evidence, ledger=ledger, vectors=vectors,
                                secrets=secrets)
    return {"pipeline": pipeline, "lake": lake, "landing": landing, "evidence": evidence, "ledger": ledger, "vectors": vectors,
            "secrets": secrets}


def resolve(pipeline: PipelineResource, instance: dg.DagsterInstance | None = None) -> PipelineResource:
    """The resource with its ``EnvVar`` fields resolved, as a run gets it: for use outside a run (the CLI's runner).
    Without ``instance`` Dagster makes an ephemeral one to build it in."""
    with dg.build_resources({"pipeline": pipeline}, instance=instance) as built:
        return built.pipeline

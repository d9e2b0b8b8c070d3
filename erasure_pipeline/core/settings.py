"""Where the project keeps its state and which back-ends it uses: the one module that reads the environment.

Everything is read when asked for (``Settings.from_environ()``), never at import. The Dagster layer
turns each variable that is set into a ``dg.EnvVar`` on its resources (``defs/resources.py``), so the
UI shows where data lives and the name of each secret, never its value; the CLI's quick commands,
which import no Dagster, read the same table here.

| variable | default | production |
|---|---|---|
| ``ERASURE_PIPELINE_HOME`` | ``./.erasure_home`` | a volume |
| ``ERASURE_PIPELINE_POLICY`` | ``./policy.yaml``, else ``<home>/policy.yaml`` (none: an error) | the declaration's path |
| ``ERASURE_PIPELINE_LAKE_URL`` | ``<home>/lake`` | ``s3://bucket/prefix`` |
| ``ERASURE_PIPELINE_LANDING_URL`` | ``<home>/landing`` | ``s3://bucket/prefix`` |
| ``ERASURE_PIPELINE_EVIDENCE_URL`` | ``<home>/evidence`` | ``s3://bucket/prefix`` (certificates as JSON and Markdown) |
| ``ERASURE_PIPELINE_LEDGER_URL`` | ``sqlite:///<home>/ledger.sqlite`` | ``postgresql+psycopg2://…`` |
| ``ERASURE_PIPELINE_QDRANT_URL`` (+ ``_QDRANT_API_KEY``) | Qdrant Edge under ``<home>/qdrant`` | ``https://qdrant:6333`` |
| ``ERASURE_PIPELINE_PEPPER`` | a key generated once in ``<home>/pepper.key`` | a secret |
| ``ERASURE_PIPELINE_SIGNING_KEY`` | a key generated once in ``<home>/signing.key`` | a secret (never beside the ledger) |
| ``ERASURE_PIPELINE_KMS`` | a key file beside the home, ``local:<home>.kek.json`` (never inside it) | ``aws-kms:alias/NAME`` |
| ``ERASURE_PIPELINE_ALLOW_LOCAL_SIGNING_KEY`` | unset | ``1`` only to accept a key generated beside a shared ledger |
| ``ERASURE_PIPELINE_EXECUTOR`` | ``in_process`` | ``multiprocess[:N]`` or ``k8s`` |
| ``DAGSTER_HOME`` | ``<home>/dagster`` | the instance's folder |

S3 endpoints and credentials come from boto3's own environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``…), so MinIO and other S3-compatible stores need no code change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_HOME = ".erasure_home"

VARIABLES: dict[str, str] = {
    "home": "ERASURE_PIPELINE_HOME",
    "policy": "ERASURE_PIPELINE_POLICY",
    "lake_url": "ERASURE_PIPELINE_LAKE_URL",
    "landing_url": "ERASURE_PIPELINE_LANDING_URL",
    "evidence_url": "ERASURE_PIPELINE_EVIDENCE_URL",
    "ledger_url": "ERASURE_PIPELINE_LEDGER_URL",
    "qdrant_url": "ERASURE_PIPELINE_QDRANT_URL",
    "qdrant_api_key": "ERASURE_PIPELINE_QDRANT_API_KEY",
    "pepper": "ERASURE_PIPELINE_PEPPER",
    "signing_key": "ERASURE_PIPELINE_SIGNING_KEY",
    "kms": "ERASURE_PIPELINE_KMS",
    "executor": "ERASURE_PIPELINE_EXECUTOR",
    "dagster_home": "DAGSTER_HOME",
    "allow_local_signing_key": "ERASURE_PIPELINE_ALLOW_LOCAL_SIGNING_KEY",
}
"""Each setting and the environment variable it comes from: the one list of them."""

SECRETS = frozenset({"ledger_url", "qdrant_api_key", "pepper", "signing_key"})
"""Settings whose value is never shown (a ledger URL may carry a password)."""


@dataclass(frozen=True)
class Settings:
    """The environment's settings; ``None`` means "not set: the embedded default"."""

    home: Path
    policy: Path | None = None
    lake_url: str | None = None
    landing_url: str | None = None
    evidence_url: str | None = None
    ledger_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    pepper: str | None = None
    signing_key: str | None = None
    kms: str | None = None
    """Where the key-encryption keys of the sealed personal fields live: ``local:PATH`` or ``aws-kms:alias/NAME``."""
    executor: str | None = None
    dagster_home: Path | None = None
    qdrant_dir: Path | None = None
    """Where Qdrant Edge keeps its shards (no variable: ``<home>/qdrant``; a resource may say otherwise)."""
    ledger_schema: str = "erasure_ledger"
    """The ledger's schema on Postgres (no variable; a resource may say otherwise)."""
    allow_local_signing_key: bool = False
    """Accept a signing key generated in the home even where the ledger, lake or landing is shared."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {name: (env.get(var) or None) for name, var in VARIABLES.items()}
        home = Path(values.pop("home") or DEFAULT_HOME).expanduser()
        policy, dagster = values.pop("policy"), values.pop("dagster_home")
        values["allow_local_signing_key"] = (values["allow_local_signing_key"] or "").strip().lower() in ("1", "true", "yes")
        return cls(home=(home if home.is_absolute() else Path.cwd() / home).resolve(),
                   policy=Path(policy).expanduser().resolve() if policy else None,
                   dagster_home=Path(dagster) if dagster else None, **values)

    @staticmethod
    def declared_secrets(names: Mapping[str, str | None], environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
        """Secrets a declaration names by variable (``who -> variable``), read where the CLI runs outside Dagster
        (the jobs read the same variables through ``dg.EnvVar``)."""
        env = os.environ if environ is None else environ
        return {who: (env.get(var) or None) if var else None for who, var in names.items()}

    def is_set(self, name: str) -> bool:
        """Whether the setting came from the environment (not an embedded default)."""
        return name == "home" or getattr(self, name) not in (None, False)

    @property
    def lake(self) -> str:
        return self.lake_url or str(self.home / "lake")

    @property
    def landing(self) -> str:
        return self.landing_url or str(self.home / "landing")

    @property
    def evidence(self) -> str:
        """Where each certificate is kept as JSON and Markdown for auditors (the ledger holds the signed original)."""
        return self.evidence_url or str(self.home / "evidence")

    @property
    def ledger(self) -> str:
        return self.ledger_url or f"sqlite:///{self.home / 'ledger.sqlite'}"

    @property
    def kms_url(self) -> str:
        """The KMS in effect: ``$ERASURE_PIPELINE_KMS``, else a key file beside the home (a copy of the home
        must not carry the key that opens it)."""
        return self.kms or f"local:{self.home.parent / (self.home.name + '.kek.json')}"

    @property
    def qdrant_path(self) -> Path:
        return self.qdrant_dir or self.home / "qdrant"

    @property
    def instance_dir(self) -> Path:
        """Dagster's instance folder: ``$DAGSTER_HOME``, else ``<home>/dagster``."""
        return self.dagster_home or self.home / "dagster"

    @property
    def is_production(self) -> bool:
        """Shared back-ends (a ledger server, an S3 lake or landing): a local key file is not enough there."""
        shared = [u for u in (self.ledger_url, self.lake_url, self.landing_url, self.evidence_url) if u]
        return any(not u.startswith(("sqlite", "/", ".", "file:")) for u in shared)

    def described(self) -> dict[str, str]:
        """Every setting for a person to read: values, except secrets (shown as set or not)."""
        out = {}
        for f in fields(self):
            if f.name not in VARIABLES:
                continue
            value = getattr(self, f.name)
            if f.name == "allow_local_signing_key":
                out[f.name] = str(value).lower()
            elif f.name in SECRETS:
                out[f.name] = f"set (${VARIABLES[f.name]})" if value else "not set"
            else:
                out[f.name] = str(value) if value is not None else "default"
        return out


def use_dagster_home(settings: Settings) -> Path:
    """Point Dagster at the project's instance: ``$DAGSTER_HOME`` if set, else ``<home>/dagster`` (which
    this sets as ``$DAGSTER_HOME`` for Dagster's own readers in this process)."""
    path = settings.instance_dir
    if settings.dagster_home is None:
        os.environ[VARIABLES["dagster_home"]] = str(path)
    return path


def policy_path(settings: Settings | None = None) -> tuple[Path | None, bool]:
    """(the policy file in effect, whether the environment named it): ``$ERASURE_PIPELINE_POLICY``, else
    ``policy.yaml`` in the working directory, else ``policy.yaml`` in the project home; None: there is none."""
    settings = settings or Settings.from_environ()
    if settings.policy:
        return settings.policy, True
    found = [p for p in (Path.cwd() / "policy.yaml", settings.home / "policy.yaml") if p.is_file()]
    return (found[0].resolve() if found else None), False

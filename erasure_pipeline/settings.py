"""Back-ends chosen by environment, resolved when used (never at import).

| variable | default | production |
|---|---|---|
| ``ERASURE_PIPELINE_LAKE_URL`` | ``<home>/lake`` | ``s3://bucket/prefix`` |
| ``ERASURE_PIPELINE_LANDING_URL`` | ``<home>/landing`` | ``s3://bucket/prefix`` |
| ``ERASURE_PIPELINE_QDRANT_URL`` (+ ``_QDRANT_API_KEY``) | Qdrant Edge under ``<home>/qdrant`` | ``https://qdrant:6333`` |
| ``ERASURE_PIPELINE_LEDGER_URL`` | ``sqlite:///<home>/ledger.sqlite`` | ``postgresql+psycopg2://…`` |

S3 endpoints and credentials come from boto3's own environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``…), so MinIO and other S3-compatible stores need no code change.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from erasure_pipeline import home
from erasure_pipeline.storage.lake import Lake, LocalLake, S3Lake
from erasure_pipeline.storage.vectors import EdgeStore, VectorStore

LAKE_ENV = "ERASURE_PIPELINE_LAKE_URL"
LANDING_ENV = "ERASURE_PIPELINE_LANDING_URL"
QDRANT_URL_ENV = "ERASURE_PIPELINE_QDRANT_URL"
QDRANT_KEY_ENV = "ERASURE_PIPELINE_QDRANT_API_KEY"
LEDGER_ENV = "ERASURE_PIPELINE_LEDGER_URL"


def lake_at(url: str) -> Lake:
    """A lake from ``s3://bucket/prefix`` or a local directory path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("an s3:// lake URL needs a bucket: s3://bucket/prefix")
        return S3Lake(bucket=parsed.netloc, prefix=parsed.path.strip("/"), endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported lake URL scheme {parsed.scheme!r} (use a path or s3://)")
    return LocalLake(Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve())


def lake(url: str | None = None) -> Lake:
    return lake_at(url or os.environ.get(LAKE_ENV) or str(home.lake_root()))


def landing(url: str | None = None) -> Lake:
    return lake_at(url or os.environ.get(LANDING_ENV) or str(home.landing_root()))


def vector_store(url: str | None = None, api_key: str | None = None, path: str | None = None) -> VectorStore:
    url = url or os.environ.get(QDRANT_URL_ENV) or None
    if url:
        from erasure_pipeline.storage.qdrant_server import ClientStore

        return ClientStore(url=url, api_key=api_key or os.environ.get(QDRANT_KEY_ENV) or None)
    return EdgeStore(root=Path(path).resolve() if path else home.qdrant_root())


def ledger_url(url: str | None = None) -> str:
    return url or os.environ.get(LEDGER_ENV) or f"sqlite:///{home.ledger_path()}"

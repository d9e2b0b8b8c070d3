"""Stores from their addresses: a lake (or landing) from a URL, the vector store from a server URL or a path.

The addresses come from the resources (``defs/resources.py``) or, in the CLI's quick commands, from
``core.settings``; this module only turns an address into a store. S3 endpoints and credentials come
from boto3's own environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``…).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from erasure_pipeline.stores.lake import Lake
from erasure_pipeline.stores.lake_backends import LocalLake, S3Lake
from erasure_pipeline.stores.vectors import EdgeStore, VectorStore


def lake_at(url: str) -> Lake:
    """A lake from ``s3://bucket/prefix`` or a local directory path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("an s3:// lake URL needs a bucket: s3://bucket/prefix")
        return S3Lake(bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"unsupported lake URL scheme {parsed.scheme!r} (use a path or s3://)")
    return LocalLake(Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve())


def vector_store(url: str | None, api_key: str | None, path: Path) -> VectorStore:
    """A Qdrant server at ``url`` (one shared collection), else Qdrant Edge embedded under ``path``."""
    if url:
        # qdrant-client is imported only for a server: the embedded default never loads it.
        from erasure_pipeline.stores.qdrant import ClientStore

        return ClientStore(url=url, api_key=api_key or None)
    return EdgeStore(root=Path(path).resolve())

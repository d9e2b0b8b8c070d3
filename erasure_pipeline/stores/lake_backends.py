"""The lake's two back-ends: a local directory (the default) and an S3 bucket (boto3).

Both implement ``stores.lake.Lake``. Object names come from asset names and partition keys only (never from data)
and are checked here; each write is atomic per object (``os.replace``; one PUT). On a versioned bucket,
``purge_noncurrent`` removes the old versions an erasure rewrite leaves behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from erasure_pipeline.stores.lake import ObjectVersion


def _check_name(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid lake object name: {name!r}")
    return name


@dataclass
class LocalLake:
    root: Path

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def read_bytes(self, name: str) -> bytes | None:
        with contextlib.suppress(FileNotFoundError):  # not exists()-then-read: deleted in between is "not there"
            return self._path(name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        names = []
        # Walk only below the prefix's folder, not the whole lake.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / _check_name(folder) if folder else self.root
        if not base.exists():
            return []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                rel = p.relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    names.append(rel)
        return sorted(names)

    def stamps(self, prefix: str = "") -> dict[str, str]:
        """Name -> size and modification time: what changes when a file is written again, without reading it."""
        out = {}
        for name in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):
                st = self._path(name).stat()
                out[name] = f"{st.st_size}-{st.st_mtime_ns}"
        return out

    def purge_noncurrent(self, name: str) -> list[str]:
        return []  # a local file has one version; os.replace leaves no old copy behind

    def noncurrent_versions(self, name: str) -> list[ObjectVersion]:
        return []

    def read_version(self, name: str, version_id: str) -> bytes:
        raise FileNotFoundError(f"a local lake keeps no old versions ({name})")

    def describe(self) -> str:
        return f"local:{self.root}"

    def locate(self, name: str) -> str:
        """Where an object is, for a person or a link: its absolute path."""
        return str(self._path(name).resolve())


QUOTE = '"'


@dataclass
class S3Lake:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None
    _client: object = field(default=None, repr=False)

    @property
    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region_name)
        return self._client

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self.prefix.strip('/')}/{name}" if self.prefix.strip("/") else name

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one, never a part.
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def list(self, prefix: str = "") -> list[str]:
        root = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        if prefix:
            _check_name(prefix.rstrip("/"))
        base = root + prefix
        strip = len(self.prefix.strip("/")) + 1 if self.prefix.strip("/") else 0
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            names += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(names)

    def stamps(self, prefix: str = "") -> dict[str, str]:
        """Name -> ETag and size, from the listing itself (a PUT of other bytes changes the ETag)."""
        root = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        strip = len(root)
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
            out.update({o["Key"][strip:]: f"{o['Size']}-{o['ETag'].strip(QUOTE)}" for o in page.get("Contents", [])})
        return out

    def _versions(self, name: str) -> list[dict]:
        key = self._key(name)
        out = []
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] == key:
                    out.append(v)
        return out

    def noncurrent_versions(self, name: str) -> list[ObjectVersion]:
        return [
            ObjectVersion(v["VersionId"], v["LastModified"], "ETag" not in v)
            for v in self._versions(name)
            if not v.get("IsLatest")
        ]

    def read_version(self, name: str, version_id: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name), VersionId=version_id)["Body"].read()

    def purge_noncurrent(self, name: str) -> list[str]:
        """Delete every noncurrent version (and delete marker) of one object, by VersionId.

        On a bucket whose versioning was suspended the pre-versioning copy has VersionId
        ``"null"``, which S3 deletes by that literal id like any other.
        """
        key = self._key(name)
        purged = [v.version_id for v in self.noncurrent_versions(name)]
        for vid in purged:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=vid)
        return purged

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"

    def locate(self, name: str) -> str:
        """Where an object is, for a person or a link: its ``s3://`` URL."""
        return f"s3://{self.bucket}/{self._key(name)}"

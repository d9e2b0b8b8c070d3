"""Key-encryption keys (KEKs): versions that wrap the key store's root keys, in a KMS or a local key file.

A version is created, wraps and unwraps 32-byte root keys, and is destroyed. The key store
(``ledger.keys``) makes a new version after erasures, rewraps what it holds under it, and destroys the
old one: a backup of the key store taken before then holds roots wrapped under a version that no
longer exists anywhere, so nothing in it, the erased subjects' data keys included, can be unwrapped.

* ``local:PATH`` — a JSON key file of versions (AES-256-GCM wraps). The default keeps it beside the project
  home, never inside it (``<home>.kek.json``): a copy of the home must not carry the key that opens it.
  Destroying a version rewrites the file without it; the old file's blocks are freed, not overwritten
  (a file system or SSD may keep them): production uses a KMS.
* ``aws-kms:ALIAS`` — AWS KMS through boto3 (endpoint, region and credentials from boto3's environment,
  e.g. ``AWS_ENDPOINT_URL_KMS``). Each version is a KMS key (``CreateKey``), the alias points at the
  newest; destroying one disables it at once and schedules its deletion (``PendingWindowInDays``, 7 at
  least in AWS). The pipeline needs kms:CreateKey, Encrypt, Decrypt, DisableKey, ScheduleKeyDeletion,
  CreateAlias/UpdateAlias and DescribeKey.

Errors are one line naming the KMS, never a key: ``KmsUnavailable`` (cannot be reached) and
``KekUnusable`` (the version is disabled, pending deletion or gone); both are ``BlockingError``s, so a run
they stop leaves its requests to resume on the next tick.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from erasure_pipeline.core.errors import BlockingError

PURPOSE = b"erasure-pipeline key store root"
AWS_CONTEXT = {"purpose": "erasure-pipeline-key-store-root"}
AWS_PENDING_DAYS = 7


class KmsUnavailable(BlockingError):
    """The KMS cannot be reached or did not answer: nothing was written; retry later."""


class KekUnusable(BlockingError):
    """A key-encryption key version is disabled, pending deletion or gone."""


class KmsNotConfigured(BlockingError):
    """Personal fields are declared and no KMS every worker can reach is configured."""


class Kms(Protocol):
    def describe(self) -> str: ...
    def create_version(self) -> str: ...
    def wrap(self, ref: str, plaintext: bytes) -> bytes: ...
    def unwrap(self, ref: str, wrapped: bytes) -> bytes: ...
    def destroy(self, ref: str) -> None: ...
    def exists(self, ref: str) -> bool: ...


# ---------------------------------------------------------------- a local key file
@dataclass
class LocalKms:
    path: Path

    def describe(self) -> str:
        return f"local:{self.path}"

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())["versions"]
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, OSError):
            raise KekUnusable(f"key file {self.path}: cannot be read as a key file (damaged)") from None

    def _write(self, versions: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".kek-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": 1, "versions": versions}, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create_version(self) -> str:
        with self._locked():
            versions = self._read()
            ref = f"local-{secrets.token_hex(8)}"
            versions[ref] = base64.b64encode(secrets.token_bytes(32)).decode()
            self._write(versions)
            return ref

    def _key(self, ref: str) -> bytes:
        versions = self._read()
        if ref not in versions:
            raise KekUnusable(f"key-encryption key {ref} is not in {self.describe()}: destroyed, or not the key file "
                              "this key store was made with")
        return base64.b64decode(versions[ref])

    def wrap(self, ref: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self._key(ref)).encrypt(nonce, plaintext, PURPOSE + ref.encode())

    def unwrap(self, ref: str, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self._key(ref)).decrypt(wrapped[:12], wrapped[12:], PURPOSE + ref.encode())
        except InvalidTag:
            raise KekUnusable(f"a root key wrapped under {ref} does not open with {self.describe()} (damaged)") from None

    def destroy(self, ref: str) -> None:
        with self._locked():
            versions = self._read()
            if versions.pop(ref, None) is not None:
                self._write(versions)

    def exists(self, ref: str) -> bool:
        return ref in self._read()


# ---------------------------------------------------------------- AWS KMS
@dataclass
class AwsKms:
    alias: str
    _client: object = field(default=None, repr=False)

    def describe(self) -> str:
        return f"aws-kms:{self.alias}"

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("kms", config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}))
        return self._client

    def _call(self, ref: str | None, op: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("DisabledException", "KMSInvalidStateException", "NotFoundException", "InvalidCiphertextException",
                        "AccessDeniedException", "IncorrectKeyException"):
                raise KekUnusable(f"key-encryption key {ref or self.alias} unusable in {self.describe()} ({code}): "
                                  "enable it, or restore access, and the run resumes on the next tick") from None
            raise KmsUnavailable(f"KMS unavailable: {self.describe()} ({code or type(exc).__name__}), retry later") from None
        except BotoCoreError as exc:
            raise KmsUnavailable(f"KMS unavailable: {self.describe()} ({type(exc).__name__}), retry later") from None

    def create_version(self) -> str:
        ref = self._call(None, "create_key", Description="erasure-pipeline key-encryption key", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
        try:
            self._call(ref, "update_alias", AliasName=self.alias, TargetKeyId=ref)
        except KekUnusable:  # NotFoundException: the alias does not exist yet
            self._call(ref, "create_alias", AliasName=self.alias, TargetKeyId=ref)
        return ref

    def _usable(self, ref: str) -> None:
        """KMS refuses a disabled or deleted key itself; asking first (unwraps are rare: roots are cached) gives
        the same one line everywhere, S3-compatible KMS emulators included."""
        state = self._state(ref)
        if state != "Enabled":
            raise KekUnusable(f"key-encryption key {ref} unusable in {self.describe()} ({state or 'NotFound'}): enable it, or "
                              "restore access, and the run resumes on the next tick")

    def wrap(self, ref: str, plaintext: bytes) -> bytes:
        self._usable(ref)
        return self._call(ref, "encrypt", KeyId=ref, Plaintext=plaintext, EncryptionContext=AWS_CONTEXT)["CiphertextBlob"]

    def unwrap(self, ref: str, wrapped: bytes) -> bytes:
        self._usable(ref)
        return self._call(ref, "decrypt", KeyId=ref, CiphertextBlob=wrapped, EncryptionContext=AWS_CONTEXT)["Plaintext"]

    def destroy(self, ref: str) -> None:
        state = self._state(ref)
        if state in (None, "PendingDeletion"):
            return
        if state != "Disabled":
            self._call(ref, "disable_key", KeyId=ref)
        self._call(ref, "schedule_key_deletion", KeyId=ref, PendingWindowInDays=AWS_PENDING_DAYS)

    def _state(self, ref: str) -> str | None:
        try:
            return self._call(ref, "describe_key", KeyId=ref)["KeyMetadata"]["KeyState"]
        except KekUnusable:  # NotFoundException
            return None

    def exists(self, ref: str) -> bool:
        return self._state(ref) not in (None, "PendingDeletion", "PendingReplicaDeletion")


def kms_at(url: str) -> Kms:
    """A KMS from ``local:PATH`` or ``aws-kms:ALIAS`` (``alias/…``, a key id or ARN names its alias)."""
    scheme, sep, rest = url.partition(":")
    if not sep or not rest:
        raise ValueError(f"a KMS is local:PATH or aws-kms:alias/NAME, not {url!r}")
    if scheme == "local":
        return LocalKms(Path(rest).expanduser().resolve())
    if scheme == "aws-kms":
        if not rest.startswith("alias/"):
            raise ValueError(f"aws-kms: names an alias the pipeline keeps pointing at its newest key (aws-kms:alias/NAME), not {rest!r}")
        return AwsKms(rest)
    raise ValueError(f"unknown KMS {scheme!r} (use local:PATH or aws-kms:alias/NAME)")


def default_key_file(home: Path) -> Path:
    """Beside the home, never inside it: a copy of the home must not carry the key that opens it."""
    return home.parent / f"{home.name}.kek.json"

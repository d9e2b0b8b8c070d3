"""The evidence key: Ed25519 signatures on certificates and audit-log rows. No Dagster import.

A hash chain kept in the database it protects proves nothing to someone who can write that
database: they can recompute it. A signature made with a key that does not live in the database can
only be made by whoever holds the key, and checked by anyone with the public key — an auditor with a
certificate file and the public key needs nothing else.

The private key comes from ``$ERASURE_PIPELINE_SIGNING_KEY`` (a PEM private key, or its 32 raw bytes
base64-encoded), handed in by the keys resource when needed, never read at import; without it a local
key is generated once in the project home with a warning, as the pepper is. The local default protects against tampering with the
ledger's database alone; set the variable from a secret store in any shared deployment, so that the
key and the ledger are not reachable by the same person.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from erasure_pipeline.core.errors import BlockingError
from erasure_pipeline.core.files import create_once
from erasure_pipeline.core.settings import Settings

KEY_ENV = "ERASURE_PIPELINE_SIGNING_KEY"
"""Named in messages only: the value reaches this module through ``load_signer(value, home)``."""
KEY_FILE = "signing.key"
ALGORITHM = "Ed25519"

log = logging.getLogger(__name__)


class SigningKeyError(BlockingError):
    """A signing or public key that cannot be read; the message never repeats key material."""


def canonical_json(obj: Any) -> str:
    """The one canonical JSON of the project: what is hashed, signed and chained (sorted keys, no blanks,
    anything else as ``str``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def canonical(obj: Any) -> bytes:
    return canonical_json(obj).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _parse_private(text: str, source: str) -> Ed25519PrivateKey:
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError):
        raise SigningKeyError(f"{source}: not an Ed25519 private key (PEM, or 32 bytes in base64)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{source}: the key is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, OSError):
        raise SigningKeyError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: the key is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, data: bytes) -> str:
        return self.private.sign(data).hex()

    def sign_document(self, document: Mapping[str, Any]) -> dict:
        """The document with a ``signature`` over its canonical JSON (every other field)."""
        body = {k: v for k, v in document.items() if k != "signature"}
        return {**body, "signature": {"algorithm": ALGORITHM, "key_id": self.key_id, "value": self.sign(canonical(body))}}


def verify_signature(public: Ed25519PublicKey, data: bytes, signature_hex: str | None) -> bool:
    if not signature_hex:
        return False
    try:
        public.verify(bytes.fromhex(signature_hex), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_document(public: Ed25519PublicKey, document: Mapping[str, Any]) -> tuple[bool, str]:
    """(valid, why not) for a document signed by :meth:`Signer.sign_document`."""
    signature = document.get("signature")
    if not isinstance(signature, Mapping):
        return False, "it carries no signature"
    if signature.get("key_id") != key_id(public):
        return False, f"signed with key {signature.get('key_id')}, not {key_id(public)}"
    body = {k: v for k, v in document.items() if k != "signature"}
    if not verify_signature(public, canonical(body), signature.get("value")):
        return False, "the signature does not match its contents"
    return True, ""


def signer_for(settings: Settings) -> Signer:
    """The evidence key the settings name. Where the ledger, lake or landing is shared (a production shape),
    a key generated in the home beside the ledger would let whoever writes the home re-sign a rewritten
    audit row: that is refused unless ``ERASURE_PIPELINE_ALLOW_LOCAL_SIGNING_KEY`` accepts it."""
    if not settings.signing_key and settings.is_production and not settings.allow_local_signing_key:
        raise SigningKeyError(
            f"{KEY_ENV} is not set while the ledger, lake or landing is shared: a key generated in the project home, "
            "beside the ledger, would let whoever writes the home re-sign rewritten audit rows. Set it from a secret store "
            "(an Ed25519 private key, PEM or base64), or set ERASURE_PIPELINE_ALLOW_LOCAL_SIGNING_KEY=1 to accept a local key")
    return load_signer(settings.signing_key, settings.home)


def load_signer(value: str | None, home: Path) -> Signer:
    """``value`` (``$ERASURE_PIPELINE_SIGNING_KEY``), else a local key generated once in ``home`` (with a warning)."""
    if value:
        return Signer(_parse_private(value, f"${KEY_ENV}"))
    path = home / KEY_FILE
    if not path.exists() and create_once(path, Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())):
        log.warning(
            "%s is not set: generated a local signing key at %s. Certificates and audit rows signed with it can "
            "be checked with its public key (erasure-pipeline signing-key); set %s from a secret store in any "
            "shared deployment, so the key does not live beside the ledger.", KEY_ENV, path, KEY_ENV,
        )
    return Signer(_parse_private(path.read_text(), str(path)))

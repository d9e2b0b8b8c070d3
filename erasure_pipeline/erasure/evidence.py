"""Evidence an auditor can check: a certificate's signature and body hash, the audit log against every anchor,
and a stored certificate's claims re-checked now. No Dagster import; a certificate file is checked offline
with the signing module alone (the stores load only for a check against them).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from erasure_pipeline.core import identity
from erasure_pipeline.core.findings import Finding
from erasure_pipeline.core.signing import canonical_json, key_id, verify_document

if TYPE_CHECKING:
    from erasure_pipeline.kinds.base import Env
    from erasure_pipeline.ledger import Anchor, Ledger


def certificate_anchors(book: Ledger) -> list[Anchor]:
    """The audit-log heads every stored certificate carries."""
    from erasure_pipeline.ledger import Anchor

    out = []
    for request_id, body in book.certificates.all():
        anchor = body.get("audit_anchor") or {}
        if anchor.get("seq"):
            out.append(Anchor(int(anchor["seq"]), anchor["row_hash"], f"the certificate of {request_id}"))
    return out


def audit_log_finding(book: Ledger, public: Ed25519PublicKey | None, anchors: list[Anchor]) -> Finding:
    report = book.audit.check(public, [*certificate_anchors(book), *anchors])
    detail = (f"{report.rows} rows, {report.signed} signatures, {report.anchors} anchors" if report.ok
              else f"row {report.first_bad_seq}: {report.problem}")
    return Finding("audit log is intact: chain, signatures and anchors", "ledger.audit_log", report.ok, detail)


def certificate_signature_finding(document: dict, public: Ed25519PublicKey | None, target: str) -> Finding:
    if public is None:
        return Finding("certificate is signed with the evidence key", target, False, "no public key to check it with")
    ok, why = verify_document(public, document)
    return Finding("certificate is signed with the evidence key", target, ok, f"key {key_id(public)}" if ok else why)


def verify_certificate_document(document: dict, public: Ed25519PublicKey) -> list[Finding]:
    """What a third party can check with a certificate file and the public key alone (no database)."""
    target = str(document.get("request_id", "certificate"))
    out = [certificate_signature_finding(document, public, target)]
    anchor = document.get("audit_anchor") or {}
    out.append(Finding("certificate anchors the audit log", target, bool(anchor.get("seq")),
                       f"row {anchor.get('seq')}, {str(anchor.get('row_hash', ''))[:16]}…" if anchor.get("seq") else "no anchor"))
    return out


def verify_certificate(request_id: str, env: Env, anchors: list[Anchor] = ()) -> list[Finding]:
    """A stored certificate: its signature and body hash, the audit log against every anchor known
    (``anchors``: e.g. the runs' Dagster metadata), and every claim about the subject now."""
    return verify_certificates([request_id], env, anchors)[request_id]


def verify_certificates(request_ids: list[str], env: Env, anchors: list[Anchor] = ()) -> dict[str, list[Finding]]:
    """Many stored certificates in one pass: the audit log is checked once, each shard's vector store is
    opened once, and the claims that do not depend on the subject (a shard model's retrain, what a merge
    was built from, the partitions' recorded versions) are checked once per shard, not once per request."""
    from erasure_pipeline.erasure.verify import (  # deferred: the stores (pandas); offline checks need none
        prove_together,
        verify_subject,
    )

    public = env.signer.public if env.signer else None
    audit = audit_log_finding(env.ledger, public, list(anchors))
    found = {rid: env.ledger.certificates.get(rid) for rid in dict.fromkeys(request_ids)}
    requests = {r["request_id"]: r for r in env.ledger.requests.by_ids([rid for rid, f in found.items() if f is not None])}
    out: dict[str, list[Finding]] = {}
    cache = prove_together([r["subject_key"] for r in requests.values()], env, {})
    with contextlib.ExitStack() as shards:
        for shard in sorted({identity.shard_of(r["subject_key"], env.policy.shards) for r in requests.values()}):
            shards.enter_context(env.vectors.session(shard))
        for rid, certificate in found.items():
            if certificate is None:
                out[rid] = [Finding("a certificate exists", rid, False, "no certificate")]
                continue
            body, digest = certificate
            request = requests[rid]
            findings = [Finding("certificate body matches its recorded sha256", rid,
                                hashlib.sha256(canonical_json(body).encode()).hexdigest() == digest),
                        certificate_signature_finding(body, public, rid), audit,
                        Finding("request is completed", rid, request["status"] == "completed", request["status"])]
            if body.get("data_present") or body.get("exception") is None:
                findings += verify_subject(request["subject_key"], env, cache)
            out[rid] = findings
    return out

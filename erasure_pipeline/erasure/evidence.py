"""Evidence an auditor can check: a certificate's signature and body hash, the audit log against every anchor,
and a stored certificate's claims re-checked now. No Dagster import.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from erasure_pipeline.core.signing import canonical_json, key_id, verify_document
from erasure_pipeline.erasure.verify import verify_subject
from erasure_pipeline.kinds.base import Env, Finding
from erasure_pipeline.ledger import Anchor, Ledger


def certificate_anchors(book: Ledger) -> list[Anchor]:
    """The audit-log heads every stored certificate carries."""
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
    found = env.ledger.certificates.get(request_id)
    if found is None:
        return [Finding("a certificate exists", request_id, False, "no certificate")]
    body, digest = found
    public = env.signer.public if env.signer else None
    out = [Finding("certificate body matches its recorded sha256", request_id,
                   hashlib.sha256(canonical_json(body).encode()).hexdigest() == digest),
           certificate_signature_finding(body, public, request_id),
           audit_log_finding(env.ledger, public, list(anchors))]
    request = env.ledger.requests.get(request_id)
    out.append(Finding("request is completed", request_id, request["status"] == "completed", request["status"]))
    if body.get("data_present") or body.get("exception") is None:
        out += verify_subject(request["subject_key"], env)
    return out

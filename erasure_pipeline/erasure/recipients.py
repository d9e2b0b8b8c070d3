"""Telling every recipient: whom an erasure concerns, the signed notice each gets, delivery until it confirms.

No Dagster import. A completed request queues one notice per declared recipient that received something
that held the subject (``concerned``); ``deliver`` POSTs the due ones — the same bytes under the same
idempotency key on every attempt, signed with the evidence key — retries with exponential backoff and
jitter, records confirmations (and a recipient's signed receipt) in the audit chain, dead-letters what is
not confirmed within ``delivery.dead_letter_days``, and amends the certificate each time. The subject id a
recipient knows them by travels only as a sealed box to its public key, and is destroyed when settled.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from erasure_pipeline.core.signing import Signer, canonical, canonical_json
from erasure_pipeline.erasure.certificate import REGULATION, write_evidence
from erasure_pipeline.erasure.drp import queue_status_callbacks
from erasure_pipeline.ledger import utcnow
from erasure_pipeline.ledger.db import as_utc

if TYPE_CHECKING:
    from erasure_pipeline.core.graph import Graph
    from erasure_pipeline.core.policy import Policy
    from erasure_pipeline.ledger import Ledger

NOTICE_VERSION = 1
SIGNATURE_HEADER = "Erasure-Signature"
"""``keyid=<evidence key id>,ed25519=<hex signature over the body bytes>``: check it with ``erasure-pipeline signing-key``."""
NOT_NOTIFIED = "not notified: received none of the subject's data"

Post = Callable[[str, bytes, Mapping[str, str], float], tuple[int, bytes]]
"""(url, body, headers, timeout) -> (HTTP status, response body); raises OSError when nothing answered."""


def nodes_of(graph: Graph, what: str) -> set[str]:
    """The assets behind a name a recipient received: a dataset's raw asset, a model's training set, shard models
    and ensemble, the vector index (``vectors``), the cohort assets (``cohorts``), or an asset by name."""
    return {n.name for n in graph.nodes
            if what in (n.table, n.model, n.name) or (what == "vectors" and n.kind == "vector_index")
            or (what == "cohorts" and n.kind.startswith("cohort"))}


def concerned(policy: Policy, graph: Graph, actions: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Recipient -> what it received that held the subject (by the certificate's rows), for each it concerns."""
    held = {a["asset"] for a in actions if a["data_present"]}
    out = {}
    for r in policy.recipients:
        what = [w for w in r.received if nodes_of(graph, w) & held]
        if what:
            out[r.name] = what
    return out


def signed(signer: Signer, body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(the body as sent, its sha256, the Ed25519 signature over it in hex)."""
    text = canonical_json(body)
    return text, hashlib.sha256(text.encode()).hexdigest(), signer.sign(text.encode())


def build_notices(policy: Policy, graph: Graph, request: Mapping[str, Any], actions: Sequence[Mapping[str, Any]],
                  sealed: Mapping[str, str], signer: Signer, now: dt.datetime) -> list[dict]:
    """One notice per recipient the erasure concerns: request id, deadline, what to erase, and the subject as the
    recipient knows them (the id sealed to it at intake, or our keyed hash)."""
    specs = {r.name: r for r in policy.recipients}
    out = []
    for name, what in concerned(policy, graph, actions).items():
        spec = specs[name]
        if spec.knows_subject_by == "subject_key":
            subject = {"subject_key": request["subject_key"]}
        elif name in sealed:
            subject = {"sealed_id": sealed[name], "sealed_to": hashlib.sha256(base64.b64decode(spec.public_key)).hexdigest()[:16]}
        else:  # filed before this recipient was declared: the id was never sealed to it, and we never kept it
            subject = {"subject_key": request["subject_key"], "subject_id": "unavailable: the request was filed before this recipient was declared"}
        notice_id = str(uuid.uuid4())
        body = {"type": "erasure_notice", "version": NOTICE_VERSION, "notice_id": notice_id, "request_id": request["request_id"],
                "recipient": name, "regulation": REGULATION, "issued_at": now.isoformat(), "deadline": request["due_at"].isoformat(),
                "erase": what, "subject": subject, "key_id": signer.key_id}
        text, digest, signature = signed(signer, body)
        out.append({"notice_id": notice_id, "request_id": request["request_id"], "recipient": name, "kind": "erasure",
                    "endpoint": spec.endpoint, "body": text, "body_sha256": digest, "signature": signature})
    return out


def recipients_section(policy: Policy, notices: Sequence[Mapping[str, Any]], earlier: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """The certificate's account of every recipient: notified when, confirmed when (and by what receipt), still
    pending, or dead-lettered; or not notified, because nothing it received held the subject."""
    rows = {n["recipient"]: n for n in notices}
    roles = {r.name: r.role for r in policy.recipients}
    out = []
    for e in earlier:  # recipients named by an earlier revision stay, even if no longer declared
        if e["recipient"] not in rows:
            out.append(dict(e))
    named = {e["recipient"] for e in out}
    for r in policy.recipients:
        if r.name not in rows and r.name not in named:
            out.append({"recipient": r.name, "role": r.role, "status": NOT_NOTIFIED})
    for name, n in rows.items():
        body = json.loads(n["body"])
        entry = {"recipient": name, "role": roles.get(name, "processor"), "erase": body.get("erase", []), "notice_id": n["notice_id"],
                 "notice_sha256": n["body_sha256"], "queued_at": _iso(n.get("created_at")), "notified_at": _iso(n.get("first_attempt_at")),
                 "attempts": int(n.get("attempts") or 0)}
        status = n.get("status", "pending")
        if status == "confirmed":
            entry.update(status="confirmed", confirmed_at=_iso(n.get("settled_at")))
            if n.get("receipt"):
                entry["receipt"] = json.loads(n["receipt"])
        elif status == "dead":
            entry.update(status="dead letter: not confirmed", dead_letter_at=_iso(n.get("settled_at")), last_error=n.get("last_error"))
        else:
            entry.update(status="pending confirmation", last_error=n.get("last_error"))
        out.append(entry)
    return sorted(out, key=lambda e: e["recipient"])


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def backoff(attempts: int, first: float, cap: float, rng: random.Random) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt: first × 2^(attempts-1), capped, times a jitter in [0.5, 1]."""
    return dt.timedelta(seconds=min(cap, first * 2 ** max(0, attempts - 1)) * rng.uniform(0.5, 1.0))


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # declared https, or http to this machine
            return response.status, response.read(1 << 16)
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def check_receipt(answer: bytes, notice: Mapping[str, Any], receipt_key: str) -> tuple[dict | None, str]:
    """(the receipt as kept, why not): a JSON answer ``{"receipt": {"notice_id", "body_sha256", "erased_at",
    "signature"}}`` signed (Ed25519, base64, over the canonical JSON of the other fields) with the recipient's key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        receipt = json.loads(answer)["receipt"]
        fields = {k: receipt[k] for k in ("notice_id", "body_sha256", "erased_at")}
        signature = base64.b64decode(receipt["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        return None, "no signed receipt in the answer"
    if fields["notice_id"] != notice["notice_id"] or fields["body_sha256"] != notice["body_sha256"]:
        return None, "the receipt is for another notice"
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(receipt_key)).verify(signature, canonical(fields))
    except (InvalidSignature, ValueError):
        return None, "the receipt's signature does not verify with its receipt_key"
    return {**fields, "signature": receipt["signature"]}, ""


@dataclass
class DeliveryReport:
    attempted: int = 0
    confirmed: list[dict] = field(default_factory=list)
    retrying: list[dict] = field(default_factory=list)
    dead: list[dict] = field(default_factory=list)
    callbacks_queued: int = 0

    @property
    def line(self) -> str:
        return (f"{self.attempted} notices attempted: {len(self.confirmed)} confirmed, {len(self.retrying)} to retry, "
                f"{len(self.dead)} dead-lettered" + (f"; {self.callbacks_queued} DRP status callbacks queued" if self.callbacks_queued else ""))


def deliver(book: Ledger, policy: Policy, signer: Signer, tokens: Mapping[str, str | None], *, now: dt.datetime | None = None,
            post: Post = http_post, evidence=None, rng: random.Random | None = None, limit: int = 1000) -> DeliveryReport:
    """One delivery pass over every due notice (and DRP status callback); safe to run from many processes at once."""
    explicit = now is not None  # a caller's clock (tests, replays) also stamps what is settled
    now, rng, report = now or utcnow(), rng or random.Random(), DeliveryReport()
    report.callbacks_queued = queue_status_callbacks(book, signer)
    specs = {r.name: r for r in policy.recipients}
    timeout = max([r.timeout_seconds for r in policy.recipients] + [10.0])
    leased = book.notices.lease_due(now, dt.timedelta(seconds=timeout + 30), limit)
    report.attempted = len(leased)
    if not leased:
        return report

    def attempt(n: dict) -> tuple[dict, int | None, bytes, str]:
        spec = specs.get(n["recipient"])
        headers = {"Content-Type": "application/json", "Idempotency-Key": n["notice_id"],
                   SIGNATURE_HEADER: f"keyid={signer.key_id},ed25519={n['signature']}"}
        if spec is not None and tokens.get(spec.name):
            headers["Authorization"] = f"Bearer {tokens[spec.name]}"
        try:
            status, answer = post(n["endpoint"], n["body"].encode(), headers, spec.timeout_seconds if spec else 10.0)
        except (OSError, ValueError) as exc:  # refused, reset, timed out, unresolvable: nothing answered
            return n, None, b"", f"no answer: {type(exc).__name__}: {str(exc)[:120]}"
        return n, status, answer, "" if 200 <= status < 300 else f"HTTP {status}"

    with ThreadPoolExecutor(max_workers=policy.delivery.workers) as pool:
        results = list(pool.map(attempt, leased))
    amended: set[str] = set()
    for n, status, answer, error in results:
        receipt = None
        spec = specs.get(n["recipient"])
        if not error and n["kind"] == "erasure" and spec is not None and spec.receipt_key:
            receipt, error = check_receipt(answer, n, spec.receipt_key)
        at = now if explicit else utcnow()
        entry = {"notice_id": n["notice_id"], "request_id": n["request_id"], "recipient": n["recipient"], "kind": n["kind"]}
        if not error:
            if book.notices.settle(n, "confirmed", at=at, receipt=canonical_json(receipt) if receipt else None):
                report.confirmed.append(entry)
                if n["kind"] == "erasure":  # a DRP status callback is not on the certificate
                    amended.add(n["request_id"])
        elif now - as_utc(n["created_at"]) >= dt.timedelta(days=policy.delivery.dead_letter_days):
            if book.notices.settle(n, "dead", at=at, error=error):
                report.dead.append({**entry, "error": error})
                if n["kind"] == "erasure":
                    amended.add(n["request_id"])
        else:
            book.notices.failed(n["notice_id"], error, now + backoff(n["attempts"], policy.delivery.first_retry_seconds,
                                                                     policy.delivery.max_retry_seconds, rng))
            report.retrying.append({**entry, "error": error})
    for request_id in sorted(amended):
        amend_certificate(book, policy, signer, request_id, evidence)
    return report


def amend_certificate(book: Ledger, policy: Policy, signer: Signer, request_id: str, evidence=None) -> dict | None:
    """The request's certificate, re-issued with its recipients' state now (a new revision, signed and audited)."""
    found = book.certificates.get(request_id)
    if found is None:
        return None
    cert, _digest = found
    body = {k: v for k, v in cert.items() if k != "signature"}
    body["recipients"] = recipients_section(policy, book.notices.for_request(request_id),
                                            [e for e in cert.get("recipients", []) if not e.get("notice_id")])
    body["revision"] = int(cert.get("revision", 1)) + 1
    states = sorted({e["status"] for e in body["recipients"]})
    new = book.certificates.amend(request_id, signer.sign_document(body), "recipients: " + ", ".join(states))
    if evidence is not None:
        write_evidence(evidence, new)
    return new

"""The Data Rights Protocol 1.0 as a covered business: agents, exercise, status, revoke, status callbacks.

No Dagster and no web framework: ``app/serve.py`` puts these on HTTP. Every method returns (HTTP status,
JSON body or None). Requests are checked in the order the spec gives (3.07): base64, the signature with
the key of the agent the bearer token belongs to, ``agent-id``, ``business-id``, ``issued-at`` and
``expires-at``; then the exercise. A deletion goes through the same intake as the CLI (normalisation,
tombstone, dedupe of a live request); a replayed signed body answers the request it filed, and files
nothing. No identity claim is stored: the subject id is keyed (and sealed to recipients) at intake.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from erasure_pipeline.core.declaration import https_or_local
from erasure_pipeline.core.identity import InvalidSubjectId
from erasure_pipeline.core.signing import Signer, canonical_json
from erasure_pipeline.erasure import intake
from erasure_pipeline.ledger import LedgerError, utcnow

if TYPE_CHECKING:
    from erasure_pipeline.core.policy import Policy
    from erasure_pipeline.ledger import Ledger

DRP_VERSION = "1.0"
ACTIONS = ("deletion", "access", "sale:opt-out", "sale:opt-in", "access:categories", "access:specific")
SUPPORTED = ("deletion",)
CLOCK_SKEW = dt.timedelta(seconds=60)
"""How far an agent's ``issued-at`` may be ahead of our clock (the spec checks "now is after issued-at")."""
MAX_LIFETIME = dt.timedelta(hours=24)
ENVELOPE = ("agent-id", "business-id", "issued-at", "expires-at", "agent-request-id", "drp.version", "exercise", "regime",
            "relationships", "status_callback")
PERSON = ("name", "email", "email_verified", "phone_number", "phone_number_verified", "address", "address_verified",
          "power_of_attorney")
JWT_CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "given_name", "family_name", "middle_name", "nickname",
              "preferred_username", "profile", "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at")
"""Registered claims the spec lets a request carry besides its own fields (IANA JWT claims, OpenID Connect's Person)."""
FINAL = ("fulfilled", "revoked")
REQUEST_ID = re.compile(r"er-[0-9a-f]{20}")
"""Our request ids (``ledger.requests.new_request_id``): globally unique, as 3.03 asks."""
Answer = tuple[int, dict | None]


class DrpError(Exception):
    """A request error in the spec's shape (3.06): ``{"code", "message"[, "fatal"]}``."""

    def __init__(self, status: int, message: str, fatal: bool = False):
        super().__init__(message)
        self.status, self.message, self.fatal = status, message, fatal

    @property
    def answer(self) -> Answer:
        if self.status == 403 and not self.message:
            return 403, None  # the spec's "403 Forbidden with no response body" (agent key setup)
        return self.status, error_body(self.status, self.message, self.fatal)


FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,39}")


def _shown(name: str) -> str:
    """A field name as an error may repeat it: a name is the agent's to choose, and could be anything (an e-mail)."""
    return f"'{name}'" if FIELD_NAME.fullmatch(name) and "@" not in name else "(a name that is not shown)"


def error_body(status: int, message: str, fatal: bool = False) -> dict:
    return {"code": str(status), "message": message, **({"fatal": True} if fatal else {})}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_signed(raw: bytes, verify_key: str) -> tuple[dict, str]:
    """(the JSON object, the sha256 of the signed bytes) of a combined-mode libsodium message in base64."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        combined = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DrpError(400, "the body is not base64 (a signed request is base64 of the signature and the JSON)") from None
    try:
        message = VerifyKey(base64.b64decode(verify_key)).verify(combined)
    except (BadSignatureError, ValueError):
        raise DrpError(403, "the signature does not verify with the agent's key") from None
    try:
        body = json.loads(message)
    except (UnicodeDecodeError, ValueError):
        raise DrpError(400, "the signed message is not JSON") from None
    if not isinstance(body, dict):
        raise DrpError(400, "the signed message is not a JSON object")
    return body, hashlib.sha256(combined).hexdigest()


def _time(body: Mapping[str, Any], field: str) -> dt.datetime:
    value = body.get(field)
    if not isinstance(value, str):
        raise DrpError(400, f"'{field}' is missing (an ISO 8601 timestamp)")
    try:
        t = dt.datetime.fromisoformat(value)  # 3.11 reads a trailing Z
    except ValueError:
        raise DrpError(400, f"'{field}' is not an ISO 8601 timestamp") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def status_of(request: Mapping[str, Any], drp: Mapping[str, Any] | None, notices: list[dict] = ()) -> dict:
    """The Exercise Status object (3.03) of a ledger request, mapped from its lifecycle."""
    out: dict[str, Any] = {"request_id": request["request_id"], "received_at": request["received_at"].isoformat(),
                           "expected_by": request["due_at"].isoformat()}
    if drp and drp.get("agent_request_id"):
        out["agent_request_id"] = drp["agent_request_id"]
    state = request["status"]
    details = []
    if state == "completed":
        out["status"] = "fulfilled"
        told = [n for n in notices if n["kind"] == "erasure"]
        details.append("erased from every store of the pipeline; certificate issued")
        if told:
            confirmed = sum(n["status"] == "confirmed" for n in told)
            details.append(f"recipients told: {confirmed} of {len(told)} confirmed")
    elif state == "revoked":
        out["status"] = "revoked"
    elif state == "on_hold":
        out.update(status="denied", reason="claim_not_covered")
        details.append(f"exempt from erasure (GDPR Art.17(3); CCPA §1798.105(d)): {request.get('hold_reason') or 'hold'}"
                       "; a release returns it to in_progress")
    else:
        out["status"] = "in_progress"
        if state == "needs_review":
            details.append("a person is reviewing the identifier before erasure")
        elif state == "failed":
            details.append("an attempt failed and is retried")
    if request.get("extended"):
        details.append(f"extended: {request.get('extension_reason') or 'extended once'}")
    if details:
        out["processing_details"] = "; ".join(details)
    return out


class DrpService:
    """The spec's endpoints over the ledger and the intake desk."""

    def __init__(self, policy: Policy, desk: intake.Desk, clock=utcnow):
        if policy.drp is None:
            raise LedgerError("the declaration has no drp section: Data Rights Protocol intake is not configured")
        self.policy, self.drp, self.desk, self.book, self.clock = policy, policy.drp, desk, desk.ledger, clock
        self.agents = {a.id: a for a in self.drp.agents}

    # ------------------------------------------------------------------ 2.05 / 2.06 agents
    def register_agent(self, agent_id: str, raw: bytes) -> Answer:
        """Pair-wise key setup: a message signed with the agent's directory key gets a bearer token."""
        try:
            agent = self.agents.get(agent_id)
            if agent is None:
                raise DrpError(403, "")
            body, _digest = open_signed(raw, agent.verify_key)
            if body.get("agent-id") != agent_id:
                raise DrpError(403, "")
            self._envelope(body, agent_id)
        except DrpError as exc:
            return DrpError(403, "").answer if exc.status in (400, 403) else exc.answer
        token = secrets.token_urlsafe(32)
        self.book.notices.drp_token(token_digest(token), agent_id)
        return 200, {"agent-id": agent_id, "token": token}

    def agent_of(self, bearer: str | None) -> str:
        if not bearer:
            raise DrpError(403, "no bearer token (POST /v1/agent/{agent-id} gives one)")
        agent_id = self.book.notices.drp_agent_of(token_digest(bearer))
        if agent_id is None or agent_id not in self.agents:
            raise DrpError(403, "unknown bearer token")
        return agent_id

    def agent_info(self, agent_id: str, bearer: str | None) -> Answer:
        try:
            if self.agent_of(bearer) != agent_id:
                return 403, None
        except DrpError:
            return 403, None
        return 200, {}

    # ------------------------------------------------------------------ 2.01 exercise
    def exercise(self, bearer: str | None, raw: bytes) -> Answer:
        try:
            agent_id = self.agent_of(bearer)
            body, digest = open_signed(raw, self.agents[agent_id].verify_key)
            self._envelope(body, agent_id)
            known = self.book.notices.drp_request(digest)
            if known is not None:  # the same signed request again: what it filed, nothing filed twice
                return 200, self._status(known["request_id"], known)
            return self._exercise(body, digest, agent_id)
        except DrpError as exc:
            return exc.answer

    def _envelope(self, body: Mapping[str, Any], agent_id: str) -> None:
        """3.07's checks after the signature: the agent, the business, the validity window, the version."""
        if body.get("agent-id") != agent_id:
            raise DrpError(403, "agent-id does not match the agent the bearer token was issued to")
        if body.get("business-id") != self.drp.business_id:
            raise DrpError(403, f"business-id is not this business ({self.drp.business_id})")
        now, issued, expires = self.clock(), _time(body, "issued-at"), _time(body, "expires-at")
        if issued > now + CLOCK_SKEW:
            raise DrpError(400, "issued-at is in the future (check the agent's clock)", fatal=True)
        if now >= expires:
            raise DrpError(400, "the request has expired (expires-at is past)", fatal=True)
        if expires - issued > MAX_LIFETIME:
            raise DrpError(400, "expires-at is more than 24 hours after issued-at (the spec recommends minutes)", fatal=True)
        if body.get("drp.version") != DRP_VERSION:
            raise DrpError(400, f"drp.version must be \"{DRP_VERSION}\"", fatal=True)

    def _exercise(self, body: dict, digest: str, agent_id: str) -> Answer:
        unknown = sorted(k for k in body if k not in (*ENVELOPE, *PERSON, *JWT_CLAIMS, self.drp.identifier))
        if unknown:
            raise DrpError(400, f"unknown field {_shown(unknown[0])} (the spec's fields, schema.org/Person and JWT claims are accepted)",
                           fatal=True)
        exercise = body.get("exercise")
        if exercise not in ACTIONS:
            raise DrpError(400, f"'exercise' must be one of {', '.join(ACTIONS)}", fatal=True)
        if exercise not in SUPPORTED:
            raise DrpError(400, "Unsupported rights actions submitted. This business takes deletion requests over DRP.", fatal=True)
        if body.get("regime") not in (None, "ccpa", "gdpr", "voluntary"):
            raise DrpError(400, "'regime' must be ccpa, gdpr or voluntary (or left out)", fatal=True)
        callback = body.get("status_callback")
        if callback is not None and not (isinstance(callback, str) and https_or_local(callback)):
            raise DrpError(400, "'status_callback' must be an https:// URL", fatal=True)
        request_id_of_agent = body.get("agent-request-id")
        if request_id_of_agent is not None and (not isinstance(request_id_of_agent, str) or len(request_id_of_agent) > 128):
            raise DrpError(400, "'agent-request-id' must be a string of at most 128 characters", fatal=True)
        subject_id = body.get(self.drp.identifier)
        if not isinstance(subject_id, str):
            raise DrpError(400, f"the identity claim '{self.drp.identifier}' is missing: this business matches people by it", fatal=True)
        try:
            (request_id, _created), = intake.erase_many([subject_id], f"DRP deletion from agent {agent_id}", desk=self.desk)
        except InvalidSubjectId as exc:
            raise DrpError(400, f"the identity claim '{self.drp.identifier}': {exc}", fatal=True) from None
        row = {"body_sha256": digest, "request_id": request_id, "agent_id": agent_id, "agent_request_id": request_id_of_agent,
               "status_callback": callback, "regime": body.get("regime"), "last_status_sent": "in_progress"}
        if not self.book.notices.drp_record(**row):  # the same body, recorded by a concurrent call
            row = self.book.notices.drp_request(digest)
        return 200, self._status(request_id, row)

    def _status(self, request_id: str, drp: Mapping[str, Any] | None) -> dict:
        return status_of(self.book.requests.get(request_id), drp, self.book.notices.for_request(request_id))

    # ------------------------------------------------------------------ 2.02 status, 2.04 revoke
    def _owned(self, bearer: str | None, request_id: str) -> tuple[str, dict]:
        agent_id = self.agent_of(bearer)
        if not REQUEST_ID.fullmatch(request_id):
            raise DrpError(404, "no such request")
        rows = self.book.notices.drp_of(request_id)
        if not rows:
            raise DrpError(404, "no such request")
        mine = [r for r in rows if r["agent_id"] == agent_id]
        if not mine:
            raise DrpError(403, "this request is managed by another agent")
        return agent_id, mine[-1]

    def status(self, bearer: str | None, request_id: str) -> Answer:
        try:
            _agent, row = self._owned(bearer, request_id)
            return 200, self._status(request_id, row)
        except DrpError as exc:
            return exc.answer

    def revoke(self, bearer: str | None, request_id: str, raw: bytes) -> Answer:
        try:
            agent_id, row = self._owned(bearer, request_id)
            body, _digest = open_signed(raw, self.agents[agent_id].verify_key)
            unknown = sorted(set(body) - {"reason"})
            if unknown:
                raise DrpError(400, f"unknown field {_shown(unknown[0])} (a revoke carries only 'reason')")
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise DrpError(400, "'reason' must be a string")
            if self.book.requests.get(request_id)["status"] != "revoked":
                try:
                    intake.revoke(self.desk, request_id, f"revoked over DRP by agent {agent_id}" + (f": {reason}" if reason else ""))
                except LedgerError as exc:
                    raise DrpError(409, str(exc)) from None
            return 200, self._status(request_id, row)
        except DrpError as exc:
            return exc.answer


def pending_callbacks(book: Ledger) -> list[tuple[dict, dict, str]]:
    """(DRP record, status now, state) of every request whose agent asked for callbacks and was not told its state."""
    rows = [r for r in book.notices.drp_with_callbacks() if r["last_status_sent"] not in FINAL]
    if not rows:
        return []
    requests = {r["request_id"]: r for r in book.requests.by_ids(list({r["request_id"] for r in rows}))}
    out = []
    for row in rows:
        request = requests.get(row["request_id"])
        if request is None:
            continue
        status = status_of(request, row, book.notices.for_request(row["request_id"]))
        state = status["status"] + (f"/{status['reason']}" if status.get("reason") else "")
        if state != row["last_status_sent"]:
            out.append((row, status, state))
    return out


def queue_status_callbacks(book: Ledger, signer: Signer) -> int:
    """A status callback (2.03) for every DRP request whose status changed since its agent was last told,
    queued in the outbox (delivered, retried and dead-lettered like a recipient's notice)."""
    due = pending_callbacks(book)
    for row, status, state in due:
        text = canonical_json(status)
        book.notices.drp_callback_queued(row["body_sha256"], state, {
            "notice_id": str(uuid.uuid4()), "request_id": row["request_id"], "recipient": f"drp:{row['agent_id']}", "kind": "drp_status",
            "endpoint": row["status_callback"], "body": text, "body_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "signature": signer.sign(text.encode())})
    return len(due)

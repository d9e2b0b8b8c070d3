"""Real HTTP parties on 127.0.0.1 for the recipients and DRP tests: recipients that check our signature, open
the sealed subject id with their own key, deduplicate by idempotency key, sign receipts — and fail, time out,
answer 500 and go away on demand; a DRP authorized agent that signs requests with its directory key."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from nacl.public import PrivateKey, SealedBox
from nacl.signing import SigningKey

from erasure_pipeline.core.signing import canonical, verify_signature
from erasure_pipeline_tests.servers import accepts, free_port, serving


class Recipient:
    """A processor's endpoint. ``behaviour`` is read on every request: ``ok``, ``500``, ``hang`` (answer after
    ``release`` is set), ``slow`` (sleep past any timeout). Applies each idempotency key once."""

    def __init__(self, name: str, *, public_key=None, receipts: bool = False, port: int | None = None):
        self.name, self.port = name, port or free_port()
        self.box_key = PrivateKey.generate()
        self.receipt_key = SigningKey.generate() if receipts else None
        self.public_key = public_key  # ours: the evidence key's public half, to check notices
        self.behaviour = "ok"
        self.requests: list[dict] = []  # every POST, as received
        self.applied: dict[str, dict] = {}  # idempotency key -> the notice it applied (once)
        self.subject_ids: list[str] = []  # opened sealed ids, in memory only
        self.got_request, self.release = threading.Event(), threading.Event()
        self.server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/erasures"

    @property
    def box_public(self) -> str:
        return base64.b64encode(bytes(self.box_key.public_key)).decode()

    @property
    def receipt_public(self) -> str | None:
        return base64.b64encode(bytes(self.receipt_key.verify_key)).decode() if self.receipt_key else None

    def declaration(self, received: list[str], by: str = "subject_id", **extra) -> dict:
        out = {"name": self.name, "endpoint": self.endpoint, "received": received, "knows_subject_by": by, **extra}
        if by == "subject_id":
            out["public_key"] = self.box_public
        if self.receipt_key:
            out["receipt_key"] = self.receipt_public
        return out

    def start(self) -> Recipient:
        me = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # nothing of a notice in any log
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                entry = {"key": self.headers.get("Idempotency-Key"), "body": body, "signature": self.headers.get("Erasure-Signature"),
                         "authorization": self.headers.get("Authorization")}
                me.requests.append(entry)
                me.got_request.set()
                if me.behaviour == "hang":
                    me.release.wait(60)
                elif me.behaviour == "slow":
                    time.sleep(3)
                    return
                if me.behaviour == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                notice = json.loads(body)
                signature = dict(p.split("=", 1) for p in entry["signature"].split(","))["ed25519"]
                if me.public_key is not None and not verify_signature(me.public_key, body, signature):
                    self.send_response(401)
                    self.end_headers()
                    return
                if entry["key"] not in me.applied:
                    me.applied[entry["key"]] = notice
                    sealed = notice.get("subject", {}).get("sealed_id")
                    if sealed:
                        me.subject_ids.append(SealedBox(me.box_key).decrypt(base64.b64decode(sealed)).decode())
                answer = {"ok": True}
                if me.receipt_key is not None:
                    import hashlib

                    fields = {"notice_id": notice["notice_id"], "body_sha256": hashlib.sha256(body).hexdigest(),
                              "erased_at": dt.datetime.now(dt.UTC).isoformat()}
                    answer["receipt"] = {**fields, "signature": base64.b64encode(me.receipt_key.sign(canonical(fields)).signature).decode()}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Go away: the port refuses connections until ``start`` again."""
        if self.server is not None:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class Agent:
    """A DRP authorized agent: its signing key, as the network directory lists its verify key."""

    def __init__(self, agent_id: str = "TEST_AGENT", business_id: str = "ERASURE_CO"):
        self.id, self.business_id, self.key = agent_id, business_id, SigningKey.generate()
        self.token: str | None = None

    @property
    def verify_key(self) -> str:
        return base64.b64encode(bytes(self.key.verify_key)).decode()

    def sign(self, obj) -> bytes:
        message = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return base64.b64encode(self.key.sign(message))  # combined mode: signature, then the message

    def envelope(self, **claims) -> dict:
        now = dt.datetime.now(dt.UTC)
        return {"agent-id": self.id, "business-id": self.business_id, "issued-at": now.isoformat(),
                "expires-at": (now + dt.timedelta(minutes=10)).isoformat(), "drp.version": "1.0", **claims}


def call(method: str, url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, dict | None, dict]:
    headers = {"Content-Type": "text/plain"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None, dict(r.headers)
    except urllib.error.HTTPError as exc:
        data = exc.read()
        return exc.code, json.loads(data) if data else None, dict(exc.headers)


@contextlib.contextmanager
def drp_server(log: Path):
    """``erasure-pipeline serve`` as its own process (uvicorn), on the project the environment points at."""
    port = free_port()
    with serving([sys.executable, "-m", "erasure_pipeline.app.cli", "serve", "--port", str(port)], log=log, ready=accepts(port),
                 what="erasure-pipeline serve", timeout=60):
        yield f"http://127.0.0.1:{port}"

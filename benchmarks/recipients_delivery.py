"""Telling recipients at volume: 10 000 notices to 3 local recipients (real HTTP servers on 127.0.0.1), one of
which answers 503 to a fifth of the attempts, delivered by ``erasure.recipients.deliver`` passes with retries.

The notices are queued as production queues them: one request per 3 notices, each completed with a signed
certificate in the same transaction (``Certificates.complete``); every confirmation settles its notice,
appends to the audit chain and amends (re-signs) the request's certificate. Reported: wall time to deliver
all, throughput, attempts, and per-POST and queue-to-confirmation latency (p50 / p99).

    python -m benchmarks.recipients_delivery [--notices 10000] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks._common import machine, table
from erasure_pipeline.core.policy import parse_policy
from erasure_pipeline.core.signing import Signer
from erasure_pipeline.erasure.recipients import deliver, http_post
from erasure_pipeline.ledger import Ledger, utcnow

SUBJECT = {"subjects": {"id": "subject_id", "subject": "subject_id"}}


def recipient(fail_rate: float, seed: int) -> ThreadingHTTPServer:
    rng, lock = random.Random(seed), threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                fail = rng.random() < fail_rate
            body = b"" if fail else b'{"ok": true}'
            self.send_response(503 if fail else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notices", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args(argv)
    servers = [recipient(0.0, 1), recipient(0.2, 2), recipient(0.0, 3)]
    names = ["crm", "mailer", "warehouse"]
    policy = parse_policy({
        "datasets": SUBJECT,
        "recipients": [{"name": n, "endpoint": f"http://127.0.0.1:{s.server_address[1]}/e", "received": ["subjects"],
                        "knows_subject_by": "subject_key"} for n, s in zip(names, servers, strict=True)],
        "delivery": {"first_retry_seconds": 0.05, "max_retry_seconds": 1, "workers": args.workers},
    }, source="benchmark")
    signer = Signer(Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory(prefix="erasure-bench-") as tmp:
        book = Ledger(f"sqlite:///{Path(tmp) / 'ledger.sqlite'}", sign=lambda data: signer.sign(data))
        book.migrate()
        n_requests = -(-args.notices // len(names))
        filed = book.requests.file_many([(f"{i:064x}", i % 16) for i in range(n_requests)], due_days=30)
        t0 = time.perf_counter()
        queued = 0
        for rid, _ in filed:
            notices = []
            for name, server in zip(names, servers, strict=True):
                if queued == args.notices:
                    break
                body = json.dumps({"request_id": rid, "recipient": name, "erase": ["subjects"]}, sort_keys=True)
                notices.append({"notice_id": f"{rid}-{name}", "request_id": rid, "recipient": name, "kind": "erasure",
                                "endpoint": f"http://127.0.0.1:{server.server_address[1]}/e", "body": body,
                                "body_sha256": "0" * 64, "signature": signer.sign(body.encode())})
                queued += 1
            claim_and_complete(book, rid, signer, notices)
        queue_s = time.perf_counter() - t0
        latencies: list[float] = []
        lock = threading.Lock()

        def timed_post(url, body, headers, timeout):
            start = time.perf_counter()
            try:
                return http_post(url, body, headers, timeout)
            finally:
                with lock:
                    latencies.append(time.perf_counter() - start)

        t1 = time.perf_counter()
        passes = attempts = 0
        while book.notices.list(status=["pending"]):
            report = deliver(book, policy, signer, {}, post=timed_post, limit=2000)
            passes += 1
            attempts += report.attempted
            if not report.attempted:
                time.sleep(0.02)  # every pending notice is waiting out its backoff
        deliver_s = time.perf_counter() - t1
        rows = book.notices.list(status=["confirmed"])
        to_confirm = sorted((r["settled_at"] - r["created_at"]).total_seconds() for r in rows)
        lat = sorted(latencies)
        p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
        print(f"## Delivering {args.notices} notices to 3 local recipients ({machine()}; {args.workers} workers, SQLite ledger)\n")
        print(table(["notices", "confirmed", "attempts (retries)", "passes", "queue s (with certificates)", "deliver s",
                     "confirmed / s", "POST p50 ms", "POST p99 ms", "queued → confirmed p50 s", "queued → confirmed p99 s"],
                    [[args.notices, len(rows), f"{attempts} ({attempts - len(rows)})", passes, f"{queue_s:.1f}", f"{deliver_s:.1f}",
                      f"{len(rows) / deliver_s:.0f}", f"{1000 * statistics.median(lat):.1f}", f"{1000 * p(lat, 0.99):.1f}",
                      f"{statistics.median(to_confirm):.1f}", f"{p(to_confirm, 0.99):.1f}"]]))
        book.dispose()
    for s in servers:
        s.shutdown()


def claim_and_complete(book: Ledger, rid: str, signer: Signer, notices: list[dict]) -> None:
    """Complete a request as a run does: its signed certificate, its notices, in one transaction."""
    cert = signer.sign_document({"request_id": rid, "anonymised_data_subject": "-", "recipients": [], "revision": 1,
                                 "completion_date": utcnow().isoformat()})
    book.certificates.complete(rid, cert, notices)


if __name__ == "__main__":
    main()

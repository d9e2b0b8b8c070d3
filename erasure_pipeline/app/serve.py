"""``erasure-pipeline serve``: the Data Rights Protocol endpoints on HTTP (Starlette on uvicorn, both already
installed with Dagster's webserver). The protocol itself is ``erasure/drp.py``; this module adds what HTTP
needs: bodies capped at ``drp.max_body_bytes`` (read in chunks, never whole), a per-agent rate limit
(``drp.requests_per_minute``, a token bucket), bearer tokens, JSON answers in the spec's error shape, and
no request body, header or identity claim in any log line (uvicorn's access log is off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from erasure_pipeline.erasure.drp import DrpError, DrpService, error_body


class RateLimit:
    """A token bucket per key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.capacity, self.rate, self.clock = float(per_minute), per_minute / 60.0, clock
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds until the next request would be."""
        with self.lock:
            now = self.clock()
            tokens, last = self.buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def _answer(status: int, body: dict | None, headers: dict | None = None) -> Response:
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() or None if value.lower().startswith("bearer ") else None


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise DrpError(413, f"the body is larger than {limit} bytes")
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > limit:
            raise DrpError(413, f"the body is larger than {limit} bytes")
    return bytes(out)


def build_app(service: DrpService) -> Starlette:
    limit, limiter = service.drp.max_body_bytes, RateLimit(service.drp.requests_per_minute)

    def endpoint(handler, *, read_body: bool, key: Callable[[Request], str]):
        async def run(request: Request) -> Response:
            wait = limiter.take(key(request))
            if wait:
                return _answer(429, error_body(429, f"too many requests from this agent; retry in {wait:.0f} s"),
                               {"Retry-After": str(max(1, round(wait)))})
            try:
                raw = await _body(request, limit) if read_body else b""
            except DrpError as exc:
                return _answer(*exc.answer)
            status, body = await run_in_threadpool(handler, request, raw)
            return _answer(status, body)

        return run

    def by_token(request: Request) -> str:
        token = _bearer(request)
        if token:
            try:
                return "agent:" + service.agent_of(token)
            except DrpError:
                pass
        return "client:" + (request.client.host if request.client else "?")

    def by_path_agent(request: Request) -> str:
        return "agent:" + request.path_params.get("agent_id", "?")

    routes = [
        Route("/v1/agent/{agent_id}", endpoint(lambda r, raw: service.register_agent(r.path_params["agent_id"], raw),
                                               read_body=True, key=by_path_agent), methods=["POST"]),
        Route("/v1/agent/{agent_id}", endpoint(lambda r, raw: service.agent_info(r.path_params["agent_id"], _bearer(r)),
                                               read_body=False, key=by_path_agent), methods=["GET"]),
        Route("/v1/data-rights-request", endpoint(lambda r, raw: service.exercise(_bearer(r), raw), read_body=True, key=by_token),
              methods=["POST"]),
        Route("/v1/data-rights-request/", endpoint(lambda r, raw: service.exercise(_bearer(r), raw), read_body=True, key=by_token),
              methods=["POST"]),
        Route("/v1/data-rights-request/{request_id}",
              endpoint(lambda r, raw: service.status(_bearer(r), r.path_params["request_id"]), read_body=False, key=by_token),
              methods=["GET"]),
        Route("/v1/data-rights-request/{request_id}",
              endpoint(lambda r, raw: service.revoke(_bearer(r), r.path_params["request_id"], raw), read_body=True, key=by_token),
              methods=["DELETE"]),
    ]

    async def not_found(request: Request, exc) -> Response:
        return _answer(exc.status_code, error_body(exc.status_code, "no such endpoint or method (see the Data Rights Protocol 1.0, section 2)"))

    async def crashed(request: Request, exc) -> Response:
        return _answer(500, error_body(500, "the request could not be processed; nothing was filed unless its status says so (retry it)"))

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: crashed, Exception: crashed})


def serve(service: DrpService, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(service), host=host, port=port, access_log=False, log_level="warning")

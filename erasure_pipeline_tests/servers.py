"""Real servers the tests (and the benchmarks that need ``dagster dev``) start as processes (``dagster dev``, the
webserver, ``erasure-pipeline serve``): a free port, the process in its own session, ready when it answers,
stopped with its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_http(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            urllib.request.urlopen(url, timeout=2)
        except OSError:
            return False
        return True

    return ready


def accepts(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return ready


@contextlib.contextmanager
def serving(args: list[str], *, log: Path, ready: Callable[[], bool], what: str, timeout: float = 90,
            cwd: Path | None = None, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``args`` running (output to ``log``) until the block ends; fails the test, with the log's tail, if it exits
    or does not become ready within ``timeout`` seconds."""
    out = open(log, "w")  # noqa: SIM115  (the server writes to it until it stops)
    proc = subprocess.Popen(args, cwd=cwd, env=os.environ.copy() if env is None else env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{what} exited: " + log.read_text()[-2000:])
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not start: " + log.read_text()[-2000:])
            time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()

"""Faults a test injects into every process of a run, on either executor.

``monkeypatch`` reaches the test's own process only: on Dagster's multiprocess executor the steps run in
processes forked from a forkserver, which rebuild the definitions from the environment. ``injected(fault,
**params)`` calls one of this module's faults here and, through ``crash_site/sitecustomize.py`` on
``PYTHONPATH``, in the forkserver the next multiprocess run starts (so in each of its step processes). A fault
keeps its state in files of one folder (``params.json`` in, what it did out), so "once" means once for the run's
processes together (a marker made with ``O_EXCL``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from erasure_pipeline_tests.crash import forkserver_stopped, site_environ

FAULT = "ERASURE_PIPELINE_TEST_INJECT"
"""``<folder>``: the fault's name and parameters are in ``<folder>/params.json``."""


def _first(folder: Path, name: str) -> bool:
    """True for the first caller of ``name`` among the run's processes, False for every later one."""
    try:
        os.close(os.open(folder / f"{name}.once", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _patched(module, attribute: str, replacement) -> Callable[[], None]:
    original = getattr(module, attribute)
    setattr(module, attribute, replacement)
    return lambda: setattr(module, attribute, original)


def certify_outage(folder: Path, params: dict) -> Callable[[], None]:
    """Every certificate fails to be written (a store down), in whichever process certifies."""
    from erasure_pipeline.erasure import certify

    def broken(*_a, **_k):
        raise RuntimeError("simulated outage")

    return _patched(certify, "certify", broken)


def proof_fails_once(folder: Path, params: dict) -> Callable[[], None]:
    """The first proof of the run's processes says a merge moved under it (another run kept changing a shard)."""
    from erasure_pipeline.erasure import certify

    real = certify.verify_subject

    def fails_once(*args, **kwargs):
        findings = real(*args, **kwargs)
        if _first(folder, "proof"):
            raise certify.ErasureNotProven(params["request_id"], ["published merge was built from the current shard partitions (ensemble_model: moved)"])
        return findings

    return _patched(certify, "verify_subject", fails_once)


def request_filed_mid_rewrite(folder: Path, params: dict) -> Callable[[], None]:
    """The first raw rewrite of the run files an erasure of ``params["subject_id"]`` after its step read the
    tombstones, before it wrote; the request's id is left in ``<folder>/filed``."""
    from erasure_pipeline.erasure.intake import erase
    from erasure_pipeline.kinds import raw

    original = raw.rewrite_partition

    def rewrite_then_request(existing, incoming, by, tombstoned):
        out = original(existing, incoming, by, tombstoned)
        if _first(folder, "filed"):
            (folder / "filed").write_text(erase(params["subject_id"])[0])
        return out

    return _patched(raw, "rewrite_partition", rewrite_then_request)


def install(folder: str) -> Callable[[], None]:
    """Apply the fault ``<folder>/params.json`` names, in this process; returns its undo."""
    params = json.loads((Path(folder) / "params.json").read_text())
    return globals()[params.pop("fault")](Path(folder), params)


@contextlib.contextmanager
def injected(fault: Callable[[Path, dict], Callable[[], None]], **params: str) -> Iterator[Path]:
    """``fault`` with ``params`` in this process and in every step process of the multiprocess runs started inside;
    the fault's folder. The forkserver is stopped before (the next run starts one that applies the fault) and after
    (its step processes would apply it on)."""
    with tempfile.TemporaryDirectory(prefix="fault-") as folder:
        (Path(folder) / "params.json").write_text(json.dumps({"fault": fault.__name__, **params}))
        forkserver_stopped()
        try:
            with site_environ(FAULT, folder):
                undo = install(folder)
                try:
                    yield Path(folder)
                finally:
                    undo()
        finally:
            forkserver_stopped()

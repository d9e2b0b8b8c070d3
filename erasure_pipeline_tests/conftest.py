"""Shared fixtures: an isolated project home, and a small materialised demo built once per session."""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

PEPPER = "test-pepper-not-secret"
SMALL_POLICY = """\
shards: 4
seed: 11
k_min: 3
retention_days: 1500  # the demo spans 2024-01 .. 2026-11: nothing expires unless a test says so
datasets:
  subjects: {id: subject_id, subject: subject_id}
  events: {id: event_id, subject: subject_id, timestamp: ts}
  tickets: {id: ticket_id, subject: subject_id, timestamp: created_at, text: [text]}
consent:
  column: consent_training
cohorts:
  dataset: subjects
  quasi_identifiers: [region, segment]
  measures: [lifetime_value]
  label: converted
features:
  dataset: subjects
  numeric: [age, tenure_days, lifetime_value]
  categorical: [region, segment]
  aggregates:
    - {name: events_email_open, dataset: events, agg: count, where: {event_type: email_open}, transform: log1p}
    - {name: events_email_click, dataset: events, agg: count, where: {event_type: email_click}, transform: log1p}
    - {name: events_web_visit, dataset: events, agg: count, where: {event_type: web_visit}, transform: log1p}
    - {name: events_purchase, dataset: events, agg: count, where: {event_type: purchase}, transform: log1p}
models:
  model:
    label: converted
    task: binary
    estimator: logistic_regression
    quality: {metric: roc_auc, min: 0.5}
"""
DEMO_SUBJECTS = 400
ENV_KEYS = (
    "ERASURE_PIPELINE_HOME", "DAGSTER_HOME", "ERASURE_PIPELINE_PEPPER", "ERASURE_PIPELINE_POLICY",
    "ERASURE_PIPELINE_LAKE_URL", "ERASURE_PIPELINE_LANDING_URL", "ERASURE_PIPELINE_QDRANT_URL", "ERASURE_PIPELINE_LEDGER_URL",
    "ERASURE_PIPELINE_SIGNING_KEY", "ERASURE_PIPELINE_ALLOW_LOCAL_SIGNING_KEY", "ERASURE_PIPELINE_EXECUTOR", "ERASURE_PIPELINE_KMS",
)
SHARED = ("ERASURE_PIPELINE_LEDGER_URL", "ERASURE_PIPELINE_LAKE_URL", "ERASURE_PIPELINE_LANDING_URL")


def signing_key_pem() -> str:
    """A fresh Ed25519 private key (PEM): what a deployment keeps in its secret store."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode()

warnings.filterwarnings("ignore", message=".*preview.*")


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put back the variables ``saved`` recorded (None: it was unset)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def project_env(home: Path, policy_text: str = SMALL_POLICY, **extra: str) -> Iterator[Path]:
    """Point every project setting at ``home`` for the duration (restores the environment after). A shared
    back-end (a ledger server, an S3 lake or landing) comes with a signing key from the environment, as a
    deployment's does (a key generated beside a shared ledger is refused)."""
    saved = {k: os.environ.get(k) for k in (*ENV_KEYS, *extra)}
    home.mkdir(parents=True, exist_ok=True)
    (home / "policy.yaml").write_text(policy_text)
    for k in ENV_KEYS:
        os.environ.pop(k, None)
    os.environ.update({
        "ERASURE_PIPELINE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ERASURE_PIPELINE_PEPPER": PEPPER,
        "ERASURE_PIPELINE_POLICY": str(home / "policy.yaml"),
        # The suite's executor: ``ERASURE_PIPELINE_TEST_EXECUTOR=multiprocess:2 pytest -m executor`` runs the
        # exactness, concurrency, crash and fault tests on Dagster's multiprocess executor (the second pass of ``make test``).
        **({"ERASURE_PIPELINE_EXECUTOR": os.environ["ERASURE_PIPELINE_TEST_EXECUTOR"]} if os.environ.get("ERASURE_PIPELINE_TEST_EXECUTOR") else {}),
        **extra,
    })
    if any(extra.get(k) for k in SHARED) and "ERASURE_PIPELINE_SIGNING_KEY" not in extra:
        key_file = home / "deployment-signing-key.pem"  # stands for the secret store: kept across re-entries of one home
        if not key_file.exists():
            key_file.write_text(signing_key_pem())
        os.environ["ERASURE_PIPELINE_SIGNING_KEY"] = key_file.read_text()
    from erasure_pipeline.app.runner import INSTANCE_TEMPLATE

    (home / "dagster").mkdir(exist_ok=True)
    if not (home / "dagster" / "dagster.yaml").exists():
        (home / "dagster" / "dagster.yaml").write_text(INSTANCE_TEMPLATE.read_text())
    try:
        yield home
    finally:
        _restore_env(saved)


def build_demo(home: Path, n_subjects: int = DEMO_SUBJECTS, seed: int = 3) -> None:
    import dagster as dg

    from erasure_pipeline.app import demo
    from erasure_pipeline.app.runner import materialize_all
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline_tests import stores

    demo.write_landing(stores.landing(), demo.generate(n_subjects, seed))
    policy = load_policy()
    with dg.DagsterInstance.get() as instance:
        summary = materialize_all(build_definitions(policy), instance)
    assert summary.success, [c.line() for c in summary.failed_checks]


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("built") / "home"
    with project_env(home):
        build_demo(home)
    return home


@pytest.fixture
def demo_home(built_demo: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the materialised demo, with the environment pointing at it."""
    home = tmp_path / "home"
    shutil.copytree(built_demo, home)
    with project_env(home):
        yield home


@pytest.fixture
def empty_home(tmp_path: Path) -> Iterator[Path]:
    with project_env(tmp_path / "home") as home:
        yield home


def instance():
    from erasure_pipeline.app.runner import get_instance

    return get_instance()


def defs_and_policy():
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions

    policy = load_policy()
    return build_definitions(policy), policy


# ---------------------------------------------------------------- real back-ends (Postgres, S3)
PG_URL_ENV = "ERASURE_PIPELINE_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def unavailable(what: str, require_env: str, how: str, error: Exception) -> None:
    """Fail where CI requires the server (``require_env=1``), skip with instructions elsewhere."""
    message = f"{what} is not reachable ({type(error).__name__}: {str(error).splitlines()[0][:200]}). {how}"
    if os.environ.get(require_env) == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    import sqlalchemy as sa

    url = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001  (any reason the server is unusable)
        unavailable("PostgreSQL", "ERASURE_PIPELINE_REQUIRE_POSTGRES",
                    f"Start one (trust auth) on 127.0.0.1:5432 with a database 'test', or set {PG_URL_ENV}.", exc)
    return url


@pytest.fixture
def pg_database(pg_server_url: str) -> Iterator[str]:
    """A fresh database on the test server for one test, dropped afterwards."""
    import secrets

    import sqlalchemy as sa

    name = f"ep_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # name is generated above, not input
    url = sa.engine.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1: moto's server mode in its own process (not an in-process mock)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    except OSError as exc:
        unavailable("moto server", "ERASURE_PIPELINE_REQUIRE_S3", 'Install it with pip install -e ".[dev]".', exc)
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError as exc:  # not up yet
            last = exc
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    else:
        proc.kill()
        unavailable("moto server", "ERASURE_PIPELINE_REQUIRE_S3", 'Install it with pip install -e ".[dev]" (moto[server]).', last)
    if proc.poll() is not None:
        unavailable("moto server", "ERASURE_PIPELINE_REQUIRE_S3", 'Install it with pip install -e ".[dev]" (moto[server]).',
                    RuntimeError(f"exited with {proc.returncode}"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh versioned bucket; yields (bucket, the environment a boto3 client needs to reach it)."""
    import secrets

    import boto3

    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    name = f"ep-test-{secrets.token_hex(4)}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    try:
        yield name, env
    finally:
        _restore_env(saved)

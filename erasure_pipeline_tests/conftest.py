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
cohorts:
  quasi_identifiers: [region, segment]
  generalise: {}
  measures: [lifetime_value]
  label: converted
model:
  estimator: logistic_regression
  min_holdout_auc: 0.5
"""
DEMO_SUBJECTS = 400
ENV_KEYS = (
    "ERASURE_PIPELINE_HOME", "DAGSTER_HOME", "ERASURE_PIPELINE_PEPPER", "ERASURE_PIPELINE_POLICY",
    "ERASURE_PIPELINE_LAKE_URL", "ERASURE_PIPELINE_LANDING_URL", "ERASURE_PIPELINE_QDRANT_URL", "ERASURE_PIPELINE_LEDGER_URL",
)

warnings.filterwarnings("ignore", message=".*preview.*")


@contextlib.contextmanager
def project_env(home: Path, policy_text: str = SMALL_POLICY, **extra: str) -> Iterator[Path]:
    """Point every project setting at ``home`` for the duration (restores the environment after)."""
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
        **extra,
    })
    from erasure_pipeline.runner import INSTANCE_TEMPLATE

    (home / "dagster").mkdir(exist_ok=True)
    if not (home / "dagster" / "dagster.yaml").exists():
        (home / "dagster" / "dagster.yaml").write_text(INSTANCE_TEMPLATE.read_text())
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_demo(home: Path, n_subjects: int = DEMO_SUBJECTS, seed: int = 3) -> None:
    import dagster as dg

    from erasure_pipeline import demo, settings
    from erasure_pipeline.definitions import build_definitions
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.runner import materialize_all

    demo.write_landing(settings.landing(), demo.generate(n_subjects, seed))
    policy = load_policy()
    with dg.DagsterInstance.get() as instance:
        materialize_all(build_definitions(policy), instance, policy.shards)


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
    import dagster as dg

    return dg.DagsterInstance.get()


def defs_and_policy():
    from erasure_pipeline.definitions import build_definitions
    from erasure_pipeline.policy import load_policy

    policy = load_policy()
    return build_definitions(policy), policy

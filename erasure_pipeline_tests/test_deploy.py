"""deploy/: no container engine or cluster runs here, so parse the compose file, the Helm values,
the Dockerfile and dagster.yaml, and check they agree with each other and with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from erasure_pipeline.core.settings import VARIABLES
from erasure_pipeline.defs.executors import executor_for

EXECUTOR_ENV = VARIABLES["executor"]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
APP_SERVICES = ("code_location", "webserver", "daemon", "drp_intake")
# Every setting the code reads in production, by the names the code uses.
APP_ENV = {
    "DAGSTER_PG_URL", "DAGSTER_COMPUTE_LOG_DIR", VARIABLES["ledger_url"], VARIABLES["lake_url"], VARIABLES["landing_url"],
    VARIABLES["qdrant_url"], VARIABLES["qdrant_api_key"], VARIABLES["pepper"], VARIABLES["signing_key"], VARIABLES["kms"], EXECUTOR_ENV,
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
}
HELM_SECRET_KEYS = {VARIABLES["pepper"], VARIABLES["signing_key"], VARIABLES["ledger_url"], VARIABLES["qdrant_api_key"], "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY"}


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return _load("dagster.yaml")


def test_dagster_yaml_reads_postgres_and_compute_log_dir_from_the_environment(instance_yaml):
    for name, cls in (("run_storage", "PooledPostgresRunStorage"), ("event_log_storage", "PooledPostgresEventLogStorage"),
                      ("schedule_storage", "PooledPostgresScheduleStorage")):
        assert instance_yaml[name] == {"module": "erasure_pipeline.defs.instance_storage", "class": cls,
                                       "config": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert "storage" not in instance_yaml  # the three above, not dagster-postgres's own classes
    assert instance_yaml["compute_logs"]["config"]["base_dir"] == {"env": "DAGSTER_COMPUTE_LOG_DIR"}
    assert "tag_concurrency_limits" not in instance_yaml["run_coordinator"]["config"]  # the pool is set by code
    monitoring = instance_yaml["run_monitoring"]
    assert monitoring["enabled"] is True and monitoring["free_slots_after_run_end_seconds"] > 0


@pytest.mark.parametrize("path", ["erasure_pipeline/app/instance.yaml", "dagster.yaml", "deploy/dagster.yaml"])
def test_every_instance_config_the_project_writes_turns_run_monitoring_on(path):
    config = yaml.safe_load((DEPLOY.parent / path).read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_compose_services_share_one_image_and_every_setting(instance_yaml):
    compose = _load("docker-compose.yaml")
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "qdrant", *APP_SERVICES} <= set(services)
    images = {services[s]["image"] for s in APP_SERVICES}
    assert len(images) == 1
    for s in APP_SERVICES:
        env = services[s]["environment"]
        assert APP_ENV <= set(env), APP_ENV - set(env)
        assert env["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")  # not psycopg 3 (not installed)
        assert env[VARIABLES["ledger_url"]].startswith("postgresql+psycopg2://")
        assert env[VARIABLES["lake_url"]].startswith("s3://") and env[VARIABLES["qdrant_url"]].startswith("http://qdrant:")
        assert services[s]["build"]["dockerfile"] == "deploy/Dockerfile"
        executor_for(env[EXECUTOR_ENV])  # a value the code accepts
    bucket = services["code_location"]["environment"][VARIABLES["lake_url"]].split("/")[2]
    init = " ".join(services["minio-init"]["command"])
    assert f"mc version enable lake/{bucket}" in init  # the lake bucket is versioned
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    workspace = _load("workspace.yaml")["load_from"][0]["grpc_server"]
    assert workspace["host"] == "code_location" and str(workspace["port"]) in services["code_location"]["command"]


def test_dockerfile_builds_the_package_and_ships_the_instance_config():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.MULTILINE)
    assert "COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/dagster_home/" in text
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in text
    assert 'pip install --no-cache-dir ".[${EXTRAS}]"' in text and 'ARG EXTRAS="k8s"' in text
    assert "erasure_pipeline.definitions" in text


def test_helm_values_match_dagster_yaml_and_compose(instance_yaml):
    values = _load("helm/values.yaml")
    compose = _load("docker-compose.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["global"]["postgresqlSecretName"]
    queue = values["dagsterDaemon"]["runCoordinator"]
    assert queue["type"] == "QueuedRunCoordinator"
    q = queue["config"]["queuedRunCoordinator"]
    cfg = instance_yaml["run_coordinator"]["config"]
    assert "tagConcurrencyLimits" not in q
    monitoring, chart = instance_yaml["run_monitoring"], values["dagsterDaemon"]["runMonitoring"]
    assert chart["enabled"] is True and chart["maxResumeRunAttempts"] == 0
    for snake, camel in (("start_timeout_seconds", "startTimeoutSeconds"), ("max_runtime_seconds", "maxRuntimeSeconds"),
                         ("free_slots_after_run_end_seconds", "freeSlotsAfterRunEndSeconds")):
        assert chart[camel] == monitoring[snake]
    assert q["maxConcurrentRuns"] == cfg["max_concurrent_runs"] and q["dequeueIntervalSeconds"] == cfg["dequeue_interval_seconds"]
    assert values["retention"]["sensor"]["purgeAfterDays"] == cfg_retention(instance_yaml)
    (dep,) = values["dagster-user-deployments"]["deployments"]
    image = f"{dep['image']['repository']}:{dep['image']['tag']}"
    assert image == compose["services"]["code_location"]["image"]
    assert dep["dagsterApiGrpcArgs"] == ["-m", "erasure_pipeline.definitions"]
    env = {e["name"]: e["value"] for e in dep["env"]}
    assert env[EXECUTOR_ENV] == "k8s"
    secrets = [s["name"] for s in dep["envSecrets"]]
    assert secrets == ["erasure-pipeline-secrets"] == [s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]]
    header = (DEPLOY / "helm" / "values.yaml").read_text().split("\n\n")[0]
    for key in HELM_SECRET_KEYS:  # the documented secret holds what env does not
        assert f"{key}=" in header
    # Dagster's own DAGSTER_PG_URL/compute-log settings are written by the chart from these values.
    assert (APP_ENV - {"DAGSTER_PG_URL", "DAGSTER_COMPUTE_LOG_DIR", "AWS_ENDPOINT_URL"}) <= set(env) | HELM_SECRET_KEYS


def cfg_retention(instance_yaml: dict) -> dict:
    return instance_yaml["retention"]["sensor"]["purge_after_days"]


def test_k8s_executor_needs_the_extra():
    try:
        import dagster_k8s  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"erasure_pipeline\[k8s\]"):
            executor_for("k8s")
    else:
        assert executor_for("k8s").name == "k8s"


def test_runbook_covers_what_operators_need():
    text = (DEPLOY / "README.md").read_text()
    for heading in ("## Secrets", "## First start", "## Upgrading", "## Backups", "## What was and was not run", "## Retention"):
        assert heading in text
    for var in APP_ENV:
        assert f"`{var}`" in text or var in text


def test_the_drp_intake_runs_the_same_image_and_secrets_as_the_code_location():
    compose = _load("docker-compose.yaml")["services"]["drp_intake"]
    assert compose["command"][:2] == ["erasure-pipeline", "serve"]
    (deployment, service) = list(yaml.safe_load_all((DEPLOY / "helm" / "drp-intake.yaml").read_text()))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    values = _load("helm/values.yaml")["dagster-user-deployments"]["deployments"][0]
    assert container["image"] == f"{values['image']['repository']}:{values['image']['tag']}"
    assert container["envFrom"] == [{"secretRef": {"name": values["envSecrets"][0]["name"]}}]
    assert container["command"][:2] == ["erasure-pipeline", "serve"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["containerPort"]


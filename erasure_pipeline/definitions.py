"""The code location: assets, jobs, checks, sensors, schedules and resources, built from the policy."""

import os
import warnings

import dagster as dg

from erasure_pipeline.assets import build_assets
from erasure_pipeline.graph import graph_for
from erasure_pipeline.imports import check_declared
from erasure_pipeline.jobs import build_jobs
from erasure_pipeline.policy import Policy, load_policy
from erasure_pipeline.resources import default_resources
from erasure_pipeline.schedules import build_schedules
from erasure_pipeline.sensors import build_sensors

# Partitioned asset checks (one proof per shard) are a preview feature in Dagster 1.13.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


EXECUTOR_ENV = "ERASURE_PIPELINE_EXECUTOR"
# Modules a forkserver loads once, so each step process starts without re-importing them
# (~5 s a step with spawn, ~2 s with a preloaded forkserver on a 2-core machine).
PRELOAD = ["dagster", "pandas", "pyarrow.parquet", "sklearn.linear_model", "qdrant_client", "erasure_pipeline.definitions"]


def executor_from_env(env: dict | None = None) -> dg.ExecutorDefinition:
    """``in_process`` (default: one process, no start-up cost per step), ``multiprocess[:N]``
    (steps of one run in parallel processes, forkserver with preloaded modules) or ``k8s``
    (``dagster_k8s.k8s_job_executor``: each step in its own pod; needs the ``k8s`` extra).
    """
    value = (env if env is not None else os.environ).get(EXECUTOR_ENV, "in_process").strip()
    name, _, count = value.partition(":")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        try:
            max_concurrent = int(count) if count else 0
        except ValueError:
            raise ValueError(f"{EXECUTOR_ENV}={value!r}: the process count after ':' must be an integer") from None
        return dg.multiprocess_executor.configured(
            {"max_concurrent": max_concurrent, "start_method": {"forkserver": {"preload_modules": PRELOAD}}},
            name="multiprocess_forkserver",
        )
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ValueError(f"{EXECUTOR_ENV}=k8s needs dagster-k8s: pip install 'erasure_pipeline[k8s]'") from None
        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV}={value!r}: use 'in_process', 'multiprocess[:N]' or 'k8s'")


def build_definitions(policy: Policy | None = None, resources: dict | None = None) -> dg.Definitions:
    policy = policy or load_policy()
    check_declared(policy)
    graph = graph_for(policy)
    built = build_assets(policy, graph)
    jobs = {j.name: j for j in build_jobs(policy, graph)}
    return dg.Definitions(
        assets=[a for a in built if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in built if isinstance(a, dg.AssetChecksDefinition)],
        jobs=list(jobs.values()),
        sensors=build_sensors(jobs),
        schedules=build_schedules(policy, graph, jobs),
        resources={**default_resources(), **(resources or {})},
        executor=executor_from_env(),
    )


defs = build_definitions()

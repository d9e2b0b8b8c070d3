"""The code location's definitions, built from the declaration: what ``dg`` loads from this folder.

``pipeline`` is a lazy ``@dg.definitions`` function: nothing is read (policy, environment) until Dagster
loads the code location. ``build_definitions`` is the same with its inputs given, for tests and tools.
"""

from __future__ import annotations

import warnings

import dagster as dg

from erasure_pipeline.core.policy import Policy, load_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.defs.assets import build_assets
from erasure_pipeline.defs.executors import executor_for
from erasure_pipeline.defs.jobs import build_jobs
from erasure_pipeline.defs.resources import recipients_resource, resources_for
from erasure_pipeline.defs.schedules import build_schedules
from erasure_pipeline.defs.sensors import build_sensors
from erasure_pipeline.kinds.registry import graph_for
from erasure_pipeline.ml.declared import check_declared


def build_definitions(policy: Policy | None = None, resources: dict | None = None, settings: Settings | None = None) -> dg.Definitions:
    # Partitioned asset checks (one proof per shard) are a preview feature in Dagster 1.13.
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    # Owners on sensors and schedules are a beta parameter in 1.13; the run failure sensor passes it even unset.
    warnings.filterwarnings("ignore", category=dg.BetaWarning, message=r".*Parameter `owners`")
    settings = settings or Settings.from_environ()
    policy = policy or load_policy(settings=settings)
    check_declared(policy)
    graph = graph_for(policy)
    built = build_assets(policy, graph)
    jobs = {j.name: j for j in build_jobs(policy, graph)}
    return dg.Definitions(
        assets=[a for a in built if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in built if isinstance(a, dg.AssetChecksDefinition)],
        jobs=list(jobs.values()),
        sensors=build_sensors(policy, graph, jobs),
        schedules=build_schedules(policy, graph, jobs),
        resources={**resources_for(settings), "recipients": recipients_resource(policy), **(resources or {})},
        executor=executor_for(settings.executor),
    )


@dg.definitions
def pipeline() -> dg.Definitions:
    return build_definitions()

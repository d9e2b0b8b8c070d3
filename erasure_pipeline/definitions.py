"""The code location: assets, checks, sensors and resources, built from the policy."""

import warnings

import dagster as dg

from erasure_pipeline.assets.cohorts import build_cohort_assets
from erasure_pipeline.assets.erasure import build_erasure_assets
from erasure_pipeline.assets.raw import build_raw_assets
from erasure_pipeline.assets.training import build_training_assets
from erasure_pipeline.assets.vectors import build_vector_assets
from erasure_pipeline.policy import Policy, load_policy
from erasure_pipeline.resources import default_resources
from erasure_pipeline.sensors import build_sensors

# Partitioned asset checks (one proof per shard) are a preview feature in Dagster 1.13.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_definitions(policy: Policy | None = None, resources: dict | None = None) -> dg.Definitions:
    policy = policy or load_policy()
    built = [*build_raw_assets(policy), *build_cohort_assets(policy), *build_training_assets(policy), *build_vector_assets(policy),
             *build_erasure_assets(policy)]
    checks = [a for a in built if isinstance(a, dg.AssetChecksDefinition)]
    assets = [a for a in built if not isinstance(a, dg.AssetChecksDefinition)]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        sensors=build_sensors(policy),
        resources={**default_resources(), **(resources or {})},
        executor=dg.in_process_executor,
    )


defs = build_definitions()

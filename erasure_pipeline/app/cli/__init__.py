"""``erasure-pipeline``: intake, status, certificates, verification, the demo data set, the pipeline's runs."""

from erasure_pipeline.app.cli import evidence, keys, pipeline, recipients, requests, tools  # noqa: F401  (each registers its commands on main)
from erasure_pipeline.app.cli.common import main

__all__ = ["main"]

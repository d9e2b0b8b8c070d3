"""Every piece of code a declaration names, imported and built once when the code location loads. No Dagster import.

A wrong import path or params then fail at load, as one line naming the field, not in the middle of a run.
"""

from __future__ import annotations

from erasure_pipeline.core.declared import load
from erasure_pipeline.core.policy import Policy, PolicyError
from erasure_pipeline.ml.estimators import build_estimator


def check_declared(policy: Policy) -> None:
    """Import each feature function and the embedder, and build each model's estimator once."""
    for i, fn in enumerate(policy.features.functions if policy.features else ()):
        if not callable(load(fn.function, f"features.functions.{i}.function", policy.code_dirs)):
            raise PolicyError(f"field 'features.functions.{i}.function': {fn.function} is not callable")
    if policy.embedder.function and not callable(load(policy.embedder.function, "embedder.function", policy.code_dirs)):
        raise PolicyError(f"field 'embedder.function': {policy.embedder.function} is not callable")
    for name, model in policy.models.items():
        build_estimator(model, name, policy.code_dirs)

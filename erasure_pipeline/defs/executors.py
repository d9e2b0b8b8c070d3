"""The executor a run uses, chosen by ``ERASURE_PIPELINE_EXECUTOR`` (``core.settings``)."""

from __future__ import annotations

import dagster as dg

from erasure_pipeline.core.settings import VARIABLES

# Modules a forkserver loads once, so each step process starts without re-importing them
# (~5 s a step with spawn, ~2 s with a preloaded forkserver on a 2-core machine).
PRELOAD = ["dagster", "pandas", "pyarrow.parquet", "sklearn.linear_model", "erasure_pipeline.definitions"]


def executor_for(value: str | None) -> dg.ExecutorDefinition:
    """``in_process`` (default: one process, no start-up cost per step), ``multiprocess[:N]`` (steps of one
    run in parallel processes, forkserver with preloaded modules) or ``k8s`` (``dagster_k8s.k8s_job_executor``:
    each step in its own pod; needs the ``k8s`` extra)."""
    variable = VARIABLES["executor"]
    value = (value or "in_process").strip()
    name, _, count = value.partition(":")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        try:
            max_concurrent = int(count) if count else 0
        except ValueError:
            raise ValueError(f"{variable}={value!r}: the process count after ':' must be an integer") from None
        return dg.multiprocess_executor.configured(
            {"max_concurrent": max_concurrent, "start_method": {"forkserver": {"preload_modules": PRELOAD}}},
            name="multiprocess_forkserver",
        )
    if name == "k8s":
        try:
            # dagster-k8s is an optional extra: imported only when this executor is asked for.
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ValueError(f"{variable}=k8s needs dagster-k8s: pip install 'erasure_pipeline[k8s]'") from None
        return k8s_job_executor
    raise ValueError(f"{variable}={value!r}: use 'in_process', 'multiprocess[:N]' or 'k8s'")

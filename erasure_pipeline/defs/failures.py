"""A run's failure as one line safe for a terminal, a log and the ledger: what the failure sensor and the CLI print.

Only messages of the project's own errors (``core.errors.PipelineError``, which never carry a data
value) are repeated; any other exception is named by its type only, since its message might quote data.
"""

from __future__ import annotations

from erasure_pipeline.core.errors import blocking_error_names, safe_error_names
from erasure_pipeline.defs.runtime import BLOCKED


def failure_of(run_id: str, step_failures) -> tuple[str | None, bool]:
    """(one safe line for a run's failed steps, whether its cause is outside the run's requests: a
    ``BlockingError`` such as a malformed landing file or an outage, which uses up no attempt). The line is
    None when the only failure is a blocking check (reported by name through the check itself)."""
    safe = safe_error_names() | {"Failure"}  # dg.Failure messages in this package name checks and request ids only
    blocking = blocking_error_names()
    for event in step_failures:
        error, chain = event.step_failure_data.error, []
        while error is not None:
            chain.append(error)
            error = error.cause
        if any(e.cls_name == "DagsterAssetCheckFailedError" or (e.cls_name == "Failure" and BLOCKED in e.message) for e in chain):
            continue
        for e in chain:
            if e.cls_name in safe:  # SerializableErrorInfo.message is "module.Class: message"
                line = f"{event.step_key}: " + e.message.strip().split(f"{e.cls_name}: ", 1)[-1].splitlines()[0]
                return line, e.cls_name in blocking
        return f"step {event.step_key} failed with {chain[-1].cls_name if chain else 'an error'}; see run {run_id} in the Dagster UI", False
    return None, False

"""Running the asset graph from Python and the CLI: the instance, and shard-by-shard materialisation."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from erasure_pipeline import home, identity
from erasure_pipeline.assets.common import MERGE_ASSETS, SHARD_ASSETS
from erasure_pipeline.errors import PipelineError

INSTANCE_TEMPLATE = Path(__file__).with_name("instance.yaml")


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME`` if set, else ``<project home>/dagster`` (created with the project's instance config)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    path = home.dagster_home()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_TEMPLATE.read_text())
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def get_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()


# Dagster's console logger would print every step failure with a stack trace; the CLI prints one
# line per failure instead (``RunSummary``), and the full record stays in the run's event log.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class FailedCheck:
    asset: str
    check: str
    partition: str | None
    severity: str
    detail: str

    def line(self) -> str:
        where = f"{self.asset}[{self.partition}]" if self.partition else self.asset
        return f"check FAILED ({self.severity}): {where} {self.check}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class RunSummary:
    """What a run did, in lines safe for a terminal: failed checks by name, a failure as one line."""

    run_id: str
    success: bool
    failed_checks: tuple[FailedCheck, ...]
    error: str | None
    """None when the run succeeded or failed only because a blocking check failed."""

    @classmethod
    def of(cls, result: dg.ExecuteInProcessResult) -> RunSummary:
        failed = tuple(
            FailedCheck(e.asset_key.to_user_string(), e.check_name, e.partition, e.severity.value, _check_detail(e.metadata))
            for e in result.get_asset_check_evaluations() if not e.passed
        )
        errors = [_step_error(ev.step_key, ev.step_failure_data.error, result.run_id) for ev in result.get_step_failure_events()]
        errors = [e for e in errors if e is not None]
        return cls(result.run_id, result.success, failed, errors[0] if errors else None)


def _check_detail(metadata: Mapping[str, dg.MetadataValue]) -> str:
    shown = [(k, v.value) for k, v in metadata.items() if isinstance(v.value, (int, float, str)) and len(str(v.value)) < 80]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown)


def _step_error(step_key: str, error, run_id: str) -> str | None:
    """One line for a failed step: the message of one of our errors, which never carries a data value
    (``errors.PipelineError``), else the exception type only (its message might quote data)."""
    from erasure_pipeline.errors import safe_error_names

    safe = safe_error_names()
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause
    if any(e.cls_name == "DagsterAssetCheckFailedError" for e in chain):
        return None  # reported by name through the check evaluation itself
    for e in chain:
        if e.cls_name in safe:  # SerializableErrorInfo.message is "module.Class: message"
            message = e.message.strip()
            return message.split(f"{e.cls_name}: ", 1)[-1]
    return f"step {step_key} failed with {chain[-1].cls_name if chain else 'an error'}; see run {run_id} in the Dagster UI"


def _assets_and_checks(defs: dg.Definitions) -> list:
    return [*defs.assets, *(defs.asset_checks or [])]


def materialize_partition(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition: str | None,
    asset_names: Sequence[str],
    *,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run that materialises ``asset_names`` (and their checks) for one shard, or unpartitioned."""
    return dg.materialize(
        _assets_and_checks(defs),
        selection=dg.AssetSelection.assets(*asset_names),
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
        run_config={**QUIET, **(run_config or {})},
        tags=tags or {},
        raise_on_error=False,
    )


class RunFailed(PipelineError):
    """A run failed for a reason other than a failed check; the message is one safe line."""


def status_line(summary: RunSummary) -> str:
    if summary.success:
        return f"ok (run {summary.run_id[:8]})"
    if summary.error is None:
        return f"checks failed: {', '.join(c.check for c in summary.failed_checks)} (run {summary.run_id[:8]})"
    return f"FAILED (run {summary.run_id[:8]})"


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    n_shards: int,
    *,
    progress: Callable[[str], None] = lambda _msg: None,
    shards: Sequence[int] | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
) -> list[RunSummary]:
    """Every shard's partitions (one run per shard), then the unpartitioned merges (one run).

    A run that fails for any reason but a failed check raises :class:`RunFailed` with one safe line;
    failed checks are in the summaries for the caller to report.
    """
    summaries = []
    todo = list(range(n_shards)) if shards is None else list(shards)
    if shards is None:  # every landing file present now is taken: the next cycle starts after them
        check_training_labels()
        _record_full_ingest(n_shards)
    steps = [(identity.partition_key(s), SHARD_ASSETS, run_config) for s in todo]
    steps.append((None, [*MERGE_ASSETS, "erasure_certificates"], None))
    for i, (partition, assets, config) in enumerate(steps, 1):
        summary = RunSummary.of(materialize_partition(defs, instance, partition, assets, run_config=config, tags=tags))
        summaries.append(summary)
        what = partition or f"merges ({', '.join(MERGE_ASSETS)})"
        progress(f"[{i}/{len(steps)}] {what}: {status_line(summary)}")
        if summary.error is not None:
            raise RunFailed(f"{what}: {summary.error}")
    return summaries


def check_training_labels() -> None:
    """Before a full build trains anything: every subjects file is readable under the policy, and the
    training set (consenting, not tombstoned, not held out) holds both classes of the label."""
    from erasure_pipeline import contracts, settings
    from erasure_pipeline.erasure.service import default_ledger
    from erasure_pipeline.ml.features import training_class_counts
    from erasure_pipeline.ml.labels import require_two_classes
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.storage.landing import read_landing_table

    policy = load_policy()
    subjects = read_landing_table(
        settings.landing(), "subjects", identity.load_pepper(home.project_home()), policy.shards,
        check=lambda frame, name: contracts.check_subjects_for_policy(frame, name, policy),
    )
    if subjects.empty:
        return
    subjects = subjects[~subjects["subject_key"].isin(default_ledger().tombstoned_keys())]
    counts = training_class_counts(subjects, policy, where="subjects (every landing file)")
    require_two_classes(counts, column=policy.model.label, where="subjects (every landing file)")


def _record_full_ingest(n_shards: int) -> None:
    import secrets

    from erasure_pipeline import settings
    from erasure_pipeline.cycle import record_full_ingest
    from erasure_pipeline.erasure.service import default_ledger
    from erasure_pipeline.policy import load_policy

    policy = load_policy()
    if policy.shards == n_shards:
        record_full_ingest(default_ledger(), settings.landing(), policy, "full-" + secrets.token_hex(8))

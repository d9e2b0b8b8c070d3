"""Running the project's jobs in this process (the CLI, scripts, tests): the instance, one run per
request, and what a run did in lines safe for a terminal.

A run requested by a tick is executed here exactly as the daemon would launch it, with one addition:
the batch is claimed in the ledger before the run is created (with the run id it will have), so two
commands evaluating the same tick never both run it: the second sees a live holder and skips.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.utils import make_new_run_id

from erasure_pipeline import home, runtime, tags
from erasure_pipeline.errors import PipelineError
from erasure_pipeline.nodes import Env

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
    """The instance, with the project's pool limit set in its storage (whatever its dagster.yaml says)."""
    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    runtime.ensure_pool(instance)
    return instance


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
        failures = result.get_step_failure_events()
        return cls(result.run_id, result.success, failed, safe_failure_line(result.run_id, failures) if failures else None)

    def line(self) -> str:
        if self.success:
            return f"ok (run {self.run_id[:8]})"
        if self.error is None:
            return f"checks failed: {', '.join(c.check for c in self.failed_checks)} (run {self.run_id[:8]})"
        return f"FAILED (run {self.run_id[:8]}): {self.error}"


def _check_detail(metadata: Mapping[str, dg.MetadataValue]) -> str:
    # sorted: storage may hand metadata back in another order than the run reported it
    shown = [(k, v.value) for k, v in sorted(metadata.items()) if isinstance(v.value, (int, float, str)) and len(str(v.value)) < 80]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown)


def safe_failure_line(run_id: str, step_failures) -> str | None:
    """One line for a run's failed steps: the message of one of our errors, which never carries a data
    value (``errors.PipelineError``), else the exception type only (its message might quote data).
    None if the only failure is a blocking check (reported by name through the check itself)."""
    from erasure_pipeline.errors import safe_error_names

    safe = safe_error_names() | {"Failure"}  # dg.Failure messages in this package name checks and request ids only
    for event in step_failures:
        error, chain = event.step_failure_data.error, []
        while error is not None:
            chain.append(error)
            error = error.cause
        if any(e.cls_name == "DagsterAssetCheckFailedError" or (e.cls_name == "Failure" and runtime.BLOCKED in e.message)
               for e in chain):
            continue  # a blocking check: reported by name through the check evaluation itself
        for e in chain:
            if e.cls_name in safe:  # SerializableErrorInfo.message is "module.Class: message"
                return f"{event.step_key}: " + e.message.strip().split(f"{e.cls_name}: ", 1)[-1].splitlines()[0]
        return f"step {event.step_key} failed with {chain[-1].cls_name if chain else 'an error'}; see run {run_id} in the Dagster UI"
    return None


class RunFailed(PipelineError):
    """A run failed for a reason other than a failed check; the message is one safe line."""


# ---------------------------------------------------------------- running the project's jobs here
def env_of(defs: dg.Definitions, graph=None) -> Env:
    from erasure_pipeline.graph import graph_for
    from erasure_pipeline.policy import load_policy

    r = defs.resources
    policy = load_policy()
    return Env(policy, graph or graph_for(policy), r["lake"].get(), r["landing"].get(), r["vectors"].get(), r["ledger"].get(),
               r["pepper"].get())


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, run_config: dict, run_tags: Mapping[str, str],
            run_id: str | None = None) -> RunSummary:
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(run_config={**QUIET, **run_config}, instance=instance, tags=dict(run_tags),
                                    run_id=run_id, raise_on_error=False)
    return RunSummary.of(result)


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest,
           progress: Callable[[str], None] = lambda _m: None) -> RunSummary | None:
    """Run a tick's request here: claim its batch for a new run id, then execute the run with that id.

    Returns None (and says so) when another live run holds the batch or it already finished. A run
    that fails has its requests failed in the ledger, as the failure sensor does under the daemon."""
    from erasure_pipeline.jobs import claim_erasure, claim_landing

    env = env_of(defs)
    run_id = make_new_run_id()
    job_name = request.job_name
    config = next(iter(request.run_config["ops"].values()))["config"]
    if job_name == tags.ERASURE_JOB:
        plan = claim_erasure(env, instance, config["batch_id"], config["request_ids"], run_id, plan=False)
    elif job_name == tags.REBUILD_JOB:
        plan = claim_landing(env, instance, config["batch_id"], "rebuild", None, dt.datetime.now(dt.UTC), run_id, {}, plan=False)
    else:
        as_of = dt.datetime.fromisoformat(config["as_of"]) if config.get("as_of") else dt.datetime.now(dt.UTC)
        plan = claim_landing(env, instance, config["batch_id"], config["kind"], config.get("landing_files"), as_of, run_id, {},
                             plan=False)
    if not plan.claimed:
        holder = f"run {plan.holder[:8]}" if plan.holder else "another run"
        progress(f"{job_name} {config['batch_id']}: held by {holder} or already finished; skipped")
        return None
    runtime.set_progress(progress)
    try:
        summary = execute(defs, instance, job_name, request.run_config, {**request.tags, tags.RUN_KEY: request.run_key}, run_id)
    finally:
        runtime.set_progress(None)
    if not summary.success:
        env.ledger.fail_run(run_id, summary.error or "checks failed: " + ", ".join(c.check for c in summary.failed_checks))
    progress(f"{job_name} {config['batch_id']}: {summary.line()}")
    return summary


def materialize_all(defs: dg.Definitions, instance: dg.DagsterInstance, *, progress: Callable[[str], None] = lambda _m: None) -> RunSummary:
    """A full build: one ingest_job run takes every landing file into every shard, then the merges.

    Raises :class:`RunFailed` with one safe line when the run fails for a reason other than a
    failed check; failed checks are in the summary for the caller to report."""
    check_training_labels(env_of(defs))
    batch = "full-" + secrets.token_hex(8)
    request = dg.RunRequest(run_key=batch, job_name=tags.INGEST_JOB, tags={tags.BATCH: batch, tags.KIND: "ingest"},
                            run_config={"ops": {"claim_landing_files": {"config": {"batch_id": batch, "kind": "full"}}}})
    summary = launch(defs, instance, request, progress)
    if summary is None:
        raise RunFailed(f"full build {batch} could not claim its landing batch")
    if summary.error is not None:
        raise RunFailed(summary.error)
    return summary


def standing_check_failures(instance: dg.DagsterInstance, defs: dg.Definitions) -> list[FailedCheck]:
    """Checks whose latest evaluation (per partition) failed, whichever run evaluated them: after a
    build that recomputed nothing, a model still below its floor is still reported."""
    out = []
    for check_key in defs.resolve_asset_graph().asset_check_keys:
        latest: dict[str | None, object] = {}
        for record in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=256):
            evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
            if evaluation is not None and getattr(evaluation, "partition", None) not in latest:
                latest[evaluation.partition] = evaluation
        for partition, e in latest.items():
            if not e.passed:
                out.append(FailedCheck(check_key.asset_key.to_user_string(), check_key.name, partition, e.severity.value,
                                       _check_detail(e.metadata)))
    return out


def dagster_anchors(instance: dg.DagsterInstance, certificate_node: str = "erasure_certificates") -> list:
    """The audit-log heads erasure runs recorded in Dagster's event log (a store the ledger's owner does not write)."""
    from erasure_pipeline.erasure.service import ANCHOR_HASH, ANCHOR_SEQ
    from erasure_pipeline.ledger import Anchor

    out, cursor = [], None
    while True:
        page = instance.fetch_materializations(dg.AssetKey(certificate_node), limit=1000, cursor=cursor)
        for record in page.records:
            meta = record.asset_materialization.metadata
            if ANCHOR_SEQ in meta and ANCHOR_HASH in meta:
                out.append(Anchor(int(meta[ANCHOR_SEQ].value), str(meta[ANCHOR_HASH].value), f"erasure run {record.run_id[:8]}"))
        if not page.has_more:
            return out
        cursor = page.cursor


def check_training_labels(env: Env) -> None:
    """Before a full build trains anything: every file of the features' dataset is readable under the
    declaration, and each model's training set (consenting, not tombstoned, not held out) can teach it
    something (two classes; a target that varies)."""
    from erasure_pipeline import contracts
    from erasure_pipeline.ml.features import model_label, training_labels
    from erasure_pipeline.ml.labels import require_learnable
    from erasure_pipeline.storage.landing import read_landing_table

    policy = env.policy
    dataset = policy.features.dataset
    rows = read_landing_table(env.landing, contracts.contracts_for(policy)[dataset], env.keyer,
                              check=lambda frame, name: contracts.check_labels(frame, name, policy))
    if rows.empty:
        return
    rows = rows[~rows["subject_key"].isin(env.ledger.tombstoned_keys())]
    where = f"{dataset} (every landing file)"
    for name in policy.models:
        require_learnable(model_label(policy, name), training_labels(rows, policy, name, where=where), where=where)

"""Running the project's jobs in this process (the CLI, scripts, tests): the instance, one run per
request, and what a run did in lines safe for a terminal.

A run requested by a tick is executed here exactly as the daemon would launch it, with one addition:
the batch is claimed in the ledger before the run is created (with the run id it will have), so two
commands evaluating the same tick never both run it: the second sees a live holder and skips.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing.forkserver
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import execute_run
from dagster._core.utils import make_new_run_id

from erasure_pipeline.core import names
from erasure_pipeline.core.contracts import contracts_for
from erasure_pipeline.core.errors import PipelineError
from erasure_pipeline.core.policy import Policy, load_policy
from erasure_pipeline.core.settings import Settings, use_dagster_home
from erasure_pipeline.defs import runtime
from erasure_pipeline.defs.failures import failure_of
from erasure_pipeline.defs.resources import resolve
from erasure_pipeline.defs.steps import ANCHOR_HASH, ANCHOR_SEQ
from erasure_pipeline.erasure.plan import claim_erasure, claim_landing, unmatched_files
from erasure_pipeline.kinds.base import Env
from erasure_pipeline.ledger import Anchor
from erasure_pipeline.ml.features import model_label, require_numbers, training_labels
from erasure_pipeline.ml.labels import check_labels, require_learnable
from erasure_pipeline.stores.landing import landing_files, read_landing_table

INSTANCE_TEMPLATE = Path(__file__).with_name("instance.yaml")


def ensure_dagster_home(settings: Settings | None = None) -> Path:
    """``$DAGSTER_HOME`` if set, else ``<project home>/dagster``. Where it has no ``dagster.yaml`` the project's
    instance config is written (SQLite storage, as Dagster's defaults, with telemetry off and run
    monitoring on): without one Dagster warns on every command and prints its telemetry banner into the
    CLI's output. An instance with its own ``dagster.yaml`` is used as it is."""
    settings = settings or Settings.from_environ()
    path = use_dagster_home(settings)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_TEMPLATE.read_text())
    return path


def get_instance() -> dg.DagsterInstance:
    """The instance, with the project's pool limits set in its storage (whatever its dagster.yaml says): the landing
    and merge pools here; each claim step sets its shards' pools before its shard steps start."""
    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    runtime.ensure_pools(instance)
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
    blocked: bool = False
    """The failure's cause is outside the run's requests (``BlockingError``): it uses up no attempt."""

    @classmethod
    def of(cls, result: dg.ExecuteInProcessResult) -> RunSummary:
        failed = tuple(
            FailedCheck(e.asset_key.to_user_string(), e.check_name, e.partition, e.severity.value, _check_detail(e.metadata))
            for e in result.get_asset_check_evaluations() if not e.passed
        )
        line, blocked = failure_of(result.run_id, result.get_step_failure_events())
        return cls(result.run_id, result.success, failed, line, blocked)

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


class RunFailed(PipelineError):
    """A run failed for a reason other than a failed check; the message is one safe line."""


# ---------------------------------------------------------------- running the project's jobs here
def env_of(defs: dg.Definitions, policy: Policy | None = None, instance: dg.DagsterInstance | None = None) -> Env:
    """The stores the definitions' ``pipeline`` resource points at, for ``policy`` (default: the policy file's).
    ``instance``: the caller's, so resolving the resource does not make an ephemeral one (~0.2 s, first time)."""
    return resolve(defs.resources["pipeline"], instance).env(policy or load_policy())


_FORKSERVER_SETTINGS: Settings | None = None


def _forkserver_for_this_environment() -> None:
    """Step processes are forked by a forkserver, which keeps the environment it started with: a process that
    points the project at another home between runs (tests, benchmarks) would have its steps write the old
    one. Stop the forkserver when the project's environment changed since it started; the executor starts a
    new one. (``ForkServer._stop`` is private but has been in CPython since 3.8; without it, nothing is done.)"""
    global _FORKSERVER_SETTINGS
    now = Settings.from_environ()
    if _FORKSERVER_SETTINGS is not None and now != _FORKSERVER_SETTINGS:
        server = getattr(multiprocessing.forkserver, "_forkserver", None)
        if server is not None and hasattr(server, "_stop"):
            server._stop()
    _FORKSERVER_SETTINGS = now


CODE_LOCATION = ("erasure_pipeline.defs.pipeline", "pipeline")
"""Where a step process rebuilds the definitions from (the environment's declaration and settings)."""


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, run_config: dict, run_tags: Mapping[str, str],
            run_id: str | None = None) -> RunSummary:
    """Run a job here with the given run id: in this process by default, or with the executor the environment
    names (``ERASURE_PIPELINE_EXECUTOR=multiprocess:2``: steps in forkserver processes, each shard step in its
    shard's pool, so shard steps of different shards run at once)."""
    job = defs.resolve_job_def(job_name)
    if job.executor_def is dg.in_process_executor:
        result = job.execute_in_process(run_config={**QUIET, **run_config}, instance=instance, tags=dict(run_tags),
                                        run_id=run_id, raise_on_error=False)
        return RunSummary.of(result)
    _forkserver_for_this_environment()
    module, attribute = CODE_LOCATION
    recon = ReconstructableRepository.for_module(module, attribute, working_directory=os.getcwd()).get_reconstructable_job(job_name)
    run = instance.create_run_for_job(job_def=job, run_id=run_id, run_config={**QUIET, **run_config}, tags=dict(run_tags),
                                      job_code_origin=recon.get_python_origin())
    return RunSummary.of(execute_run(recon, run, instance, raise_on_error=False))


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest,
           progress: Callable[[str], None] = lambda _m: None, env: Env | None = None) -> RunSummary | None:
    """Run a tick's request here: claim its batch for a new run id, then execute the run with that id.
    ``env``: the stores, when the caller resolved them already (each resolution loads the declaration and
    opens the ledger: ~0.1 s).

    Returns None (and says so) when another live run holds the batch or it already finished. A run
    that fails has its requests failed in the ledger, as the failure sensor does under the daemon."""
    env = env or env_of(defs, instance=instance)
    run_id = make_new_run_id()
    job_name = request.job_name
    config = request.run_config["ops"][names.CLAIM_OP_OF_JOB[job_name]]["config"]
    who = {"is_live": runtime.run_is_live(instance, env.ledger), "host": runtime.HOST, "pid": os.getpid(), "plan": False}
    if job_name == names.ERASURE_JOB:
        plan = claim_erasure(env, config["batch_id"], config["request_ids"], run_id, **who)
    elif job_name == names.REBUILD_JOB:
        plan = claim_landing(env, config["batch_id"], "rebuild", None, dt.datetime.now(dt.UTC), run_id, {}, **who)
    else:
        as_of = dt.datetime.fromisoformat(config["as_of"]) if config.get("as_of") else dt.datetime.now(dt.UTC)
        plan = claim_landing(env, config["batch_id"], config["kind"], config.get("landing_files"), as_of, run_id, {}, **who)
    if not plan.claimed:
        holder = f"run {plan.holder[:8]}" if plan.holder else "another run"
        progress(f"{job_name} {config['batch_id']}: held by {holder} or already finished; skipped")
        return None
    runtime.set_progress(progress)
    try:
        summary = execute(defs, instance, job_name, request.run_config, {**request.tags, names.RUN_KEY: request.run_key}, run_id)
    except Exception as exc:
        # Step failures come back in the summary; what escapes is Dagster's own machinery failing, typically its
        # instance storage gone mid-run. The ledger still answers: hand the run's requests back as blocked (they
        # use no attempt and resume once the cause is gone), then let the caller say what happened.
        with contextlib.suppress(Exception):
            env.ledger.runs.fail_run(run_id, f"the run could not be recorded: Dagster's instance storage failed ({type(exc).__name__})",
                                     blocked=True)
        raise
    finally:
        runtime.set_progress(None)
    if not summary.success:
        env.ledger.runs.fail_run(run_id, summary.error or "checks failed: " + ", ".join(c.check for c in summary.failed_checks),
                                 blocked=summary.blocked)
    run = instance.get_run_by_id(run_id)
    outcome = (run.tags.get(names.OUTCOME) if run else None) if job_name == names.ERASURE_JOB else None
    progress(f"{job_name} {config['batch_id']}: {summary.line()}" + (f": {outcome}" if outcome else ""))
    lines = erasure_outcomes(env.ledger, config["request_ids"]) if job_name == names.ERASURE_JOB else ingest_accounts(instance, run_id, env)
    for line in lines:
        progress(line)
    return summary


def _metadata(instance: dg.DagsterInstance, run_id: str) -> tuple[list[tuple[str, dict]], dict]:
    """(every materialisation of the run as (asset, metadata), the claim step's plan output metadata)."""
    materialised = [(e.dagster_event.asset_key.to_user_string(), {k: v.value for k, v in e.dagster_event.materialization.metadata.items()})
                    for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)]
    plan: dict = {}
    for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
        data = e.dagster_event.event_specific_data
        if data.step_output_handle.output_name == "plan":
            plan = {k: v.value for k, v in (data.metadata or {}).items()}
    return materialised, plan


def ingest_accounts(instance: dg.DagsterInstance, run_id: str, env: Env) -> list[str]:
    """Every row accounted for, one line per dataset the run ingested: rows read, past retention (and why), of
    erased subjects, without a subject; then training rows a declaration could not make, and landing files
    that belong to no dataset."""
    materialised, plan = _metadata(instance, run_id)
    totals: dict[str, dict] = {}
    for asset, meta in materialised:
        node = env.graph.by_name.get(asset)
        if node is None:
            continue
        t = totals.setdefault(asset, {})
        for k, v in meta.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                t[k] = t.get(k, 0) + v
            elif k == "retention_cutoff" and v:
                t[k] = max(t.get(k, ""), v)
    lines = [_dataset_line(env, node, totals[node.name], plan) for node in env.graph.raw_nodes if node.name in totals]
    for node in (n for n in env.graph.shard_nodes if n.kind == "training_set" and n.name in totals):
        t = totals[node.name]
        if t.get("subjects_without_features_row"):
            lines.append(f"{node.name}: {t['subjects_without_features_row']:,} subjects have rows in an aggregated dataset but none in "
                         f"'{env.policy.features.dataset}' (features.dataset): they feed no training row")
        for k in sorted(k for k in t if k.startswith("filled_")):
            c = k.removeprefix("filled_")
            lines.append(f"{node.name}: '{c}' had no value in {t[k]:,} training rows, filled as declared ({env.policy.features.fill_of(c)})")
    if plan.get("landing_files_matching_no_dataset"):
        lines.append(unmatched_line(env))
    return lines


def _dataset_line(env: Env, node, t: dict, plan: dict) -> str:
    missing = plan.get(f"rows_without_subject_{node.table}", 0)
    rule = env.policy.datasets[node.table].missing_subject
    parts = [f"{t.get('rows_added', 0) + (missing if rule == 'drop' else 0):,} rows read"]
    if t.get("rows_past_retention"):
        parts.append(f"{t['rows_past_retention']:,} past retention (retention_days {env.policy.retention_days}: "
                     f"older than {t.get('retention_cutoff', '')[:10]})")
    if t.get("tombstoned_rows_dropped"):
        parts.append(f"{t['tombstoned_rows_dropped']:,} of erased subjects dropped")
    if t.get("rows_superseded_under_another_subject"):
        parts.append(f"{t['rows_superseded_under_another_subject']:,} older rows replaced by their id sent again under another subject")
    if missing:
        parts.append(f"{missing:,} without a subject ({ {'drop': 'dropped', 'keep': 'kept as rows of nobody'}.get(rule)})")
    return f"{node.table}: " + ", ".join(parts) + f"; {t.get('rows', 0):,} rows in the partitions written"


def unmatched_line(env: Env) -> str:
    files = unmatched_files(env)
    return (f"{len(files)} file{'s' if len(files) != 1 else ''} in landing match no dataset and were not read: {', '.join(files[:5])}"
            f"{' …' if len(files) > 5 else ''} (a dataset's files sit in landing/<name>/ or start with <name>_, e.g. "
            f"{next(iter(env.policy.datasets))}/export.csv)")


def check_landing(env: Env) -> None:
    """Before a full build: every declared dataset has a landing file or data in the lake already; say which
    files belong to no dataset when one has none."""
    tables = contracts_for(env.policy)
    recorded = {a for a, _p in env.ledger.nodes.records()}
    empty = [name for name, contract in tables.items() if not landing_files(env.landing, {name: contract})
             and not any(n.table == name and n.name in recorded for n in env.graph.nodes)]
    if empty:
        unmatched = unmatched_files(env)
        raise RunFailed(f"dataset{'s' if len(empty) > 1 else ''} {', '.join(repr(e) for e in empty)} "
                        f"{'have' if len(empty) > 1 else 'has'} no file in landing ({env.landing.describe()}); a dataset's files sit in "
                        f"landing/<name>/ or start with <name>_ (CSV or Parquet)"
                        + (f"; {len(unmatched)} files there match no dataset: {', '.join(unmatched[:5])}" if unmatched else ""))


def erasure_outcomes(book, request_ids: list[str]) -> list[str]:
    """What a person must know of an erasure run's requests beyond "ok": those that found no data at all
    (the id may be wrong), and those that wait for review (no data under the id, data under a look-alike)."""
    out = []
    for r in book.requests.by_ids(request_ids):
        if r["status"] == "needs_review":
            out.append(f"{r['request_id']}: needs review: no data under the id as filed, but data under a look-alike id "
                       f"(a confusable character or a blank); decide with erasure-pipeline review {r['request_id']} "
                       "--same-subject | --different-subject --reason ...")
        elif r["status"] == "completed":
            found = book.certificates.get(r["request_id"])
            if found is not None and not found[0].get("data_present"):
                out.append(f"{r['request_id']}: completed: no data of this subject was found in any store "
                           "(if data was expected, check the id that was filed)")
    return out


def materialize_all(defs: dg.Definitions, instance: dg.DagsterInstance, *, progress: Callable[[str], None] = lambda _m: None) -> RunSummary:
    """A full build: one ingest_job run takes every landing file into every shard, then the merges.

    Raises :class:`RunFailed` with one safe line when the run fails for a reason other than a
    failed check; failed checks are in the summary for the caller to report."""
    env = env_of(defs, instance=instance)
    check_landing(env)
    check_training_labels(env)
    batch = "full-" + secrets.token_hex(8)
    request = dg.RunRequest(run_key=batch, job_name=names.INGEST_JOB, tags={names.BATCH: batch, names.KIND: "ingest"},
                            run_config={"ops": {names.CLAIM_LANDING_OP: {"config": {"batch_id": batch, "kind": "full"}}}})
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


def dagster_anchors(instance: dg.DagsterInstance, certificate_node: str = names.CERTIFICATES_ASSET) -> list[Anchor]:
    """The audit-log heads erasure runs recorded in Dagster's event log (a store the ledger's owner does not write)."""
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
    policy = env.policy
    if policy.features is None or not policy.models:
        return
    dataset = policy.features.dataset
    rows = read_landing_table(env.landing, contracts_for(policy)[dataset], env.keyer, check=lambda frame, name: check_labels(frame, name, policy))
    if rows.empty:
        return
    rows = rows[~rows["subject_key"].isin(env.ledger.tombstones.active())]
    where = f"{dataset} (every landing file)"
    require_numbers(rows, policy, where=where)
    for name in policy.models:
        require_learnable(model_label(policy, name), training_labels(rows, policy, name, where=where), where=where)

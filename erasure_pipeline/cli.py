"""``erasure-pipeline``: intake, status, certificates, verification, the demo data set, search."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import click

from erasure_pipeline import home


def _echo_err(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)


def _quiet_dagster() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)


def _defs_and_policy():
    from erasure_pipeline.definitions import build_definitions
    from erasure_pipeline.policy import load_policy

    policy = load_policy()
    return build_definitions(policy), policy


class _Fail(click.ClickException):
    def show(self, file=None) -> None:
        _echo_err(self.message)


def _guard(fn):
    """Known failures become one clear line and exit 1, never a stack trace as the only message."""
    import functools

    from erasure_pipeline.errors import PipelineError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PipelineError, FileNotFoundError) as exc:
            raise _Fail(str(exc)) from None

    return wrapper


@click.group()
def main() -> None:
    """Honour erasure requests all the way into the ML stack (Dagster code location)."""


ALLOW_FAILED_CHECKS = click.option(
    "--allow-failed-checks", is_flag=True,
    help="Exit 0 even when an asset check fails (quality floor, tombstones, k-anonymity, retrain equality); they are still listed.",
)


def _report_checks(summaries, allow_failed_checks: bool) -> None:
    """Every failed check by name; a failed check makes the command fail unless the user accepts it."""
    failed = [c for s in summaries for c in s.failed_checks]
    for c in failed:
        click.echo(c.line(), err=True)
    if failed and not allow_failed_checks:
        names = ", ".join(sorted({c.check for c in failed}))
        raise _Fail(f"{len(failed)} asset checks failed ({names}); fix the cause, or pass --allow-failed-checks to accept")


@main.command()
@click.option("--subjects", "n_subjects", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--no-materialize", is_flag=True, help="Only write the landing files.")
@ALLOW_FAILED_CHECKS
@_guard
def demo(n_subjects: int, seed: int, no_materialize: bool, allow_failed_checks: bool) -> None:
    """Write a synthetic data set into landing, then materialise every partition of every asset."""
    _quiet_dagster()
    from erasure_pipeline import demo as demo_data
    from erasure_pipeline import settings

    t0 = time.monotonic()
    tables = demo_data.generate(n_subjects, seed)
    landing = settings.landing()
    names = demo_data.write_landing(landing, tables)
    click.echo(f"landing: wrote {', '.join(f'{k}={len(v)}' for k, v in tables.items())} rows to {landing.describe()} ({len(names)} files)")
    if no_materialize:
        return
    _materialize(t0, allow_failed_checks)


def _materialize(t0: float, allow_failed_checks: bool) -> None:
    from erasure_pipeline.runner import get_instance, materialize_all

    defs, policy = _defs_and_policy()
    instance = get_instance()
    click.echo(f"materialising {policy.shards} shards + merges into the Dagster instance at {instance.root_directory}")
    summaries = materialize_all(defs, instance, policy.shards, progress=click.echo)
    _report_checks(summaries, allow_failed_checks)
    click.echo(f"done in {time.monotonic() - t0:.1f} s. Browse it with: make dev  (or DAGSTER_HOME={instance.root_directory} dagster dev)")


@main.command()
@ALLOW_FAILED_CHECKS
@_guard
def materialize(allow_failed_checks: bool) -> None:
    """Ingest landing and materialise every partition of every asset."""
    _quiet_dagster()
    _materialize(time.monotonic(), allow_failed_checks)


@main.command()
@click.argument("text")
@click.option("--limit", type=click.IntRange(1, 100), default=5, show_default=True)
@_guard
def search(text: str, limit: int) -> None:
    """Top ticket chunks for TEXT across every shard (ticket id, shard, score; no subject ids)."""
    from erasure_pipeline import settings
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.vectors.embed import embed

    policy = load_policy()
    store = settings.vector_store()
    hits = store.search(embed([text], policy.vectors.dimensions)[0], list(range(policy.shards)), limit=limit)
    if not hits:
        click.echo("no hits (has vector_index been materialised?)")
    click.echo(f"{'score':>7}  {'shard':<9} ticket")
    for score, payload in hits:
        click.echo(f"{score:7.4f}  shard_{payload.get('shard', 0):02d}  {payload.get('ticket_id')}")


@main.command()
@click.argument("subject_id")
@click.option("--reason", default=None, help="Why the subject asked (kept in the ledger, never in Dagster).")
@_guard
def erase(subject_id: str, reason: str | None) -> None:
    """File an erasure request for SUBJECT_ID; prints the request id."""
    from erasure_pipeline.erasure.service import erase as file_erasure

    request_id, created = file_erasure(subject_id, reason)
    click.echo(request_id)
    if not created:
        click.echo("(a live request for this subject already exists; that is its id)", err=True)


def _ledger():
    from erasure_pipeline.erasure.service import default_ledger

    return default_ledger()


@main.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@_guard
def status(request_id: str, as_json: bool) -> None:
    """Show one request's state, dates and history."""
    book = _ledger()
    req = book.get_request(request_id)
    shown = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in req.items() if k not in ("seq",)}
    shown["history"] = [f"{e['at']:%Y-%m-%d %H:%M:%S} {e['event']}" for e in book.audit_entries(request_id)]
    if as_json:
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    for k, v in shown.items():
        if k == "history":
            click.echo("history:")
            for line in v:
                click.echo(f"  {line}")
        elif v not in (None, ""):
            click.echo(f"{k}: {v}")


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="The Art.17(3) exception or legal hold.")
@_guard
def hold(request_id: str, reason: str) -> None:
    """Put a request on hold (Art.17(3) exception or legal hold)."""
    _ledger().hold(request_id, reason)
    click.echo(f"{request_id}: on_hold")


@main.command()
@click.argument("request_id")
@_guard
def release(request_id: str) -> None:
    """Release a held request; it is processed again."""
    _ledger().release(request_id)
    click.echo(f"{request_id}: pending")


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True)
@_guard
def extend(request_id: str, reason: str) -> None:
    """Extend the due date once, by policy erasure_extension_days (Art.12(3): up to two months)."""
    from erasure_pipeline.policy import load_policy

    due = _ledger().extend(request_id, reason, days=load_policy().erasure_extension_days)
    click.echo(f"{request_id}: due {due.isoformat()}")


@main.command()
@click.argument("request_id")
@_guard
def retry(request_id: str) -> None:
    """Return a failed request to pending."""
    _ledger().retry(request_id)
    click.echo(f"{request_id}: pending")


@main.command()
@ALLOW_FAILED_CHECKS
@_guard
def process(allow_failed_checks: bool) -> None:
    """Evaluate the erasure sensor and run what it requests until nothing is pending."""
    _quiet_dagster()
    from erasure_pipeline.process import drain
    from erasure_pipeline.runner import get_instance

    defs, _policy = _defs_and_policy()
    result = drain(defs, get_instance(), progress=click.echo)
    click.echo(f"{len(result.runs)} runs, {len(result.failed_batches)} failed batches")
    if result.failed_batches:
        raise _Fail("some erasure batches failed; see `erasure-pipeline status REQUEST_ID` and the runs in the Dagster UI")
    _report_checks(result.summaries, allow_failed_checks)


@main.command()
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="The cycle's time (UTC) for the retention cutoff; default now.")
@ALLOW_FAILED_CHECKS
@_guard
def cycle(as_of, allow_failed_checks: bool) -> None:
    """Run one retraining cycle now: new landing files and retention, only the shards they touch."""
    import datetime as dt

    _quiet_dagster()
    from erasure_pipeline.process import run_cycle
    from erasure_pipeline.runner import get_instance

    defs, _policy = _defs_and_policy()
    when = as_of.replace(tzinfo=dt.UTC) if as_of else None
    result = run_cycle(defs, get_instance(), when, progress=click.echo)
    if result.batch_id:
        click.echo(f"cycle {result.batch_id}: {result.files} new landing files, shards {result.shards}, {len(result.runs)} runs")
    if result.failed:
        raise _Fail(f"{len(result.failed)} cycle runs failed; see them in the Dagster UI")
    _report_checks(result.summaries, allow_failed_checks)


@main.group()
def policy() -> None:
    """Policy changes: what they make stale before you apply them."""


def _print_stale(plan) -> None:
    if not plan:
        click.echo("nothing is stale: every asset partition was materialised under these policy values")
        return
    click.echo("| asset | partitions | why |")
    click.echo("|---|---|---|")
    for a in plan.assets:
        parts = "(unpartitioned)" if a.partitions == [None] else (
            f"all {len(a.partitions)}" if len(a.partitions) > 3 else ", ".join(a.partitions))
        why = a.reason + (f" (reads: {', '.join(a.fields)})" if a.fields and a.reason.startswith("policy") else "")
        click.echo(f"| {a.asset} | {parts} | {why} |")


@policy.command("diff")
@click.option("--proposed", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A policy file to compare (default: the policy file in effect, e.g. after editing it).")
@_guard
def policy_diff(proposed: Path | None) -> None:
    """Which assets and partitions a policy would make stale (nothing is changed)."""
    _quiet_dagster()
    from erasure_pipeline.definitions import build_definitions
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.policy_changes import field_differences, stale_under
    from erasure_pipeline.runner import get_instance

    current = load_policy()
    new = load_policy(proposed) if proposed else current
    if proposed:
        diffs = field_differences(current, new)
        click.echo("policy fields that differ from the policy in effect:" if diffs else "the proposed policy equals the policy in effect")
        for f, old, value in diffs:
            click.echo(f"  {f}: {json.dumps(old)} -> {json.dumps(value)}")
    with get_instance() as instance:
        _print_stale(stale_under(new, build_definitions(new), instance))


@main.command()
@click.option("--stale", is_flag=True, required=True, help="Backfill every asset partition the policy in effect makes stale.")
@click.option("--dry-run", is_flag=True, help="Only list what would be backfilled.")
@click.option("--wait", "wait_s", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seconds to wait for the daemon to finish the backfill (0: return at once).")
@_guard
def backfill(stale: bool, dry_run: bool, wait_s: int) -> None:
    """Launch one Dagster backfill of exactly the stale asset partitions (run by the daemon)."""
    _quiet_dagster()
    from erasure_pipeline.policy_changes import launch_backfill, stale_under
    from erasure_pipeline.runner import get_instance

    defs, pol = _defs_and_policy()
    with get_instance() as instance:
        plan = stale_under(pol, defs, instance)
        _print_stale(plan)
        if not plan or dry_run:
            return
        backfill_id = launch_backfill(plan, defs, instance, title=f"policy change: {', '.join(plan.names())}")
        click.echo(f"backfill {backfill_id} launched: see the Backfills page of the Dagster UI (the daemon runs it)")
        deadline = time.monotonic() + wait_s
        status = instance.get_backfill(backfill_id).status
        while wait_s and time.monotonic() < deadline and status.value in ("REQUESTED", "CANCELING", "FAILING"):
            time.sleep(2)
            status = instance.get_backfill(backfill_id).status
        if wait_s:
            click.echo(f"backfill {backfill_id}: {status.value}")
            if status.value != "COMPLETED_SUCCESS" and status.value != "COMPLETED":
                raise _Fail(f"backfill {backfill_id} is {status.value}")


@main.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@_guard
def certificate(request_id: str, as_json: bool) -> None:
    """Print a request's erasure certificate."""
    from erasure_pipeline.erasure.certificate import to_markdown

    book = _ledger()
    book.get_request(request_id)
    found = book.certificate(request_id)
    if found is None:
        raise _Fail(f"{request_id} has no certificate yet (status: {book.get_request(request_id)['status']})")
    body, digest = found
    if as_json:
        click.echo(json.dumps({**body, "sha256": digest}, indent=2))
    else:
        click.echo(to_markdown(body))
        click.echo(f"\nsha256 of certificate: {digest}")


@main.command()
@click.argument("request_id")
@_guard
def verify(request_id: str) -> None:
    """Re-check every claim of a certificate against the stores as they are now (exit 1 on a mismatch)."""
    from erasure_pipeline.erasure.service import default_stores
    from erasure_pipeline.erasure.verify import verify_certificate

    findings = verify_certificate(request_id, default_stores())
    for f in findings:
        click.echo(f"{'ok  ' if f.ok else 'FAIL'} {f.claim} [{f.target}] {f.detail}".rstrip())
    bad = sum(not f.ok for f in findings)
    if bad:
        raise _Fail(f"{bad} of {len(findings)} claims do not hold")
    click.echo(f"all {len(findings)} claims hold")


@main.command()
@click.option("--sample", type=click.IntRange(min=10), default=1000, show_default=True,
              help="How many training subjects to attack (a random sample of the current members).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_guard
def audit(sample: int, seed: int, as_json: bool) -> None:
    """Membership-inference audit of the current ensemble: members vs never-seen (holdout) subjects."""
    import pandas as pd

    from erasure_pipeline import identity, settings
    from erasure_pipeline.ml import features as ft
    from erasure_pipeline.ml.audit import audit_rows
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.storage import lake as lk

    policy = load_policy()
    store = settings.lake()
    blob = store.read_bytes(lk.model_name("ensemble_model"))
    if blob is None:
        raise _Fail("no published ensemble_model: run `erasure-pipeline materialize` (a model below the policy's "
                    "quality floor is kept as a candidate, not published)")
    saved = lk.loads_model(blob)
    rows = pd.concat([lk.require_table(store, "training_shards", p) for p in identity.partition_keys(policy.shards)], ignore_index=True)
    holdout = rows[ft.HOLDOUT].astype(bool)
    members, references = rows[~holdout], rows[holdout]
    keys = members[ft.KEY].drop_duplicates()
    chosen = keys.sample(n=min(sample, len(keys)), random_state=seed)
    result = audit_rows(saved["model"], saved["features"], members[members[ft.KEY].isin(chosen)], references)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"attack: {result.attack}")
    click.echo("| targets (members) | references (never seen) | ROC-AUC | 95 % interval | TPR @ 0.1 % FPR | TPR @ 1 % FPR |")
    click.echo("|---|---|---|---|---|---|")
    click.echo(f"| {result.targets} | {result.references} | {result.auc:.3f} | {result.auc_low:.3f}-{result.auc_high:.3f} "
               f"| {result.tpr_at_0_1pct_fpr:.3f} | {result.tpr_at_1pct_fpr:.3f} |")


@main.command()
@click.option("--compute-log-days", type=click.FloatRange(min=0), required=True,
              help="Delete compute logs (step stdout/stderr) last written more than this many days ago.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@_guard
def housekeeping(compute_log_days: float, dry_run: bool) -> None:
    """Prune Dagster's local compute logs, which have no retention setting of their own."""
    from erasure_pipeline.housekeeping import prune_compute_logs
    from erasure_pipeline.runner import get_instance

    with get_instance() as instance:
        base_dir = getattr(instance.compute_log_manager, "_base_dir", None)
    if base_dir is None:
        raise _Fail(f"the instance's compute log manager ({type(instance.compute_log_manager).__name__}) is not on the local filesystem")
    pruned = prune_compute_logs(Path(base_dir), compute_log_days, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {pruned.files} compute-log files ({pruned.bytes / 1e6:.1f} MB) older than {compute_log_days:g} days under {base_dir}")


@main.command()
def where() -> None:
    """Print the project home and the back-ends in use."""
    from erasure_pipeline import settings

    click.echo(json.dumps({
        "project_home": str(home.project_home()),
        "lake": settings.lake().describe(),
        "landing": settings.landing().describe(),
        "ledger": settings.ledger_url().split("@")[-1],
        "vectors": "server" if settings.vector_store().url else str(settings.vector_store().root),
    }, indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

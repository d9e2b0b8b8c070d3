"""The pipeline's runs from the command line: demo, materialize, process, cycle, policy diff, backfill.

Each runs the project's jobs in this process (``app.runner``): Dagster, pandas and scikit-learn load
when one of these commands runs, not when the CLI starts.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import click

from erasure_pipeline.app.cli.common import (
    ALLOW_FAILED_CHECKS,
    Fail,
    guard,
    ledger,
    main,
    quiet_dagster,
    report_checks,
    say,
    settings,
)


def _defs_and_policy():
    # Deferred: building definitions imports Dagster, pandas and scikit-learn.
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions

    s = settings()
    policy = load_policy(settings=s)
    return build_definitions(policy, settings=s), policy


def _materialize(t0: float, allow_failed_checks: bool) -> None:
    from erasure_pipeline.app.runner import get_instance, materialize_all, standing_check_failures

    defs, policy = _defs_and_policy()
    instance = get_instance()
    click.echo(f"materialising {policy.shards} shards + merges into the Dagster instance at {instance.root_directory} (one ingest_job run)")
    summary = materialize_all(defs, instance, progress=say)
    standing = [c for c in standing_check_failures(instance, defs) if c not in summary.failed_checks]
    for c in standing:
        click.echo(c.line() + " (its latest evaluation, not recomputed by this run: nothing it reads changed)", err=True)
    report_checks([summary], allow_failed_checks, extra=len(standing))
    click.echo(f"done in {time.monotonic() - t0:.1f} s. Browse it with: make dev  (or DAGSTER_HOME={instance.root_directory} dg dev)")


@main.command()
@click.option("--subjects", "n_subjects", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--no-materialize", is_flag=True, help="Only write the landing files.")
@ALLOW_FAILED_CHECKS
@guard
def demo(n_subjects: int, seed: int, no_materialize: bool, allow_failed_checks: bool) -> None:
    """Write a synthetic data set into landing, then materialise every partition of every asset."""
    quiet_dagster()
    from erasure_pipeline.app import demo as demo_data

    t0 = time.monotonic()
    path, written = demo_data.ensure_policy(settings())
    click.echo(f"policy: {'wrote the demo declaration to ' if written else ''}{path}")
    click.echo(demo_data.land(demo_data.generate(n_subjects, seed), settings=settings()))
    if not no_materialize:
        _materialize(t0, allow_failed_checks)


@main.command()
@ALLOW_FAILED_CHECKS
@guard
def materialize(allow_failed_checks: bool) -> None:
    """Ingest landing and materialise every partition of every asset that is missing, stale or whose inputs changed."""
    quiet_dagster()
    _materialize(time.monotonic(), allow_failed_checks)


@main.command()
@ALLOW_FAILED_CHECKS
@guard
def process(allow_failed_checks: bool) -> None:
    """Tick the erasure sensor and run what it asks for, here, until nothing is ready to run."""
    quiet_dagster()
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.app.runner import get_instance

    defs, _policy = _defs_and_policy()
    result = drain(defs, get_instance(), progress=say)
    click.echo(f"{len(result.runs)} runs, {len(result.failed_runs)} failed" + (", a batch held by another run was skipped" if result.skipped else ""))
    if result.failed_runs:
        raise Fail("some erasure runs failed; their requests are retried by the next ticks (see `erasure-pipeline status "
                   "--overdue` and the runs in the Dagster UI)")
    report_checks(result.summaries, allow_failed_checks)


@main.command()
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="The cycle's time (UTC) for the retention cutoff; default now.")
@ALLOW_FAILED_CHECKS
@guard
def cycle(as_of, allow_failed_checks: bool) -> None:
    """Run one retraining cycle now: new landing files and retention, only the shards they touch."""
    quiet_dagster()
    from erasure_pipeline.app.process import run_cycle
    from erasure_pipeline.app.runner import get_instance

    defs, _policy = _defs_and_policy()
    result = run_cycle(defs, get_instance(), as_of.replace(tzinfo=dt.UTC) if as_of else None, progress=say)
    if result.batch_id and result.summary is not None:
        click.echo(f"cycle {result.batch_id}: {result.files} new landing files, run {result.summary.run_id[:8]}")
        if result.summary.error is not None:
            raise Fail(f"the cycle run failed: {result.summary.error}")
        report_checks([result.summary], allow_failed_checks)


@main.group()
def policy() -> None:
    """The declaration in effect, and what a change of it makes stale before you apply it."""


@policy.command("show")
@guard
def policy_show() -> None:
    """Print the declaration in effect (which file, then every field), each value the file left out marked ``# default``."""
    from erasure_pipeline.core.policy import load_policy, policy_path, show

    path, from_env = policy_path(settings())
    pol = load_policy(settings=settings())
    click.echo(f"# {path}{' ($ERASURE_PIPELINE_POLICY)' if from_env else ''}")
    click.echo(show(pol))


def _print_stale(plan) -> None:
    if not plan:
        click.echo("nothing is stale: every asset partition was materialised under these policy values")
        return
    click.echo("| asset | partitions | why |")
    click.echo("|---|---|---|")
    for a in plan.assets:
        parts = "(unpartitioned)" if a.partitions == [None] else (
            f"all {len(a.partitions)}" if len(a.partitions) > 3 else ", ".join(a.partitions))
        why = a.reason + (f" (reads: {', '.join(a.fields)})" if a.fields and a.reason.startswith("policy fields") else "")
        click.echo(f"| {a.asset} | {parts} | {why} |")


@policy.command("diff")
@click.option("--proposed", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A policy file to compare (default: the policy file in effect, e.g. after editing it).")
@guard
def policy_diff(proposed: Path | None) -> None:
    """Which assets and partitions a policy would make stale (nothing is changed)."""
    quiet_dagster()
    from erasure_pipeline.app.policy_changes import field_differences, stale_under
    from erasure_pipeline.core.policy import load_policy

    current = load_policy(settings=settings())
    new = load_policy(proposed) if proposed else current
    if proposed:
        diffs = field_differences(current, new)
        click.echo("policy fields that differ from the policy in effect:" if diffs else "the proposed policy equals the policy in effect")
        for f, old, value in diffs:
            click.echo(f"  {f}: {json.dumps(old)} -> {json.dumps(value)}")
        if any(f.startswith("identity") for f, _old, _new in diffs):
            click.echo("warning: identity.normalise changes how every subject id becomes its key: this is a reshard, every "
                       "asset partition is rebuilt from landing (backfill --stale). Tombstones filed under the old rule "
                       "keep working: ingest also matches ids under the rule each tombstone was made with.", err=True)
    _print_stale(stale_under(new, ledger()))


@main.command()
@click.option("--stale", is_flag=True, required=True, help="Rebuild every asset partition the policy in effect makes stale.")
@click.option("--dry-run", is_flag=True, help="Only list what would be rebuilt.")
@ALLOW_FAILED_CHECKS
@guard
def backfill(stale: bool, dry_run: bool, allow_failed_checks: bool) -> None:
    """One rebuild_job run of exactly the stale asset partitions, then the merges they feed, once."""
    quiet_dagster()
    from erasure_pipeline.app.policy_changes import rebuild, stale_under
    from erasure_pipeline.app.runner import get_instance

    defs, pol = _defs_and_policy()
    plan = stale_under(pol, ledger())
    _print_stale(plan)
    if not plan or dry_run:
        return
    with get_instance() as instance:
        summary = rebuild(defs, instance, plan, progress=say)
    if summary is None:
        raise Fail("another run holds the rebuild batch")
    if summary.error is not None:
        raise Fail(f"the rebuild run failed: {summary.error}")
    report_checks([summary], allow_failed_checks)

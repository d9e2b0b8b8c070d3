"""``erasure-pipeline``: intake, status, certificates, verification, the demo data set, search."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

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

    from erasure_pipeline.contracts import LandingContractError
    from erasure_pipeline.identity import InvalidSubjectId
    from erasure_pipeline.ledger import LedgerError
    from erasure_pipeline.policy import PolicyError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PolicyError, LandingContractError, InvalidSubjectId, LedgerError, FileNotFoundError) as exc:
            raise _Fail(str(exc)) from None

    return wrapper


@click.group()
def main() -> None:
    """Honour erasure requests all the way into the ML stack (Dagster code location)."""


@main.command()
@click.option("--subjects", "n_subjects", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--no-materialize", is_flag=True, help="Only write the landing files.")
@_guard
def demo(n_subjects: int, seed: int, no_materialize: bool) -> None:
    """Write a synthetic data set into landing, then materialise every partition of every asset."""
    _quiet_dagster()
    from erasure_pipeline import demo as demo_data
    from erasure_pipeline import settings
    from erasure_pipeline.runner import get_instance, materialize_all

    t0 = time.monotonic()
    tables = demo_data.generate(n_subjects, seed)
    landing = settings.landing()
    names = demo_data.write_landing(landing, tables)
    click.echo(f"landing: wrote {', '.join(f'{k}={len(v)}' for k, v in tables.items())} rows to {landing.describe()} ({len(names)} files)")
    if no_materialize:
        return
    _materialize(t0)


def _materialize(t0: float) -> None:
    from erasure_pipeline.runner import get_instance, materialize_all

    defs, policy = _defs_and_policy()
    instance = get_instance()
    click.echo(f"materialising {policy.shards} shards + merges into the Dagster instance at {instance.root_directory}")
    materialize_all(defs, instance, policy.shards, progress=click.echo)
    click.echo(f"done in {time.monotonic() - t0:.1f} s. Browse it with: make dev  (or DAGSTER_HOME={instance.root_directory} dagster dev)")


@main.command()
@_guard
def materialize() -> None:
    """Ingest landing and materialise every partition of every asset."""
    _quiet_dagster()
    _materialize(time.monotonic())


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

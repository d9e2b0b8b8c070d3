"""The ``erasure-pipeline`` command group and what every command shares: one-line errors, check reports.

Commands import what they need inside themselves: Dagster, pandas and scikit-learn load only for the
commands that run the pipeline, so the commands that read the ledger answer at once.
"""

from __future__ import annotations

import functools
import logging
import warnings

import click

from erasure_pipeline.core.errors import PipelineError
from erasure_pipeline.core.settings import Settings


class Fail(click.ClickException):
    """A failure the user can act on: one line on stderr (``error: …``), exit 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def guard(fn):
    """Known failures become one clear line and exit 1, never a stack trace as the only message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PipelineError, FileNotFoundError) as exc:
            raise Fail(str(exc)) from None
        except Exception as exc:
            line = storage_outage(exc)
            if line is None:
                raise
            raise Fail(line) from None

    return wrapper


OUTAGES = frozenset({"DagsterPostgresException", "OperationalError", "InterfaceError", "DisconnectionError"})
"""Exception class names (sqlalchemy, psycopg2, dagster-postgres) that mean a database went away, not a bug."""


def storage_outage(exc: BaseException) -> str | None:
    """One line for an outage of Dagster's own storage (the ledger's is ``LedgerUnavailable`` already), or a disk
    that is full or read-only; None for anything else. Nothing of the connection string but where it points."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only filesystem"}[exc.errno]
        return (f"{what}: {exc.filename or 'a store'}: free space (or remount it writable) and run the command again; "
                "requests wait in the ledger and resume by themselves")
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        kind = type(e)
        if kind.__name__ in OUTAGES:
            settings = Settings.from_environ()
            return (f"Dagster's instance storage is unavailable ({kind.__name__}; configured in {settings.instance_dir}/dagster.yaml): "
                    "nothing was lost: requests wait in the ledger and the next `process` (or the daemon) resumes them once it is back")
    return None


def quiet_dagster() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)


def say(message: str) -> None:
    click.echo(message)


def settings() -> Settings:
    return Settings.from_environ()


def ledger():
    """The ledger the environment points at (no Dagster, no pandas)."""
    from erasure_pipeline.ledger import ledger_for

    return ledger_for(settings())


ALLOW_FAILED_CHECKS = click.option(
    "--allow-failed-checks", is_flag=True,
    help="Exit 0 even when an asset check fails (quality floor, tombstones, k-anonymity, retrain equality); they are still listed.",
)


def report_checks(summaries, allow_failed_checks: bool, extra: int = 0) -> None:
    """Every failed check by name; a failed check makes the command fail unless the user accepts it.

    ``extra`` counts failures already printed that this run did not evaluate (still failing)."""
    failed = [c for s in summaries if s is not None for c in s.failed_checks]
    for c in failed:
        click.echo(c.line(), err=True)
    if (failed or extra) and not allow_failed_checks:
        names = ", ".join(sorted({c.check for c in failed})) or "see above"
        raise Fail(f"{len(failed) + extra} asset check(s) failed ({names}); fix the cause, or pass --allow-failed-checks to accept")


@click.group()
def main() -> None:
    """Honour erasure requests all the way into the ML stack (Dagster code location)."""

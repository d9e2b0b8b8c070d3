"""The key store of the sealed personal fields: ``keys status``, ``keys rotate``, ``keys verify``."""

from __future__ import annotations

import json

import click

from erasure_pipeline.app.cli.common import Fail, guard, ledger, main, settings


def _ring():
    from erasure_pipeline.kinds.environment import key_ring

    return key_ring(ledger(), settings())


@main.group()
def keys() -> None:
    """The subjects' data keys and the key-encryption keys (KMS) that wrap them."""


@keys.command()
@click.option("--json", "as_json", is_flag=True)
@guard
def status(as_json: bool) -> None:
    """Where the key-encryption keys live, their versions, and how many data keys are held and destroyed."""
    report = _ring().status()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"kms: {report['kms']}")
    click.echo(f"data keys held: {report['data_keys']}; destroyed: {report['keys_destroyed']}; "
               f"rotations pending: {report['rotations_pending']}")
    for v in report["versions"]:
        click.echo(f"  v{v['version']:<4} {v['state']:<10} created {v['created_at']}"
                   + (f", destroyed {v['destroyed_at']}" if v["destroyed_at"] else ""))
    if not report["versions"]:
        click.echo("  no key-encryption key yet (made with the first sealed write)")


@keys.command()
@guard
def rotate() -> None:
    """A new key-encryption key version: the key store rewrapped under it (no data is touched), older versions
    destroyed in the KMS. Erasures rotate by themselves; run it on your own schedule too."""
    version = _ring().rotate()
    click.echo(f"key-encryption key rotated: version {version} active, every earlier version destroyed")


@keys.command()
@guard
def verify() -> None:
    """Every kept subject's sealed fields open (lake and vector payloads); no erased subject holds a data key."""
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.erasure.sealed import check_sealed
    from erasure_pipeline.kinds.environment import open_env

    s = settings()
    report = check_sealed(open_env(load_policy(settings=s), s))
    if not report.ok:
        raise Fail(report.line)
    click.echo(report.line)

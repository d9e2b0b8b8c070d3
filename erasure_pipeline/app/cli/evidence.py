"""Evidence: a request's certificate, the public evidence key, ``verify`` (online or offline) and the audit log."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from erasure_pipeline.app.cli.common import Fail, guard, ledger, main, settings
from erasure_pipeline.core.signing import key_id, load_public_key, public_pem, signer_for
from erasure_pipeline.erasure.certificate import to_markdown

if TYPE_CHECKING:
    from erasure_pipeline.ledger import Anchor


def _public_key(path: Path | None):
    """The public key given, else the public half of the configured evidence key."""
    if path:
        return load_public_key(path)
    return signer_for(settings()).public


def _dagster_anchors() -> list[Anchor]:
    """The audit-log heads the erasure runs recorded in Dagster's event log."""
    # Dagster is imported only here: the other evidence commands answer without it.
    from erasure_pipeline.app.runner import dagster_anchors, get_instance

    with get_instance() as instance:
        return dagster_anchors(instance)


@main.command()
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True)
@guard
def certificate(request_id: str, as_json: bool) -> None:
    """Print a request's erasure certificate."""
    book = ledger()
    request = book.requests.get(request_id)
    found = book.certificates.get(request_id)
    if found is None:
        raise Fail(f"{request_id} has no certificate yet (status: {request['status']})")
    body, digest = found
    if as_json:
        click.echo(json.dumps({**body, "sha256": digest}, indent=2))
    else:
        click.echo(to_markdown(body))
        click.echo(f"\nsha256 of certificate: {digest}")


@main.command("signing-key")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the public key (PEM) here.")
@guard
def signing_key(out: Path | None) -> None:
    """Print the public half of the evidence key: what an auditor needs to check certificates and the audit log."""
    public = _public_key(None)
    pem = public_pem(public)
    if out:
        out.write_text(pem)
    click.echo(f"# Ed25519 evidence key {key_id(public)}\n{pem}", nl=False)


def _offline_findings(certificate_file: Path, public_key: Path | None) -> list:
    from erasure_pipeline.erasure.evidence import verify_certificate_document

    try:
        document = json.loads(certificate_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise Fail(f"{certificate_file}: not a certificate (JSON, as `erasure-pipeline certificate ID --json` prints)") from None
    document.pop("sha256", None)  # the CLI's convenience field, not part of what was signed
    return verify_certificate_document(document, _public_key(public_key))


def _online_findings(request_ids: list[str]) -> dict[str, list]:
    # The stores (pandas, pyarrow) load only for a check against them.
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.erasure.evidence import verify_certificates
    from erasure_pipeline.kinds.environment import open_env

    s = settings()
    return verify_certificates(request_ids, open_env(load_policy(settings=s), s), _dagster_anchors())


def _show(findings: list, only_failed: bool = False) -> int:
    for f in findings:
        if f.ok and only_failed:
            continue
        click.echo(f"{'ok  ' if f.ok else 'FAIL'} {f.claim} [{f.target}] {f.detail}".rstrip())
    return sum(not f.ok for f in findings)


@main.command()
@click.argument("request_ids", nargs=-1)
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="Every certificate issued since this time (UTC), with any REQUEST_IDS given.")
@click.option("--certificate", "certificate_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Check a certificate file (as `certificate --json` prints it) offline: its signature and anchor only.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The evidence key's public half (PEM; default: the configured key's).")
@guard
def verify(request_ids: tuple[str, ...], since, certificate_file: Path | None, public_key: Path | None) -> None:
    """Re-check every claim of certificates against the stores as they are now (exit 1 on a mismatch): one
    REQUEST_ID, many, or every one issued --since a date, in one pass that shares what the requests have in
    common; or, with --certificate FILE, check a certificate offline with the public key alone."""
    if certificate_file is not None:
        if request_ids or since:
            raise Fail("verify takes REQUEST_IDS and/or --since, or --certificate FILE, not both")
        findings = _offline_findings(certificate_file, public_key)
        bad = _show(findings)
        if bad:
            raise Fail(f"{bad} of {len(findings)} claims do not hold")
        click.echo(f"all {len(findings)} claims hold")
        return
    ids = list(dict.fromkeys([*request_ids, *(ledger().certificates.issued_since(since.replace(tzinfo=dt.UTC)) if since else [])]))
    if not ids:
        raise Fail("no certificate issued since then" if since else "verify takes REQUEST_IDS, --since DATE, or --certificate FILE")
    results = _online_findings(ids)
    if len(ids) == 1:
        (findings,) = results.values()
        bad = _show(findings)
        if bad:
            raise Fail(f"{bad} of {len(findings)} claims do not hold")
        click.echo(f"all {len(findings)} claims hold")
        return
    failing = 0
    for rid, findings in results.items():
        bad = sum(not f.ok for f in findings)
        click.echo(f"{rid}: " + (f"{bad} of {len(findings)} claims do not hold" if bad else f"all {len(findings)} claims hold"))
        _show(findings, only_failed=True)
        failing += bool(bad)
    if failing:
        raise Fail(f"{failing} of {len(ids)} certificates have claims that do not hold")
    click.echo(f"{len(ids)} certificates: every claim holds")


@main.group("audit-log")
def audit_log() -> None:
    """The ledger's append-only, hash-chained, signed audit log."""


@audit_log.command("verify")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The evidence key's public half (PEM; default: the configured key's).")
@click.option("--certificate", "certificate_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Certificate files kept elsewhere: their anchors are checked too (repeatable).")
@guard
def audit_log_verify(public_key: Path | None, certificate_files: tuple[Path, ...]) -> None:
    """Check the chain, every row's signature, and the log's head against every anchor: the certificates
    in the ledger and given here, and the erasure runs' Dagster metadata. Names the first row that disagrees."""
    from erasure_pipeline.erasure.evidence import certificate_anchors
    from erasure_pipeline.ledger import Anchor

    book = ledger()
    anchors = certificate_anchors(book)
    for path in certificate_files:
        anchor = (json.loads(path.read_text()).get("audit_anchor") or {})
        if anchor.get("seq"):
            anchors.append(Anchor(int(anchor["seq"]), anchor["row_hash"], f"certificate file {path.name}"))
    report = book.audit.check(_public_key(public_key), anchors + _dagster_anchors())
    if not report.ok:
        raise Fail(f"audit log row {report.first_bad_seq}: {report.problem}")
    click.echo(f"audit log intact: {report.rows} rows, {report.signed} signed, {report.anchors} anchors agree")

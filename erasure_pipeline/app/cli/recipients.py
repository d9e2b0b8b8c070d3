"""Everyone else who must be told: recipients' notices (deliver, recipients), DRP intake (serve), revoke."""

from __future__ import annotations

import json

import click

from erasure_pipeline.app.cli.common import Fail, guard, ledger, main, settings
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.erasure import intake
from erasure_pipeline.erasure.intake import Desk


def tokens_from_environ(policy) -> dict[str, str | None]:
    """Each recipient's bearer token from the variable its declaration names."""
    return Settings.declared_secrets({r.name: r.token_env for r in policy.recipients})


@main.command()
@click.option("--json", "as_json", is_flag=True)
@guard
def deliver(as_json: bool) -> None:
    """One delivery pass in this process: POST every due notice to its recipient (and DRP status callback),
    as the deliver_notices job does under the daemon."""
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.core.signing import signer_for
    from erasure_pipeline.erasure.recipients import deliver as deliver_due
    from erasure_pipeline.stores.factory import lake_at

    s = settings()
    policy = load_policy(settings=s)
    report = deliver_due(ledger(), policy, signer_for(s), tokens_from_environ(policy), evidence=lake_at(s.evidence))
    if as_json:
        click.echo(json.dumps({"attempted": report.attempted, "confirmed": report.confirmed, "retrying": report.retrying,
                               "dead": report.dead, "callbacks_queued": report.callbacks_queued}, indent=2))
        return
    click.echo(report.line)
    for n in report.retrying + report.dead:
        click.echo(f"  {n['request_id']}  {n['recipient']:<20} {n['error']}")


@main.command()
@click.argument("request_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@guard
def recipients(request_id: str | None, as_json: bool) -> None:
    """Notices to recipients: counts by state, or one request's notices (when sent, confirmed, why not)."""
    book = ledger()
    if request_id is None:
        counts = book.notices.counts()
        if as_json:
            click.echo(json.dumps(counts))
            return
        click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no notices")
        return
    book.requests.get(request_id)  # an unknown id is one clear line
    rows = book.notices.for_request(request_id)
    shown = [{"recipient": n["recipient"], "status": n["status"], "attempts": n["attempts"], "queued_at": n["created_at"],
              "first_attempt_at": n["first_attempt_at"], "settled_at": n["settled_at"], "last_error": n["last_error"],
              "notice_id": n["notice_id"]} for n in rows]
    if as_json:
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    if not shown:
        click.echo(f"{request_id}: no notices (no declared recipient received the subject's data, or not completed yet)")
    for n in shown:
        settled = f", {n['status']} {n['settled_at']:%Y-%m-%d %H:%M:%S}" if n["settled_at"] else ""
        click.echo(f"{n['recipient']:<20} {n['status']:<10} attempts {n['attempts']}{settled}"
                   + (f" (last: {n['last_error']})" if n["last_error"] and n["status"] != "confirmed" else ""))


@main.command()
@click.argument("request_id")
@click.option("--reason", default=None, help="Why it was withdrawn (stored without any identifier it quotes).")
@guard
def revoke(request_id: str, reason: str | None) -> None:
    """Withdraw a request nothing has acted on yet (no run claimed it, no ingest since it was filed)."""
    desk = Desk.open(settings=settings())
    intake.revoke(desk, request_id, reason)
    click.echo(f"{request_id}: revoked")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=int)
@guard
def serve(host: str, port: int) -> None:
    """Take requests over the Data Rights Protocol 1.0 (the declaration's drp section): agents, exercise,
    status, revoke. Put it behind your TLS proxy; it listens on HOST:PORT."""
    from erasure_pipeline.app.serve import serve as run
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.erasure.drp import DrpService

    s = settings()
    policy = load_policy(settings=s)
    if policy.drp is None:
        raise Fail("the declaration has no drp section (business_id, agents): nothing to serve")
    service = DrpService(policy, Desk.open(policy=policy, settings=s))
    click.echo(f"Data Rights Protocol 1.0 for business {policy.drp.business_id} on http://{host}:{port} "
               f"({len(policy.drp.agents)} agents)", err=True)
    run(service, host, port)

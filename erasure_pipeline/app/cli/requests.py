"""Intake and a request's lifecycle: erase, status, hold, release, extend, retry, review. They read and write
the ledger only: no Dagster, no pandas. Free text given with them is stored only after every identifier in
it is replaced (the operator is told when that happened)."""

from __future__ import annotations

import datetime as dt
import json

import click

from erasure_pipeline.app.cli.common import Fail, guard, ledger, main, settings
from erasure_pipeline.core.identity import InvalidSubjectId, validate_subject_id
from erasure_pipeline.erasure import intake
from erasure_pipeline.erasure.intake import Desk, erase_many

ERASE_USAGE = ("erase takes one SUBJECT_ID (and --reason): an id that starts with '-' goes after '--' "
               "(erasure-pipeline erase -- ID), and many ids go in a file, one per line (erase --from-file FILE)")


class SubjectIdCommand(click.Command):
    """Parses arguments that may be personal data: a usage error never repeats what was typed.

    (click's own "No such option: -x@example.com" would print an id that starts with '-'.)"""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError:
            raise Fail(ERASE_USAGE) from None


@main.command(cls=SubjectIdCommand)
@click.argument("subject_id", required=False)
@click.option("--from-file", "from_file", type=click.File("rb"), default=None,
              help="File of subject ids, one per line ('-' for stdin); every line is checked before any is filed.")
@click.option("--reason", default=None, help="Why the subject asked (kept in the ledger, never in Dagster).")
@guard
def erase(subject_id: str | None, from_file, reason: str | None) -> None:
    """File an erasure request for SUBJECT_ID; prints the request id."""
    if (subject_id is None) == (from_file is None):
        raise Fail(ERASE_USAGE)
    ids = [validate_subject_id(subject_id)] if subject_id is not None else read_ids(from_file)  # checked before anything keys them
    desk = Desk.open(settings=settings())
    reason = _cleaned(desk, reason, desk.keyer.keys(ids), ids)
    if subject_id is not None:
        ((request_id, created),) = erase_many(ids, reason, desk=desk)
        click.echo(request_id)
        if not created:
            click.echo("(a live request for this subject already exists; that is its id)", err=True)
        return
    results = erase_many(ids, reason, desk=desk)
    for request_id, _created in results:
        click.echo(request_id)
    existing = sum(not created for _rid, created in results)
    click.echo(f"{len(results)} subjects: {len(results) - existing} requests filed, {existing} already had a live request "
               "(one request id per input line, in order)", err=True)


def _cleaned(desk: Desk, text: str | None, keys, ids=()) -> str | None:
    """The text as it will be stored, saying so on stderr when identifiers were taken out of it."""
    clean, replaced = desk.clean(text, keys, ids)
    if replaced:
        click.echo(f"note: the reason quoted {replaced} identifier(s); it is stored as: {clean}", err=True)
    return clean


def read_ids(stream) -> list[str]:
    """Ids from a file, one per line: each line checked, errors named by line number only, nothing filed on error.
    A byte-order mark at the start (what spreadsheet tools write) is not part of the first id."""
    ids, problems = [], []
    for number, raw in enumerate(stream.read().removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        try:
            ids.append(validate_subject_id(raw.decode("utf-8")))
        except UnicodeDecodeError:
            problems.append(f"line {number}: not UTF-8 text")
        except InvalidSubjectId as exc:
            problems.append(f"line {number}: {exc}")
    for line in problems[:20]:
        click.echo(f"error: {line}", err=True)
    if problems:
        raise Fail(f"{len(problems)} of {len(ids) + len(problems)} lines are not usable subject ids; nothing was filed")
    if not ids:
        raise Fail("the file holds no subject id")
    return ids


def _dead_letter_row(n: dict) -> dict:
    return {"request_id": n["request_id"], "status": "dead_letter", "recipient": n["recipient"], "notice_id": n["notice_id"],
            "due_at": None, "updated_at": n["settled_at"], "attempts": n["attempts"],
            "why": f"{n['kind']} notice to {n['recipient']} never confirmed: {n['attempts']} attempts, last {n['last_error'] or 'unknown'}, "
                   f"dead since {n['settled_at']:%Y-%m-%d %H:%M} UTC"}


def _print_overdue(late: list[dict], dead: list[dict], as_json: bool) -> None:
    """Requests past or near their due date or stuck, then notices no recipient confirmed (dead letters)."""
    rows = [{k: r[k] for k in ("request_id", "status", "due_at", "updated_at", "attempts", "why")} for r in late]
    letters = [_dead_letter_row(n) for n in dead]
    if as_json:
        click.echo(json.dumps(rows + letters, indent=2, default=str))
        return
    click.echo(f"{len(late)} requests need attention" + (":" if late else ""))
    for r in late:
        click.echo(f"  {r['request_id']}  {r['status']:<12} {r['why']}")
    if letters:
        click.echo(f"{len(letters)} notices dead-lettered:")
        for r in letters:
            click.echo(f"  {r['request_id']}  dead_letter  {r['why']}")


def _print_request(book, request_id: str, as_json: bool) -> None:
    req = book.requests.get(request_id)
    shown = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in req.items() if k not in ("seq",)}
    shown["history"] = [f"{e['at']:%Y-%m-%d %H:%M:%S} {e['event']}" for e in book.audit.entries(request_id)]
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
@click.argument("request_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--overdue", is_flag=True, help="List live requests past or near their due date, or stuck; exit 1 if one is past due.")
@click.option("--within-days", type=click.FloatRange(min=0), default=7, show_default=True, help="With --overdue: how near is near.")
@click.option("--stuck-hours", type=click.FloatRange(min=0), default=6, show_default=True,
              help="With --overdue: a request not on hold that has not moved for this long is stuck.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="With --overdue: the time to judge by (UTC; default now).")
@guard
def status(request_id: str | None, as_json: bool, overdue: bool, within_days: float, stuck_hours: float, as_of) -> None:
    """Show one request's state, dates and history; or, with --overdue, every request that needs attention."""
    book = ledger()
    if overdue:
        now = as_of.replace(tzinfo=dt.UTC) if as_of else dt.datetime.now(dt.UTC)
        late = book.requests.overdue(now, within=dt.timedelta(days=within_days), stuck_after=dt.timedelta(hours=stuck_hours))
        dead = book.notices.list(status=["dead"])
        _print_overdue(late, dead, as_json)
        if any("overdue" in r["why"] for r in late):
            raise Fail("requests are past their due date (Art.12(3): one month, extendable once by two)")
        if dead:
            raise Fail(f"{len(dead)} notices were never confirmed (dead letters): tell those recipients another way, "
                       "then record it (see erasure-pipeline recipients)")
        return
    if request_id is None:
        raise Fail("status takes a REQUEST_ID, or --overdue")
    _print_request(book, request_id, as_json)


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="The Art.17(3) exception or legal hold.")
@guard
def hold(request_id: str, reason: str) -> None:
    """Put a request on hold (Art.17(3) exception or legal hold)."""
    desk = Desk.open(settings=settings())
    intake.hold(desk, request_id, _cleaned(desk, reason, [desk.subject_key(request_id)]))
    click.echo(f"{request_id}: on_hold")


@main.command()
@click.argument("request_id")
@guard
def release(request_id: str) -> None:
    """Release a held request; it is processed again."""
    ledger().requests.release(request_id)
    click.echo(f"{request_id}: pending")


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True)
@guard
def extend(request_id: str, reason: str) -> None:
    """Extend the due date once, by policy erasure_extension_days (Art.12(3): up to two months)."""
    desk = Desk.open(settings=settings())
    due, _clean, _replaced = intake.extend(desk, request_id, _cleaned(desk, reason, [desk.subject_key(request_id)]))
    click.echo(f"{request_id}: due {due.isoformat()}")


@main.command()
@click.argument("request_id")
@guard
def retry(request_id: str) -> None:
    """Return a failed request to pending (its automatic attempts start again)."""
    ledger().requests.retry(request_id)
    click.echo(f"{request_id}: pending")


@main.command()
@click.argument("request_id")
@click.option("--same-subject", "decision", flag_value="same", help="The look-alike ids are this subject: erase them too.")
@click.option("--different-subject", "decision", flag_value="different",
              help="The look-alike ids are other people: complete this request as having no data.")
@click.option("--reason", required=True, help="Who checked, and how (stored without identifiers).")
@guard
def review(request_id: str, decision: str | None, reason: str) -> None:
    """Decide a request in review: no data under the id as filed, but data under a look-alike id (a confusable
    character, an inner blank). Either the look-alikes are the same subject (each is erased by its own
    request), or other people (this request completes as no data)."""
    if decision is None:
        raise Fail("review takes --same-subject or --different-subject (and --reason)")
    desk = Desk.open(settings=settings())
    reason = _cleaned(desk, reason, [desk.subject_key(request_id)])
    filed, _replaced = intake.review(desk, request_id, same_subject=decision == "same", reason=reason)
    click.echo(f"{request_id}: pending (reviewed: {decision} subject)")
    for rid in filed:
        click.echo(rid)

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


def _report_checks(summaries, allow_failed_checks: bool, extra: int = 0) -> None:
    """Every failed check by name; a failed check makes the command fail unless the user accepts it.

    ``extra`` counts failures already printed that this run did not evaluate (still failing)."""
    failed = [c for s in summaries if s is not None for c in s.failed_checks]
    for c in failed:
        click.echo(c.line(), err=True)
    if (failed or extra) and not allow_failed_checks:
        names = ", ".join(sorted({c.check for c in failed})) or "see above"
        raise _Fail(f"{len(failed) + extra} asset check(s) failed ({names}); fix the cause, or pass --allow-failed-checks to accept")


def _say(message: str) -> None:
    click.echo(message)


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

    t0 = time.monotonic()
    click.echo(demo_data.land(demo_data.generate(n_subjects, seed)))
    if no_materialize:
        return
    _materialize(t0, allow_failed_checks)


def _materialize(t0: float, allow_failed_checks: bool) -> None:
    from erasure_pipeline.runner import get_instance, materialize_all, standing_check_failures

    defs, policy = _defs_and_policy()
    instance = get_instance()
    click.echo(f"materialising {policy.shards} shards + merges into the Dagster instance at {instance.root_directory} (one ingest_job run)")
    summary = materialize_all(defs, instance, progress=_say)
    standing = [c for c in standing_check_failures(instance, defs) if c not in summary.failed_checks]
    for c in standing:
        click.echo(c.line() + " (its latest evaluation, not recomputed by this run: nothing it reads changed)", err=True)
    _report_checks([summary], allow_failed_checks, extra=len(standing))
    click.echo(f"done in {time.monotonic() - t0:.1f} s. Browse it with: make dev  (or DAGSTER_HOME={instance.root_directory} dagster dev)")


@main.command()
@ALLOW_FAILED_CHECKS
@_guard
def materialize(allow_failed_checks: bool) -> None:
    """Ingest landing and materialise every partition of every asset that is missing, stale or whose inputs changed."""
    _quiet_dagster()
    _materialize(time.monotonic(), allow_failed_checks)


@main.command()
@click.argument("text")
@click.option("--limit", type=click.IntRange(1, 100), default=5, show_default=True)
@_guard
def search(text: str, limit: int) -> None:
    """Top text chunks for TEXT across every shard (score, shard, dataset.column, record id; no subject ids)."""
    from erasure_pipeline import settings
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.vectors.embed import embedder_for

    policy = load_policy()
    if not policy.text_datasets:
        raise _Fail("no dataset declares text columns (datasets.<name>.text): there is no vector index to search")
    store = settings.vector_store()
    hits = store.search(embedder_for(policy)([text], policy.vectors.dimensions)[0], list(range(policy.shards)), limit=limit)
    if not hits:
        click.echo("no hits (has vector_index been materialised?)")
    click.echo(f"{'score':>7}  {'shard':<9} record")
    for score, payload in hits:
        click.echo(f"{score:7.4f}  shard_{payload.get('shard', 0):02d}  {payload.get('dataset')}.{payload.get('column')} "
                   f"{payload.get('record_id')}")


ERASE_USAGE = ("erase takes one SUBJECT_ID (and --reason): an id that starts with '-' goes after '--' "
               "(erasure-pipeline erase -- ID), and many ids go in a file, one per line (erase --from-file FILE)")


class _SubjectIdCommand(click.Command):
    """Parses arguments that may be personal data: a usage error never repeats what was typed.

    (click's own "No such option: -x@example.com" would print an id that starts with '-'.)"""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError:
            raise _Fail(ERASE_USAGE) from None


@main.command(cls=_SubjectIdCommand)
@click.argument("subject_id", required=False)
@click.option("--from-file", "from_file", type=click.File("rb"), default=None,
              help="File of subject ids, one per line ('-' for stdin); every line is checked before any is filed.")
@click.option("--reason", default=None, help="Why the subject asked (kept in the ledger, never in Dagster).")
@_guard
def erase(subject_id: str | None, from_file, reason: str | None) -> None:
    """File an erasure request for SUBJECT_ID; prints the request id."""
    from erasure_pipeline.erasure.service import erase_many

    if (subject_id is None) == (from_file is None):
        raise _Fail(ERASE_USAGE)
    if subject_id is not None:
        ((request_id, created),) = erase_many([subject_id], reason)
        click.echo(request_id)
        if not created:
            click.echo("(a live request for this subject already exists; that is its id)", err=True)
        return
    ids = _read_ids(from_file)
    results = erase_many(ids, reason)
    for request_id, _created in results:
        click.echo(request_id)
    existing = sum(not created for _rid, created in results)
    click.echo(f"{len(results)} subjects: {len(results) - existing} requests filed, {existing} already had a live request "
               "(one request id per input line, in order)", err=True)


def _read_ids(stream) -> list[str]:
    """Ids from a file, one per line: each line checked, errors named by line number only, nothing filed on error."""
    from erasure_pipeline.identity import InvalidSubjectId, validate_subject_id

    ids, problems = [], []
    for number, raw in enumerate(stream.read().split(b"\n"), 1):
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
        raise _Fail(f"{len(problems)} of {len(ids) + len(problems)} lines are not usable subject ids; nothing was filed")
    if not ids:
        raise _Fail("the file holds no subject id")
    return ids


def _ledger():
    from erasure_pipeline.erasure.service import default_ledger

    return default_ledger()


@main.command()
@click.argument("request_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--overdue", is_flag=True, help="List live requests past or near their due date, or stuck; exit 1 if one is past due.")
@click.option("--within-days", type=click.FloatRange(min=0), default=7, show_default=True, help="With --overdue: how near is near.")
@click.option("--stuck-hours", type=click.FloatRange(min=0), default=6, show_default=True,
              help="With --overdue: a request not on hold that has not moved for this long is stuck.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="With --overdue: the time to judge by (UTC; default now).")
@_guard
def status(request_id: str | None, as_json: bool, overdue: bool, within_days: float, stuck_hours: float, as_of) -> None:
    """Show one request's state, dates and history; or, with --overdue, every request that needs attention."""
    import datetime as dt

    book = _ledger()
    if overdue:
        now = as_of.replace(tzinfo=dt.UTC) if as_of else dt.datetime.now(dt.UTC)
        late = book.overdue(now, within=dt.timedelta(days=within_days), stuck_after=dt.timedelta(hours=stuck_hours))
        if as_json:
            click.echo(json.dumps([{k: r[k] for k in ("request_id", "status", "due_at", "updated_at", "attempts", "why")} for r in late],
                                  indent=2, default=str))
        else:
            click.echo(f"{len(late)} requests need attention" + (":" if late else ""))
            for r in late:
                click.echo(f"  {r['request_id']}  {r['status']:<12} {r['why']}")
        if any("overdue" in r["why"] for r in late):
            raise _Fail("requests are past their due date (Art.12(3): one month, extendable once by two)")
        return
    if request_id is None:
        raise _Fail("status takes a REQUEST_ID, or --overdue")
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
    """Return a failed request to pending (its automatic attempts start again)."""
    _ledger().retry(request_id)
    click.echo(f"{request_id}: pending")


@main.command()
@ALLOW_FAILED_CHECKS
@_guard
def process(allow_failed_checks: bool) -> None:
    """Tick the erasure sensor and run what it asks for, here, until nothing is ready to run."""
    _quiet_dagster()
    from erasure_pipeline.process import drain
    from erasure_pipeline.runner import get_instance

    defs, _policy = _defs_and_policy()
    result = drain(defs, get_instance(), progress=_say)
    click.echo(f"{len(result.runs)} runs, {len(result.failed_runs)} failed" + (", a batch held by another run was skipped" if result.skipped else ""))
    if result.failed_runs:
        raise _Fail("some erasure runs failed; their requests are retried by the next ticks (see `erasure-pipeline status "
                    "--overdue` and the runs in the Dagster UI)")
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
    result = run_cycle(defs, get_instance(), when, progress=_say)
    if result.batch_id and result.summary is not None:
        click.echo(f"cycle {result.batch_id}: {result.files} new landing files, run {result.summary.run_id[:8]}")
        if result.summary.error is not None:
            raise _Fail(f"the cycle run failed: {result.summary.error}")
        _report_checks([result.summary], allow_failed_checks)


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
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.policy_changes import field_differences, stale_under

    current = load_policy()
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
    _print_stale(stale_under(new, _ledger()))


@main.command()
@click.option("--stale", is_flag=True, required=True, help="Rebuild every asset partition the policy in effect makes stale.")
@click.option("--dry-run", is_flag=True, help="Only list what would be rebuilt.")
@ALLOW_FAILED_CHECKS
@_guard
def backfill(stale: bool, dry_run: bool, allow_failed_checks: bool) -> None:
    """One rebuild_job run of exactly the stale asset partitions, then the merges they feed, once."""
    _quiet_dagster()
    from erasure_pipeline.policy_changes import rebuild, stale_under
    from erasure_pipeline.runner import get_instance

    defs, pol = _defs_and_policy()
    plan = stale_under(pol, _ledger())
    _print_stale(plan)
    if not plan or dry_run:
        return
    with get_instance() as instance:
        summary = rebuild(defs, instance, plan, progress=_say)
    if summary is None:
        raise _Fail("another run holds the rebuild batch")
    if summary.error is not None:
        raise _Fail(f"the rebuild run failed: {summary.error}")
    _report_checks([summary], allow_failed_checks)


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


def _public_key(path: Path | None):
    """The public key given, else the public half of the configured evidence key."""
    from erasure_pipeline.signing import load_public_key, load_signer

    return load_public_key(path) if path else load_signer(home.project_home()).public


@main.command("signing-key")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the public key (PEM) here.")
@_guard
def signing_key(out: Path | None) -> None:
    """Print the public half of the evidence key: what an auditor needs to check certificates and the audit log."""
    from erasure_pipeline.signing import key_id, public_pem

    public = _public_key(None)
    pem = public_pem(public)
    if out:
        out.write_text(pem)
    click.echo(f"# Ed25519 evidence key {key_id(public)}\n{pem}", nl=False)


@main.command()
@click.argument("request_id", required=False)
@click.option("--certificate", "certificate_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Check a certificate file (as `certificate --json` prints it) offline: its signature and anchor only.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The evidence key's public half (PEM; default: the configured key's).")
@_guard
def verify(request_id: str | None, certificate_file: Path | None, public_key: Path | None) -> None:
    """Re-check every claim of a certificate against the stores as they are now (exit 1 on a mismatch);
    or, with --certificate FILE, check a certificate offline with the public key alone."""
    from erasure_pipeline.erasure.verify import verify_certificate, verify_certificate_document

    if (request_id is None) == (certificate_file is None):
        raise _Fail("verify takes a REQUEST_ID, or --certificate FILE")
    if certificate_file is not None:
        try:
            document = json.loads(certificate_file.read_text())
        except (ValueError, UnicodeDecodeError):
            raise _Fail(f"{certificate_file}: not a certificate (JSON, as `erasure-pipeline certificate ID --json` prints)") from None
        document.pop("sha256", None)  # the CLI's convenience field, not part of what was signed
        findings = verify_certificate_document(document, _public_key(public_key))
    else:
        from erasure_pipeline.erasure.service import default_env
        from erasure_pipeline.runner import dagster_anchors, get_instance

        with get_instance() as instance:
            anchors = dagster_anchors(instance)
        findings = verify_certificate(request_id, default_env(), anchors)
    for f in findings:
        click.echo(f"{'ok  ' if f.ok else 'FAIL'} {f.claim} [{f.target}] {f.detail}".rstrip())
    bad = sum(not f.ok for f in findings)
    if bad:
        raise _Fail(f"{bad} of {len(findings)} claims do not hold")
    click.echo(f"all {len(findings)} claims hold")


@main.group("audit-log")
def audit_log() -> None:
    """The ledger's append-only, hash-chained, signed audit log."""


@audit_log.command("verify")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The evidence key's public half (PEM; default: the configured key's).")
@click.option("--certificate", "certificate_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Certificate files kept elsewhere: their anchors are checked too (repeatable).")
@_guard
def audit_log_verify(public_key: Path | None, certificate_files: tuple[Path, ...]) -> None:
    """Check the chain, every row's signature, and the log's head against every anchor: the certificates
    in the ledger and given here, and the erasure runs' Dagster metadata. Names the first row that disagrees."""
    from erasure_pipeline.erasure.verify import certificate_anchors
    from erasure_pipeline.ledger import Anchor
    from erasure_pipeline.runner import dagster_anchors, get_instance

    book = _ledger()
    anchors = certificate_anchors(book)
    for path in certificate_files:
        anchor = (json.loads(path.read_text()).get("audit_anchor") or {})
        if anchor.get("seq"):
            anchors.append(Anchor(int(anchor["seq"]), anchor["row_hash"], f"certificate file {path.name}"))
    with get_instance() as instance:
        anchors += dagster_anchors(instance)
    report = book.check_audit_log(_public_key(public_key), anchors)
    if not report.ok:
        raise _Fail(f"audit log row {report.first_bad_seq}: {report.problem}")
    click.echo(f"audit log intact: {report.rows} rows, {report.signed} signed, {report.anchors} anchors agree")


@main.command()
@click.option("--sample", type=click.IntRange(min=10), default=1000, show_default=True,
              help="How many training subjects to attack (a random sample of the current members).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model", "model_name", default=None, help="Which declared model (default: the first).")
@click.option("--json", "as_json", is_flag=True)
@_guard
def audit(sample: int, seed: int, model_name: str | None, as_json: bool) -> None:
    """Membership-inference audit of a model's current ensemble: members vs never-seen (holdout) subjects."""
    import pandas as pd

    from erasure_pipeline import identity, settings
    from erasure_pipeline.graph import model_suffix
    from erasure_pipeline.ml import features as ft
    from erasure_pipeline.ml.audit import audit_rows
    from erasure_pipeline.policy import load_policy
    from erasure_pipeline.storage import lake as lk

    policy = load_policy()
    model_name = model_name or next(iter(policy.models))
    if model_name not in policy.models:
        raise _Fail(f"no model '{model_name}' is declared (models: {', '.join(policy.models)})")
    ensemble, training = f"ensemble_model{model_suffix(model_name)}", f"training_shards{model_suffix(model_name)}"
    store = settings.lake()
    blob = store.read_bytes(lk.model_name(ensemble))
    if blob is None:
        raise _Fail(f"no published {ensemble}: run `erasure-pipeline materialize` (a model below the policy's "
                    "quality floor is kept as a candidate, not published)")
    saved = lk.loads_model(blob)
    rows = pd.concat([lk.require_table(store, training, p) for p in identity.partition_keys(policy.shards)], ignore_index=True)
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

"""Erasure that reaches every recipient: notices queued with the certificate, delivered by real HTTP to real local
servers that fail, time out, answer 500 and go away; confirmed, dead-lettered, never delivered as two different
notices; the subject id sealed to the recipient and destroyed once settled."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain
from erasure_pipeline.app.runner import execute
from erasure_pipeline.core import names
from erasure_pipeline.core.policy import PolicyError, load_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.core.signing import signer_for
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.erasure.recipients import deliver
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import pick_subjects, scan_for
from erasure_pipeline_tests.recipient_servers import Recipient
from erasure_pipeline_tests.stores import default_ledger

pytestmark = pytest.mark.slow


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def declare(home, recipients: list[dict], **extra) -> None:
    """Add recipients (and delivery rules) to the project's declaration, as an operator does."""
    path = home / "policy.yaml"
    path.write_text(path.read_text() + "\n" + yaml.safe_dump({"recipients": recipients, **extra}, sort_keys=False))


def _public():
    return signer_for(Settings.from_environ()).public


def _erase_one(with_tickets: bool = True) -> tuple[str, str]:
    policy = load_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=int(with_tickets), without_tickets=int(not with_tickets))
    rid, _ = erase(sid)
    defs, _ = defs_and_policy()
    result = drain(defs, instance())
    assert not result.failed_runs and default_ledger().requests.get(rid)["status"] == "completed"
    return sid, rid


def _pass(now: dt.datetime | None = None):
    policy = load_policy()
    s = Settings.from_environ()
    return deliver(default_ledger(), policy, signer_for(s), {}, now=now)


def test_a_recipient_must_be_declared_so_that_it_can_be_told(empty_home):
    base = (empty_home / "policy.yaml").read_text()
    cases = [
        ({"name": "a", "endpoint": "http://crm.example.com/x", "received": ["events"], "knows_subject_by": "subject_key"}, "https://"),
        ({"name": "a", "endpoint": "https://crm.example.com/x", "received": ["invoices"], "knows_subject_by": "subject_key"}, "invoices"),
        ({"name": "a", "endpoint": "https://crm.example.com/x", "received": ["events"]}, "public_key"),
        ({"name": "a", "endpoint": "https://crm.example.com/x", "received": ["events"], "public_key": "bm90IGEga2V5"}, "32"),
        ({"name": "a", "endpoint": "https://crm.example.com/x", "received": ["events"], "knows_subject_by": "subject_key",
          "token": "inline-secret"}, "token"),
    ]
    for spec, said in cases:
        (empty_home / "policy.yaml").write_text(base + "\n" + yaml.safe_dump({"recipients": [spec]}))
        with pytest.raises(PolicyError, match=said):
            load_policy()


def test_an_erasure_notifies_exactly_the_recipients_that_received_the_subjects_data(demo_home):
    crm = Recipient("crm", public_key=_public(), receipts=True).start()  # received events: every subject has some
    search = Recipient("search", public_key=_public()).start()  # received vectors: only subjects with tickets
    declare(demo_home, [crm.declaration(["events"]), search.declaration(["vectors"], by="subject_key")])
    sid, rid = _erase_one(with_tickets=False)
    cert = json.loads(_cli("certificate", rid, "--json").output)
    assert {r["recipient"]: r["status"] for r in cert["recipients"]} == {
        "crm": "pending confirmation", "search": "not notified: received none of the subject's data"}
    report = _pass()
    assert [n["recipient"] for n in report.confirmed] == ["crm"] and not search.requests
    assert crm.subject_ids == [sid]  # opened with the recipient's own key
    (notice,) = crm.applied.values()
    assert notice["request_id"] == rid and notice["erase"] == ["events"] and notice["deadline"]
    cert = json.loads(_cli("certificate", rid, "--json").output)
    (told,) = [r for r in cert["recipients"] if r["recipient"] == "crm"]
    assert told["status"] == "confirmed" and told["confirmed_at"] and told["notified_at"] and told["receipt"]["signature"]
    assert cert["revision"] == 2
    assert _cli("verify", rid).exit_code == 0  # the amended certificate is signed and recorded like the first
    events = [e["event"] for e in default_ledger().audit.entries(rid)]
    assert "recipient_notice_queued" in events and "recipient_confirmed" in events and "certificate_amended" in events
    markdown = (demo_home / "evidence" / "certificates" / f"{rid}.md").read_text()
    assert "| crm (processor) | events |" in markdown and "confirmed" in markdown
    # Nothing of the subject rests anywhere: the sealed box is destroyed, the raw id was never stored.
    assert scan_for(demo_home, [sid]) == []
    assert default_ledger().notices.sealed(rid) == {}
    crm.stop()
    search.stop()


def test_a_recipient_down_for_three_attempts_then_up_gets_the_notice_once(demo_home):
    crm = Recipient("crm", public_key=_public())  # not started: connections are refused
    declare(demo_home, [crm.declaration(["events"])], delivery={"first_retry_seconds": 1, "max_retry_seconds": 60})
    _sid, rid = _erase_one()
    now = dt.datetime.now(dt.UTC)
    for attempt in range(1, 4):
        report = _pass(now)
        assert len(report.retrying) == 1 and "no answer" in report.retrying[0]["error"]
        (n,) = default_ledger().notices.for_request(rid)
        assert n["attempts"] == attempt and n["status"] == "pending"
        waited = (n["next_attempt_at"].replace(tzinfo=dt.UTC) - now).total_seconds()
        assert 0.5 * 2 ** (attempt - 1) <= waited <= 2 ** (attempt - 1) + 0.01  # exponential, with jitter
        assert _pass(now).attempted == 0  # not due before its backoff
        now = n["next_attempt_at"].replace(tzinfo=dt.UTC)
    crm.start()
    report = _pass(now)
    assert len(report.confirmed) == 1
    assert len(crm.requests) == 1 and len(crm.applied) == 1
    assert _pass(now + dt.timedelta(hours=1)).attempted == 0  # confirmed: never sent again
    crm.stop()


def test_a_recipient_that_never_answers_becomes_a_dead_letter_everywhere_an_operator_looks(demo_home):
    silent = Recipient("silent", public_key=_public()).start()
    silent.behaviour = "slow"
    broken = Recipient("broken", public_key=_public()).start()
    broken.behaviour = "500"
    declare(demo_home, [silent.declaration(["events"], timeout_seconds=0.5), broken.declaration(["events"], by="subject_key")],
            delivery={"first_retry_seconds": 1, "dead_letter_days": 2})
    _sid, rid = _erase_one()
    start = dt.datetime.now(dt.UTC)
    first = _pass(start)
    assert sorted(n["error"] for n in first.retrying) == ["HTTP 500", "no answer: TimeoutError: timed out"]
    late = _pass(start + dt.timedelta(days=2, seconds=1))
    assert sorted(n["recipient"] for n in late.dead) == ["broken", "silent"]
    assert default_ledger().notices.sealed(rid) == {}  # the sealed id goes with the dead letter
    overdue = _cli("status", "--overdue")
    assert overdue.exit_code == 1 and "dead-lettered" in overdue.output and "silent" in overdue.output
    cert = json.loads(_cli("certificate", rid, "--json").output)
    assert {r["status"] for r in cert["recipients"]} == {"dead letter: not confirmed"}
    # The Dagster check fails, through the job the notices_sensor launches.
    defs, _ = defs_and_policy()
    inst = instance()
    result = execute(defs, inst, names.DELIVER_JOB, {}, {names.KIND: "deliver"})
    assert result.success
    (evaluation,) = [e for e in inst.event_log_storage.get_asset_check_summary_records([
        dg.AssetCheckKey(dg.AssetKey(names.CERTIFICATES_ASSET), names.RECIPIENTS_CHECK)]).values()]
    assert evaluation.last_check_execution_record.status.value == "FAILED"
    silent.stop()
    broken.stop()


def test_kill_9_of_the_delivering_process_mid_post_delivers_exactly_once_by_idempotency_key(demo_home):
    crm = Recipient("crm", public_key=_public()).start()
    crm.behaviour = "hang"
    declare(demo_home, [crm.declaration(["events"], timeout_seconds=20)])
    _sid, rid = _erase_one()
    proc = subprocess.Popen([sys.executable, "-m", "erasure_pipeline.app.cli", "deliver"], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert crm.got_request.wait(60), "the notice never reached the recipient"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-POST: the recipient holds the request, nobody will read its answer
    proc.wait(10)
    crm.behaviour = "ok"
    crm.release.set()
    (n,) = default_ledger().notices.for_request(rid)
    assert n["status"] == "pending" and n["attempts"] == 1 and n["lease_until"] is not None
    assert _pass().attempted == 0  # the lease of the killed process still holds
    report = _pass(n["lease_until"].replace(tzinfo=dt.UTC) + dt.timedelta(seconds=1))
    assert len(report.confirmed) == 1
    assert len(crm.requests) == 2 and len({r["key"] for r in crm.requests}) == 1  # the same notice, retried
    assert crm.requests[0]["body"] == crm.requests[1]["body"]  # byte for byte: never two different notices
    assert len(crm.applied) == 1
    crm.stop()


def test_the_notices_sensor_asks_for_one_delivery_run_when_a_notice_is_due(demo_home):
    crm = Recipient("crm", public_key=_public()).start()
    declare(demo_home, [crm.declaration(["events"])])
    defs, _ = defs_and_policy()
    inst = instance()
    sensor = defs.resolve_sensor_def(names.NOTICES_SENSOR)
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        assert not sensor.evaluate_tick(ctx).run_requests
    _sid, rid = _erase_one()
    defs, _ = defs_and_policy()
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        (request,) = sensor.evaluate_tick(ctx).run_requests
    assert request.job_name == names.DELIVER_JOB
    assert execute(defs, inst, names.DELIVER_JOB, {}, request.tags).success
    (n,) = default_ledger().notices.for_request(rid)
    assert n["status"] == "confirmed" and len(crm.applied) == 1
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        assert not sensor.evaluate_tick(ctx).run_requests
    crm.stop()


def test_a_recipient_token_comes_from_the_variable_the_declaration_names(demo_home, monkeypatch):
    crm = Recipient("crm", public_key=_public()).start()
    declare(demo_home, [crm.declaration(["events"], token_env="CRM_TOKEN")])
    monkeypatch.setenv("CRM_TOKEN", "t0ken-from-the-secret-store")
    _erase_one()
    defs, _ = defs_and_policy()
    assert execute(defs, instance(), names.DELIVER_JOB, {}, {names.KIND: "deliver"}).success
    assert crm.requests[0]["authorization"] == "Bearer t0ken-from-the-secret-store"
    assert "t0ken-from-the-secret-store" not in (demo_home / "policy.yaml").read_text()
    crm.stop()


def test_the_readmes_recipient_side_check_opens_a_real_notice(demo_home):
    """The README's few lines a recipient runs: check our signature with the public key, open the sealed id."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "def open_notice" in b]
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102  (the README's own code, as a recipient pastes it)
    crm = Recipient("crm").start()
    declare(demo_home, [crm.declaration(["events"])])
    sid, _rid = _erase_one()
    _pass()
    pem = _cli("signing-key").output.encode()
    (sent,) = crm.requests
    notice = namespace["open_notice"](sent["body"], sent["signature"], pem, crm.box_key)
    assert notice["subject"]["subject_id"] == sid
    forged = sent["body"].replace(b'"events"', b'"subjects"')
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        namespace["open_notice"](forged, sent["signature"], pem, crm.box_key)
    crm.stop()

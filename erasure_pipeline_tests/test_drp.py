"""Requests taken in over the Data Rights Protocol 1.0, through a real ``erasure-pipeline serve`` (uvicorn) on
127.0.0.1: a signed deletion becomes a request, an erasure run and a certificate; status reads ``fulfilled``;
every endpoint's request and response keep the spec's shapes (its own examples as fixtures); bad input is one
error in the spec's shape and files nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain
from erasure_pipeline.core.policy import load_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.core.signing import signer_for
from erasure_pipeline.erasure.recipients import deliver
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import key, pick_subjects, scan_for
from erasure_pipeline_tests.recipient_servers import Agent, Recipient, call, drp_server
from erasure_pipeline_tests.stores import default_ledger

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "drp_fixtures"
STATUSES = ("open", "in_progress", "fulfilled", "revoked", "denied", "expired")


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def declare(home: Path, agent: Agent, recipients: list[dict] = (), **drp) -> None:
    path = home / "policy.yaml"
    section = {"drp": {"business_id": agent.business_id, "identifier": "email", "agents": [{"id": agent.id, "verify_key": agent.verify_key}], **drp}}
    if recipients:
        section["recipients"] = list(recipients)
    path.write_text(path.read_text() + "\n" + yaml.safe_dump(section, sort_keys=False))


def register(base: str, agent: Agent) -> str:
    body = {k: v for k, v in agent.envelope().items()}
    status, answer, _ = call("POST", f"{base}/v1/agent/{agent.id}", agent.sign(body))
    assert status == 200 and answer["agent-id"] == agent.id and set(answer) == {"agent-id", "token"}
    agent.token = answer["token"]
    return agent.token


def deletion(agent: Agent, subject_id: str, **extra) -> dict:
    """The spec's exercise example (2.01), as a deletion of one person."""
    example = fixture("exercise_request.json")
    example.update(agent.envelope(), **{"exercise": "deletion", "email": subject_id, **extra})
    example.pop("name", None)
    return example


def _status_shape(answer: dict) -> None:
    """The Exercise Status object (3.03): the keys of the spec's example (and ``expires_at``, which it describes)."""
    assert set(answer) <= {*fixture("exercise_status.json"), "expires_at"} and answer["status"] in STATUSES
    for field in ("received_at", "expected_by"):
        dt.datetime.fromisoformat(answer[field])


def test_a_signed_drp_deletion_is_erased_certified_and_reads_fulfilled(demo_home, tmp_path):
    agent = Agent()
    callback = Recipient("agent-callbacks").start()  # the agent's status callback endpoint
    crm = Recipient("crm", public_key=signer_for(Settings.from_environ()).public, receipts=True).start()
    declare(demo_home, agent, [crm.declaration(["events"])])
    policy = load_policy()
    (sid, _), = pick_subjects(policy.shards, with_tickets=1)
    with drp_server(tmp_path / "serve.log") as base:
        register(base, agent)
        assert call("GET", f"{base}/v1/agent/{agent.id}", token=agent.token)[:2] == (200, {})
        status, answer, _ = call("POST", f"{base}/v1/data-rights-request",
                                 agent.sign(deletion(agent, sid, status_callback=callback.endpoint, **{"agent-request-id": "req-1"})),
                                 token=agent.token)
        assert status == 200, answer
        _status_shape(answer)
        assert answer["status"] == "in_progress" and answer["agent_request_id"] == "req-1"
        rid = answer["request_id"]
        assert default_ledger().requests.get(rid)["status"] == "pending"  # the same intake as the CLI
        result = drain(defs_and_policy()[0], instance())
        assert not result.failed_runs
        s = Settings.from_environ()
        deliver(default_ledger(), load_policy(), signer_for(s), {})  # the recipient, and the callback's change queued
        deliver(default_ledger(), load_policy(), signer_for(s), {})  # the callback delivered
        status, answer, _ = call("GET", f"{base}/v1/data-rights-request/{rid}", token=agent.token)
        assert status == 200 and answer["status"] == "fulfilled", answer
        _status_shape(answer)
        assert "1 of 1 confirmed" in answer["processing_details"]
    (told,) = callback.applied.values()  # the status callback (2.03): the Exercise Status object
    assert told["request_id"] == rid and told["status"] == "fulfilled"
    cert = json.loads(CliRunner().invoke(main, ["certificate", rid, "--json"]).output)
    assert cert["data_present"] and [(r["recipient"], r["status"]) for r in cert["recipients"]] == [("crm", "confirmed")]
    assert crm.subject_ids == [sid]
    # The raw id the agent sent rests nowhere: home, ledger, Dagster's storage, the server's log.
    assert scan_for(demo_home, [sid]) == [] and sid not in (tmp_path / "serve.log").read_text()
    callback.stop()
    crm.stop()


def test_every_endpoint_keeps_the_spec_shapes(demo_home, tmp_path):
    agent, other = Agent(), Agent("OTHER_AGENT")
    path = demo_home / "policy.yaml"
    declare(demo_home, agent)
    text = yaml.safe_load(path.read_text())
    text["drp"]["agents"].append({"id": other.id, "verify_key": other.verify_key})
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    policy = load_policy()
    (a, _), (b, _) = pick_subjects(policy.shards, with_tickets=2)
    with drp_server(tmp_path / "serve.log") as base:
        # 2.05: the spec's key-setup example, re-dated; a wrong key gets 403 with no body.
        setup = {**fixture("agent_key_setup.json"), **agent.envelope()}
        assert call("POST", f"{base}/v1/agent/{agent.id}", other.sign(setup))[:2] == (403, None)
        register(base, agent)
        register(base, other)
        # 2.06: the agent's token, and another agent's
        assert call("GET", f"{base}/v1/agent/{agent.id}", token=other.token)[:2] == (403, None)
        # 2.01: the spec's exercise example: deletion is ours, the other rights are answered per 3.06.
        for action in ("sale:opt-out", "access"):
            status, answer, _ = call("POST", f"{base}/v1/data-rights-request", agent.sign(deletion(agent, a, exercise=action)), token=agent.token)
            assert status == 400 and set(fixture("error.json")) <= set(answer) and answer["fatal"] is True
            assert answer["message"].startswith(fixture("error.json")["message"])
        status, filed, _ = call("POST", f"{base}/v1/data-rights-request", agent.sign(deletion(agent, a)), token=agent.token)
        assert status == 200 and filed["status"] == "in_progress"
        _status_shape(filed)
        # 2.02: status, only for the agent managing it
        assert call("GET", f"{base}/v1/data-rights-request/{filed['request_id']}", token=other.token)[0] == 403
        status, answer, _ = call("GET", f"{base}/v1/data-rights-request/{filed['request_id']}", token=agent.token)
        assert status == 200 and answer == filed
        # 2.04: revoke (the spec's example body) before any run: revoked, the tombstone lifted
        status, answer, _ = call("DELETE", f"{base}/v1/data-rights-request/{filed['request_id']}",
                                 agent.sign(fixture("revoke_request.json")), token=agent.token)
        assert status == 200 and answer["status"] == "revoked"
        _status_shape(answer)
        assert key(a) not in default_ledger().tombstones.active()
        assert default_ledger().requests.get(filed["request_id"])["status"] == "revoked"
        # Once a run has claimed a request it can no longer be revoked: 409 in the spec's error shape.
        status, second, _ = call("POST", f"{base}/v1/data-rights-request", agent.sign(deletion(agent, b)), token=agent.token)
        drain(defs_and_policy()[0], instance())
        status, answer, _ = call("DELETE", f"{base}/v1/data-rights-request/{second['request_id']}", agent.sign({"reason": "changed my mind"}),
                                 token=agent.token)
        assert status == 409 and answer["code"] == "409" and "completed" in answer["message"]
        # A hold (Art.17(3)) reads as denied with the spec's reason.
        status, third, _ = call("POST", f"{base}/v1/data-rights-request", agent.sign(deletion(agent, "held.person@example.com")),
                                token=agent.token)
        assert CliRunner().invoke(main, ["hold", third["request_id"], "--reason", "legal claim pending"]).exit_code == 0
        status, answer, _ = call("GET", f"{base}/v1/data-rights-request/{third['request_id']}", token=agent.token)
        assert (answer["status"], answer["reason"]) == ("denied", "claim_not_covered") and "Art.17(3)" in answer["processing_details"]
        # 3.06: an unknown endpoint is an error in the same shape
        status, answer, _ = call("GET", f"{base}/v2/nothing")
        assert status == 404 and set(answer) == {"code", "message"}


def test_bad_input_is_one_error_in_the_spec_shape_and_files_nothing(demo_home, tmp_path):
    agent, stranger = Agent(), Agent("STRANGER")
    declare(demo_home, agent, max_body_bytes=4096, requests_per_minute=14)  # the checks below stay under it; the flood does not
    policy = load_policy()
    (a, _), = pick_subjects(policy.shards, with_tickets=1)
    book = default_ledger()
    before = len(book.requests.list())
    url = None
    with drp_server(tmp_path / "serve.log") as base:
        url = f"{base}/v1/data-rights-request"
        assert call("POST", f"{base}/v1/agent/{stranger.id}", stranger.sign(stranger.envelope()))[:2] == (403, None)  # unknown agent
        register(base, agent)
        now = dt.datetime.now(dt.UTC)
        cases = [
            (b"not base64 at all!", 400, "base64"),
            (agent.sign(b"{not json"), 400, "not JSON"),
            (stranger.sign(deletion(agent, a)), 403, "signature"),
            (agent.sign(deletion(agent, a, **{"business-id": "SOMEONE_ELSE"})), 403, "business-id"),
            (agent.sign(deletion(agent, a, **{"expires-at": (now - dt.timedelta(minutes=1)).isoformat()})), 400, "expired"),
            (agent.sign(deletion(agent, a, **{"drp.version": "0.5"})), 400, "drp.version"),
            (agent.sign(deletion(agent, a, favourite_colour="blue")), 400, "unknown field 'favourite_colour'"),
            (agent.sign(deletion(agent, a, **{a: True})), 400, "unknown field (a name that is not shown)"),  # an id as a key
            (agent.sign({k: v for k, v in deletion(agent, a).items() if k != "email"}), 400, "'email' is missing"),
            (agent.sign(deletion(agent, "   ")), 400, "empty"),
            (base64.b64encode(b"x" * 5000), 413, "larger than 4096"),
        ]
        for body, code, said in cases:
            status, answer, _ = call("POST", url, body, token=agent.token)
            assert status == code and answer["code"] == str(code) and said in answer["message"], (said, status, answer)
            assert a not in json.dumps(answer)
        assert call("POST", url, agent.sign(deletion(agent, a)), token="forged-token")[0] == 403
        assert len(book.requests.list()) == before  # nothing filed
        # A replayed request answers what it filed: nothing filed twice.
        signed = agent.sign(deletion(agent, a))
        first = call("POST", url, signed, token=agent.token)[1]
        again = call("POST", url, signed, token=agent.token)[1]
        assert first["request_id"] == again["request_id"] and len(book.requests.list()) == before + 1
        # Flooding: past requests_per_minute, 429 with Retry-After, and nothing filed.
        statuses = [call("POST", url, agent.sign(deletion(agent, f"flood{i}@example.com")), token=agent.token) for i in range(15)]
        limited = [s for s in statuses if s[0] == 429]
        assert limited and limited[0][1]["code"] == "429" and int(limited[0][2]["retry-after"]) >= 1
        assert len(book.requests.list()) == before + 1 + sum(s[0] == 200 for s in statuses)
    log = (tmp_path / "serve.log").read_text()
    assert a not in log and "Traceback" not in log

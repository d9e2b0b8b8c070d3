"""No request stranded, no run left dangling, no batch run twice, and hostile ids get one clear line."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain
from erasure_pipeline.core import identity, names
from erasure_pipeline.erasure.evidence import verify_certificate
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import SMALL_POLICY, build_demo, defs_and_policy, instance, project_env
from erasure_pipeline_tests.crash import CRASHED, count_writes, run_and_crash
from erasure_pipeline_tests.erasure_helpers import key, pick_subjects
from erasure_pipeline_tests.injected import injected, proof_fails_once
from erasure_pipeline_tests.stores import default_env, default_ledger

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def _raw_rows(n_shards: int) -> int:
    return sum(len(stores.table(stores.lake(), "raw_subjects", identity.partition_key(s))) for s in range(n_shards))


# ---------------------------------------------------------------- crashes
CRASH_PARTS = 4
"""The crash points in four tests (~30 s each in process, ~1.5 min each on multiprocess:2 here, where each crashed
run and each recovery starts a forkserver), so pytest-xdist's workers share them."""


@pytest.mark.slow
@pytest.mark.executor
@pytest.mark.parametrize("part", range(CRASH_PARTS))
def test_a_crash_at_every_ledger_write_of_an_erasure_is_recovered_by_the_next_process(built_demo, tmp_path, part):
    """kill -9 of every process of the run (``crash.run_and_crash``) at the n-th ledger write of ``process``, for
    every n on the erasure path (on the multiprocess executor, writes of its step processes too); then a plain
    ``process``: the request completes and verifies, no run is left in progress, no pool slot held, every other
    subject's rows are still there."""

    def fresh(name: str):
        home = tmp_path / name
        shutil.copytree(built_demo, home)
        return home

    with project_env(fresh("count")):
        defs, policy = defs_and_policy()
        (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
        erase(sid)
        writes, processes = count_writes(lambda: drain(defs, instance()))
    assert writes >= 10
    # on the multiprocess executor the step processes' writes are counted (and crashed at) too
    assert processes > 1 if os.environ.get("ERASURE_PIPELINE_TEST_EXECUTOR", "in_process").startswith("multiprocess") else processes == 1
    print(f"\n{writes} ledger writes by {processes} processes on the erasure path of one subject; a crash before write "
          f"{part + 1} and every {CRASH_PARTS}th after it")
    for n in range(part + 1, writes + 1, CRASH_PARTS):
        with project_env(fresh(f"crash-{n}")):
            defs, policy = defs_and_policy()
            rows_before = _raw_rows(policy.shards)
            rid, _ = erase(sid)
            assert run_and_crash(lambda defs=defs: drain(defs, instance()), n) == CRASHED, f"write {n} was not reached"
            inst = instance()
            recovered = drain(defs, inst)
            book = default_ledger()
            state = book.requests.get(rid)
            assert state["status"] == "completed", (n, state, [r.line() for r in recovered.summaries])
            findings = verify_certificate(rid, default_env())
            assert all(f.ok for f in findings), (n, [f for f in findings if not f.ok])
            assert [r.run_id for r in inst.get_runs() if not r.is_finished] == [], f"crash at write {n} left a run in progress"
            assert not any(inst.event_log_storage.get_concurrency_info(pool).claimed_slots for pool in names.pools(identity.partition_key(s) for s in range(policy.shards)))
            assert book.runs.unfinished() == []
            assert _raw_rows(policy.shards) == rows_before - 1  # the subject's row, and only it
            if any(e["event"] == "batch_claimed" for e in book.audit.entries()[:-1]) and n > 1:
                events = [e["event"] for e in book.audit.entries()]
                assert "run_failed" in events or "resumed" in events or events.count("batch_claimed") == 1, (n, events)


# ---------------------------------------------------------------- concurrency
SIX_SHARD_POLICY = SMALL_POLICY.replace("shards: 4", "shards: 8")


@pytest.mark.slow
@pytest.mark.executor
def test_two_drains_at_once_run_each_batch_exactly_once_and_both_exit_0(tmp_path):
    with project_env(tmp_path / "home", SIX_SHARD_POLICY) as home:
        build_demo(home, n_subjects=300)
        chosen = pick_subjects(8, with_tickets=6)
        assert len({s for _, s in chosen}) == 6
        rids = [erase(sid)[0] for sid, _ in chosen]
        env = dict(os.environ)
        procs = [subprocess.Popen([sys.executable, "-m", "erasure_pipeline.app.cli", "process"], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        runs = [r for r in instance().get_runs() if r.job_name == names.ERASURE_JOB]
        assert len(runs) == 1 and runs[0].is_success, outputs  # one batch, one run: the other command stood aside
        book = default_ledger()
        assert [book.requests.get(r)["status"] for r in rids] == ["completed"] * 6
        claimed = [e["request_id"] for e in book.audit.entries() if e["event"] == "in_progress"]
        assert sorted(claimed) == sorted(rids)  # each request claimed once


# ---------------------------------------------------------------- deadlines
def test_status_overdue_lists_requests_near_and_past_their_due_date_by_a_clock_you_set(empty_home):
    rid, _ = erase("someone@example.com")
    due = default_ledger().requests.get(rid)["due_at"]
    quiet = _cli("status", "--overdue", "--as-of", (due - dt.timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%S"), "--stuck-hours", "10000")
    assert quiet.exit_code == 0 and "0 requests need attention" in quiet.output
    near = _cli("status", "--overdue", "--as-of", (due - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S"), "--stuck-hours", "10000")
    assert near.exit_code == 0 and rid in near.output and "due " in near.output
    late = _cli("status", "--overdue", "--as-of", (due + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"), "--json")
    assert late.exit_code == 1 and "past their due date" in late.output
    (row,) = json.loads(late.output[: late.output.rindex("]") + 1])
    assert row["request_id"] == rid and "overdue since" in row["why"] and "pending since" in row["why"]
    assert "someone@example.com" not in late.output


def test_a_request_out_of_automatic_attempts_is_listed_as_stuck(empty_home):
    rid, _ = erase("stuck@example.com")
    book = default_ledger()
    for attempt in range(3):
        book.runs.claim_erasure(f"eb-{attempt}", [rid], f"run-{attempt}", is_live=lambda _r, _rec: False, host="h", pid=1)
        book.runs.fail_run(f"run-{attempt}", "boom")
    state = book.requests.get(rid)
    assert state["status"] == "failed" and state["attempts"] == 3
    from erasure_pipeline.defs.ticks import eligible_requests

    assert eligible_requests(book, instance(), dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []  # waits for an operator
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=7)).strftime("%Y-%m-%dT%H:%M:%S")
    out = _cli("status", "--overdue", "--as-of", later)
    assert rid in out.output and "failed since" in out.output and "attempts 3" in out.output
    assert _cli("retry", rid).exit_code == 0 and book.requests.get(rid)["attempts"] == 0


# ---------------------------------------------------------------- hostile ids
HOSTILE = [
    "\udcff\udcfeabc@example.com",  # what Python makes of undecodable bytes in argv (surrogateescape)
    "ok\ud800@example.com",  # a lone surrogate
    "a\x00b@example.com",
    "tab\there@example.com",
    "x" * 600,
    "",
    "   ",
]
ACCEPTED = ["'; DROP TABLE erasure_requests;--@example.com", "../../etc/passwd", "Ivan.Silva@Example.com", "名前@例え.jp",
            "$(rm -rf /)@example.com", "%s%s%n@example.com"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_unusable_ids_get_one_line_that_does_not_repeat_them_cli_file_and_api(empty_home, bad):
    from erasure_pipeline.core.identity import InvalidSubjectId

    out = _cli("erase", bad)
    assert out.exit_code == 1 and out.output.count("\n") == 1 and out.output.startswith("error: subject id")
    assert "Traceback" not in out.output and (not bad.strip() or bad not in out.output)
    if bad.strip():  # in a file, a blank line is not an id but a gap between ids
        via_file = _cli("erase", "--from-file", "-", input=b"fine@example.com\n" + bad.encode("utf-8", "surrogatepass") + b"\n")
        assert via_file.exit_code == 1 and "nothing was filed" in via_file.output and "line 2:" in via_file.output
        assert bad not in via_file.output
    with pytest.raises(InvalidSubjectId) as err:
        erase(bad)
    assert not bad.strip() or bad not in str(err.value)
    assert default_ledger().requests.list() == []  # nothing filed, by any channel


def test_ids_that_look_like_options_or_extra_arguments_are_not_echoed(empty_home):
    for args in (["erase", "-mallory@example.com"], ["erase", "--mallory@example.com"], ["erase", "a@example.com", "b@example.com"]):
        out = _cli(*args)
        assert out.exit_code == 1 and out.output.count("\n") == 1, out.output
        assert "mallory" not in out.output and "a@example.com" not in out.output and "erase -- ID" in out.output
    ok = _cli("erase", "--", "-mallory@example.com")
    assert ok.exit_code == 0 and ok.output.startswith("er-")
    (request,) = default_ledger().requests.list()
    assert request["subject_key"] == key("-mallory@example.com")


def test_non_utf8_argv_from_a_real_process_is_one_line(empty_home):
    out = subprocess.run([sys.executable, "-m", "erasure_pipeline.app.cli", "erase", os.fsdecode(b"bad\xff\xfe@example.com")],
                         cwd=REPO, env=dict(os.environ), capture_output=True, check=False)
    assert out.returncode == 1 and out.stdout == b""
    assert out.stderr.strip().splitlines() == [b"error: subject id is not valid text (it holds undecodable bytes or a lone surrogate)"]


@pytest.mark.parametrize("odd", ACCEPTED)
def test_odd_but_valid_ids_are_filed_as_data_never_as_code_or_paths(empty_home, odd):
    out = _cli("erase", odd)
    assert out.exit_code == 0 and out.output.startswith("er-") and odd not in out.output
    (request,) = default_ledger().requests.list()
    assert request["subject_key"] == key(odd)  # the normalised id's keyed hash
    assert not any(odd in str(p) for p in empty_home.rglob("*"))


def test_bulk_intake_from_a_file_files_every_line_in_few_transactions(empty_home, tmp_path):
    ids = [f"bulk-{i}@example.com" for i in range(1200)]
    path = tmp_path / "ids.txt"
    path.write_text("\r\n".join(ids) + "\n\n")
    out = _cli("erase", "--from-file", str(path), "--reason", "bulk request")
    assert out.exit_code == 0, out.output
    printed = [line for line in out.output.splitlines() if line.startswith("er-")]
    assert len(printed) == 1200 and "1200 requests filed, 0 already had a live request" in out.output
    book = default_ledger()
    assert len(book.requests.list()) == 1200 and book.audit.verify_chain() == (True, None)
    again = _cli("erase", "--from-file", str(path))
    assert again.exit_code == 0 and "0 requests filed, 1200 already had a live request" in again.output


@pytest.mark.executor
def test_a_command_whose_tick_raced_another_stands_aside_without_creating_a_run(demo_home):
    """Both commands ticked before either claimed: the one that claims second sees a live holder and skips."""
    import dagster as dg

    from erasure_pipeline.app.runner import launch
    from erasure_pipeline.defs.runtime import HOST

    defs, policy = defs_and_policy()
    (sid, _shard), = pick_subjects(policy.shards, with_tickets=1)
    rid, _ = erase(sid)
    inst = instance()
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        (request,) = defs.resolve_sensor_def("erasure_sensor").evaluate_tick(ctx).run_requests
    config = request.run_config["ops"]["claim_requests"]["config"]
    book = default_ledger()  # the other command claims first, from a live process on this host
    book.runs.claim_erasure(config["batch_id"], config["request_ids"], "run-of-the-other-command",
                             is_live=lambda _r, _rec: True, host=HOST, pid=os.getppid())
    said = []
    assert launch(defs, inst, request, said.append) is None
    assert said == [f"erasure_job {config['batch_id']}: held by run run-of-t or already finished; skipped"]
    assert inst.get_runs_count() == 1  # only the demo's build: no run was created for the loser
    assert book.requests.get(rid)["run_id"] == "run-of-the-other-command"


@pytest.mark.executor
def test_a_request_retried_after_its_proof_failed_certifies_the_data_the_first_run_erased(demo_home, monkeypatch):
    """The first run rewrites every store that held the subject, then cannot prove it (another run kept changing a
    shard under its merges); the retry finds the subject nowhere. Its certificate must still say what held them and
    was rewritten, not "no data found" (and must not send the request to look-alike review)."""
    import datetime as dt

    from erasure_pipeline.defs import ticks

    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    rid, _ = erase(sid)
    monkeypatch.setattr(ticks, "retry_backoff", lambda _attempts: dt.timedelta(0))  # the ticks run in this process
    inst = instance()
    with injected(proof_fails_once, request_id=rid):  # once for the run's processes together
        first = drain(defs, inst, max_ticks=1)
        assert first.failed_runs and default_ledger().requests.get(rid)["status"] == "failed"
        assert not any(r["subject_key"] == key(sid) for r in default_ledger().nodes.provenance_for([key(sid)]))  # rewritten already
        again = drain(defs, inst)
    assert not again.failed_runs
    request = default_ledger().requests.get(rid)
    assert request["status"] == "completed" and request["review"] is None
    cert, _ = default_ledger().certificates.get(rid)
    assert cert["data_present"] is True
    own = identity.partition_key(shard)
    held = {d["dataset"] for d in cert["datasets"] if d["data_present"] == "yes"}
    assert {f"{n}[{own}]" for n in ("raw_events", "training_shards", "shard_models", "vector_index")} <= held, cert["datasets"]
    assert all(f.ok for f in verify_certificate(rid, default_env()))

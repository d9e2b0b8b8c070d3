"""Parallel shards on Dagster's multiprocess executor: steps of different shards overlap, two writers of one
shard never do (read back from Dagster's run storage), two runs at once stay exact, a killed run recovers and so does a run whose step process
alone is killed;
in process: another run's shard write between a merge and its proof is merged again, and an asset step's
pool slot waits for the shard's other writer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from erasure_pipeline.core import identity, names
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import SMALL_POLICY, instance, project_env
from erasure_pipeline_tests.erasure_helpers import key, landing_frames, pick_subjects
from erasure_pipeline_tests.stores import default_ledger

SHARDS = 16
POLICY = SMALL_POLICY.replace("shards: 4", f"shards: {SHARDS}")
PARTITIONS = [identity.partition_key(s) for s in range(SHARDS)]
MERGE_STEPS = {names.MERGE_OP, names.MERGE_AND_CERTIFY_OP}


def _cli(*args: str, executor: str = "multiprocess:2", wait: bool = True):
    env = {**os.environ, "ERASURE_PIPELINE_EXECUTOR": executor}
    cmd = [sys.executable, "-m", "erasure_pipeline.app.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def spans(inst: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[str, str, float, float]]:
    """(run, step, start, end) of every step that ran, from Dagster's run storage."""
    out = []
    for run_id in run_ids:
        starts, ends = {}, {}
        for e in inst.all_logs(run_id):
            if not e.dagster_event:
                continue
            if e.dagster_event.event_type_value == "STEP_START":
                starts[e.step_key] = e.timestamp
            elif e.dagster_event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                ends[e.step_key] = e.timestamp
        out += [(run_id, step, t, ends[step]) for step, t in starts.items() if step in ends]
    return out


def started_shard_step(inst: dg.DagsterInstance, job: str, earlier: set[str], timeout: float = 180) -> None:
    """Wait until a new run of ``job`` has started one of its shard steps."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run in inst.get_runs(dg.RunsFilter(job_name=job)):
            if run.run_id not in earlier and any(e.dagster_event and e.dagster_event.event_type_value == "STEP_START"
                                                 and e.step_key in PARTITIONS for e in inst.all_logs(run.run_id)):
                return
        time.sleep(0.2)
    pytest.fail(f"no new {job} run reached a shard step")


def overlapping(a, b) -> bool:
    return a[2] < b[3] and b[2] < a[3]


def writers_of_one_shard_overlap(found) -> list:
    """Pairs of steps that write the same shard (or both the merges) and ran at the same time."""
    def pool(step: str) -> str:
        return names.MERGE_POOL if step in MERGE_STEPS else names.shard_pool(step) if step in PARTITIONS else names.LANDING_POOL
    return [(a, b) for a, b in combinations(found, 2) if pool(a[1]) == pool(b[1]) and overlapping(a, b)]


@pytest.fixture(scope="module")
def sixteen_shards(tmp_path_factory) -> Path:
    """A demo of 16 shards built by ``erasure-pipeline demo`` with ``ERASURE_PIPELINE_EXECUTOR=multiprocess:2``."""
    home = tmp_path_factory.mktemp("scale") / "home"
    with project_env(home, POLICY):
        out = _cli("demo", "--subjects", "1200")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return home


@pytest.fixture
def home16(sixteen_shards: Path, tmp_path: Path):
    home = tmp_path / "home"
    shutil.copytree(sixteen_shards, home)
    with project_env(home, POLICY):
        yield home


def test_a_full_build_under_multiprocess_runs_shard_steps_of_different_shards_at_once(home16):
    inst = instance()
    (run,) = inst.get_runs(dg.RunsFilter(job_name=names.INGEST_JOB))
    assert run.is_success
    found = spans(inst, [run.run_id])
    shard_steps = [s for s in found if s[1] in PARTITIONS]
    assert {s[1] for s in shard_steps} == set(PARTITIONS)
    assert any(overlapping(a, b) for a, b in combinations(shard_steps, 2)), "no two shard steps ran at once"
    assert writers_of_one_shard_overlap(found) == []
    (merge,) = [s for s in found if s[1] == names.MERGE_OP]
    assert merge[2] >= max(s[3] for s in shard_steps)  # the merge waited for every shard
    starts = [e for e in inst.all_logs(run.run_id) if e.dagster_event and e.dagster_event.event_type_value == "STEP_WORKER_STARTED"]
    assert len(starts) == SHARDS + 2  # each step in its own worker process
    limits = {p.name: p.limit for p in inst.event_log_storage.get_pool_limits()}
    assert all(limits[p] == 1 for p in names.pools(PARTITIONS))


def _new_events(subject_ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"event_id": [f"scale-{i}" for i in range(len(subject_ids))], "subject_id": subject_ids,
                         "ts": ["2026-11-01T12:00:00Z"] * len(subject_ids), "event_type": ["email_open"] * len(subject_ids),
                         "campaign_id": ["c-scale"] * len(subject_ids)})


def test_an_erasure_and_a_cycle_at_once_never_write_one_shard_together_and_stay_exact(home16):
    (victim, victim_shard), = pick_subjects(SHARDS, with_tickets=1)
    # Every shard gets new rows (of subjects we keep), so the cycle and the erasure both write the victim's shard.
    subjects, _tickets = landing_frames(SHARDS)
    keep = list(subjects[subjects["subject_id"] != victim].groupby("shard").head(3)["subject_id"])
    stores.landing().write_bytes("events/2026-11-02.csv", _new_events(keep).to_csv(index=False).encode())
    before = {p: len(stores.table(stores.lake(), "raw_events", p)) for p in PARTITIONS}
    victim_rows = int((stores.table(stores.lake(), "raw_events", identity.partition_key(victim_shard))["subject_key"] == key(victim)).sum())
    filed = _cli("erase", victim, executor="in_process")
    assert filed.returncode == 0, filed.stderr
    rid = filed.stdout.strip()
    earlier = {r.run_id for r in instance().get_runs()}
    cycle = _cli("cycle", "--as-of", "2026-11-02", wait=False)
    started_shard_step(instance(), names.CYCLE_JOB, earlier)  # the erasure starts while the cycle writes shards
    process = _cli("process", wait=False)
    outs = [p.communicate(timeout=600)[0] for p in (cycle, process)]
    assert [p.returncode for p in (cycle, process)] == [0, 0], outs[1][-3000:]
    inst = instance()
    runs = [r for r in inst.get_runs() if r.run_id not in earlier]
    assert {r.job_name for r in runs} == {names.CYCLE_JOB, names.ERASURE_JOB} and all(r.is_success for r in runs), outs
    found = spans(inst, [r.run_id for r in runs])
    assert writers_of_one_shard_overlap(found) == []
    first, second = ([s for s in found if s[0] == r.run_id] for r in runs)
    assert any(overlapping(a, b) for a in first for b in second), "the two runs did not run at the same time"
    victim_partition = identity.partition_key(victim_shard)
    assert {r for r, step, *_ in found if step == victim_partition} == {r.run_id for r in runs}  # both wrote its shard
    # exact: every new row in, the victim's rows out, nothing else touched
    after = {p: len(stores.table(stores.lake(), "raw_events", p)) for p in PARTITIONS}
    added = _new_events(keep).assign(shard=[identity.partition_key(identity.shard_of(key(s), SHARDS)) for s in keep])["shard"].value_counts()
    expected = {p: before[p] + int(added.get(p, 0)) - (victim_rows if p == identity.partition_key(victim_shard) else 0) for p in PARTITIONS}
    assert after == expected
    assert default_ledger().requests.get(rid)["status"] == "completed"
    verified = _cli("verify", rid, executor="in_process")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_multiprocess_run_killed_mid_shard_is_recovered_by_the_next_process(home16):
    (victim, _shard), = pick_subjects(SHARDS, with_tickets=1)
    rid = _cli("erase", victim, executor="in_process").stdout.strip()
    earlier = {r.run_id for r in instance().get_runs()}
    proc = _cli("process", wait=False)
    started_shard_step(instance(), names.ERASURE_JOB, earlier)  # then kill -9 the command and its step processes
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = _cli("process")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert default_ledger().requests.get(rid)["status"] == "completed"
    inst = instance()
    assert [r.run_id for r in inst.get_runs() if not r.is_finished] == []
    assert not any(inst.event_log_storage.get_concurrency_info(p).claimed_slots for p in names.pools(PARTITIONS))
    verified = _cli("verify", rid, executor="in_process")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_step_process_killed_alone_fails_its_run_and_the_same_command_certifies_the_subject(home16):
    """The OOM killer's case: kill -9 of the shard step's own process only (the run's process lives on). The
    executor fails the step and the run, the same ``process`` retries the request in a new batch and certifies
    it; no run is left started, no slot held, and the subject's certificate verifies."""
    (victim, _shard), = pick_subjects(SHARDS, with_tickets=1)
    rid = _cli("erase", victim, executor="in_process").stdout.strip()
    rows = {s: len(stores.table(stores.lake(), "raw_subjects", p)) for s, p in enumerate(PARTITIONS)}
    inst, earlier = instance(), {r.run_id for r in instance().get_runs()}
    proc = _cli("process", wait=False)
    deadline, killed = time.time() + 180, None
    while killed is None and time.time() < deadline and proc.poll() is None:
        for run in inst.get_runs(dg.RunsFilter(job_name=names.ERASURE_JOB)):
            started = [e for e in inst.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                       if run.run_id not in earlier and e.step_key in PARTITIONS]
            if started:
                os.kill(started[0].dagster_event.pid, signal.SIGKILL)  # the step's worker, not the command
                killed = (run.run_id, started[0].step_key)
        time.sleep(0.02)
    output = proc.communicate(timeout=600)[0]
    assert killed is not None, output[-3000:]
    steps = {e.step_key for e in inst.all_logs(killed[0], of_type=dg.DagsterEventType.STEP_SUCCESS)}
    assert killed[1] not in steps and not inst.get_run_by_id(killed[0]).is_success, output[-3000:]
    assert "ChildProcessCrashException" in output and proc.returncode == 1, output[-3000:]  # one run failed, then one ok
    assert default_ledger().requests.get(rid)["status"] == "completed", output[-3000:]
    assert [r.run_id for r in inst.get_runs() if not r.is_finished] == []
    assert not any(inst.event_log_storage.get_concurrency_info(p).claimed_slots for p in names.pools(PARTITIONS))
    verified = _cli("verify", rid, executor="in_process")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shard = identity.shard_of(key(victim), SHARDS)
    assert {s: len(stores.table(stores.lake(), "raw_subjects", p)) for s, p in enumerate(PARTITIONS)} == {**rows, shard: rows[shard] - 1}


def test_a_shard_another_run_rewrites_between_the_merge_and_the_proof_is_merged_again(demo_home, monkeypatch):
    """What parallel shards allow: a cycle's shard step of another shard writes after this erasure's merge and
    before its proof. The certificate step finds the merge no longer built from the stored shards, merges again,
    and certifies; ``verify`` agrees afterwards. Played in process: the other run's step is called between the two."""
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.app.runner import env_of
    from erasure_pipeline.defs import steps
    from erasure_pipeline.erasure.evidence import verify_certificate
    from erasure_pipeline.erasure.intake import erase
    from erasure_pipeline.kinds.base import NodeRun, compute_node
    from erasure_pipeline_tests.conftest import defs_and_policy
    from erasure_pipeline_tests.stores import default_env

    defs, policy = defs_and_policy()
    (victim, _v), (other, other_shard) = pick_subjects(policy.shards, with_tickets=2)
    rid, _ = erase(victim)
    real, interleaved = steps._merges, []

    def merges_then_another_run_writes_a_shard(context, env, plan):
        out = yield from real(context, env, plan)
        if not interleaved:  # once: the other run's shard step, as it would run beside this step in its own pool
            stores.landing().write_bytes("events/2026-11-02.csv", _new_events([other]).to_csv(index=False).encode())
            for name in ("raw_events", "training_shards", "shard_models"):
                compute_node(NodeRun(env, env.graph.node(name), identity.partition_key(other_shard), "ingest", "another-run"))
            interleaved.append(name)
        return out

    monkeypatch.setattr(steps, "_merges", merges_then_another_run_writes_a_shard)
    inst = instance()
    result = drain(defs, inst)
    assert interleaved and not result.failed_runs
    assert default_ledger().requests.get(rid)["status"] == "completed"
    (run_id,) = result.runs
    ensembles = [e for e in inst.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                 if e.dagster_event.asset_key == dg.AssetKey("ensemble_model")]
    assert len(ensembles) == 2  # merged, then merged again from the shard the other run wrote
    assert all(f.ok for f in verify_certificate(rid, default_env()))
    env = env_of(defs)
    assert (stores.table(stores.lake(), "raw_events", identity.partition_key(other_shard))["event_id"] == "scale-0").sum() == 1
    assert env.ledger.nodes.records(identity.partition_key(other_shard), ["shard_models"])


def test_an_asset_step_waits_for_its_shards_other_writer_and_frees_the_slot():
    """``runtime.pool_slot``: how an asset step computing several partitions takes each shard's pool in turn."""
    import threading

    from erasure_pipeline.defs import runtime

    with dg.instance_for_test() as inst:
        runtime.ensure_pools(inst, ["shard_00"])
        pool, order = names.shard_pool("shard_00"), []

        def other_writer():
            with runtime.pool_slot(inst, "run-b", "raw_events", pool, poll=0.05):
                order.append("b")

        with runtime.pool_slot(inst, "run-a", "raw_events", pool):
            waiting = threading.Thread(target=other_writer)
            waiting.start()
            time.sleep(0.5)
            assert order == []  # run b waits while run a writes the shard
            assert [s.run_id for s in inst.event_log_storage.get_concurrency_info(pool).claimed_slots] == ["run-a"]
            order.append("a")
        waiting.join(10)
        assert order == ["a", "b"]
        info = inst.event_log_storage.get_concurrency_info(pool)
        assert not info.claimed_slots and not info.pending_steps


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_an_asset_step_stranded_in_dagsters_pool_queue_joins_it_again(storage, request):
    """Dagster queues a claim in two statements; a slot freed between them leaves the entry unassigned beside a
    free slot, and nothing assigns it (a multiprocess run's second step of one shard waited 300 s in CI). Made
    here in that order: the entry is queued after the only holder freed its slot."""
    import threading

    from erasure_pipeline.defs import runtime

    overrides = {} if storage == "sqlite" else {"storage": {"postgres": {"postgres_url": request.getfixturevalue("pg_database")}}}
    with dg.instance_for_test(overrides=overrides) as inst:
        runtime.ensure_pools(inst, ["shard_00"])
        pool, entered, storage_ = names.shard_pool("shard_00"), threading.Event(), inst.event_log_storage
        with runtime.pool_slot(inst, "run-a", "training_shards", pool):
            pass  # the only holder frees its slot: nothing waits yet, nothing is assigned
        storage_.add_pending_step(pool, "run-b", f"cohort_partials/{pool}", should_assign=False)  # queued after the free
        assert not storage_.check_concurrency_claim(pool, "run-b", f"cohort_partials/{pool}").is_assigned
        said = []

        def stranded_writer():
            with runtime.pool_slot(inst, "run-b", "cohort_partials", pool, said.append, poll=0.05):
                assert [s.run_id for s in storage_.get_concurrency_info(pool).claimed_slots] == ["run-b"]
                entered.set()

        waiting = threading.Thread(target=stranded_writer, daemon=True)
        waiting.start()
        assert entered.wait(10), "the stranded step never got the free slot"
        waiting.join(10)
        assert said == [f"waiting for pool {pool} (another run writes that shard)",
                        f"pool {pool}: a step waited unassigned beside a free slot (a race in Dagster's claim); assigned it the slot"]
        info = storage_.get_concurrency_info(pool)
        assert not info.claimed_slots and not info.pending_steps


def test_a_job_step_stranded_in_dagsters_pool_queue_is_assigned_by_the_next_command(demo_home):
    """A job step's pool is claimed by Dagster's executor, which would wait on a stranded entry for good: the next
    claim step or CLI command assigns it the free slot. An entry that waits behind a holder is left alone."""
    from click.testing import CliRunner

    from erasure_pipeline.app.cli import main
    from erasure_pipeline.defs import runtime

    stranded, held = names.shard_pool("shard_00"), names.shard_pool("shard_01")
    with instance() as inst:
        runtime.ensure_pools(inst, ["shard_00", "shard_01"])
        storage = inst.event_log_storage
        storage.add_pending_step(stranded, "run-x", "shard_00_op", should_assign=False)
        assert storage.claim_concurrency_slot(held, "run-y", "shard_01_op").is_claimed
        storage.claim_concurrency_slot(held, "run-z", "shard_01_op")  # waits behind run-y: not stranded
        assert runtime.assign_stranded(inst, [held]) == []
    out = CliRunner().invoke(main, ["process"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"pool {stranded}: a step waited unassigned" in out.output and f"pool {held}" not in out.output
    with instance() as inst:
        storage = inst.event_log_storage
        assert storage.check_concurrency_claim(stranded, "run-x", "shard_00_op").is_assigned
        assert storage.claim_concurrency_slot(stranded, "run-x", "shard_00_op").is_claimed
        assert not storage.check_concurrency_claim(held, "run-z", "shard_01_op").is_assigned
        for run_id in ("run-x", "run-y", "run-z"):
            storage.free_concurrency_slots_for_run(run_id)


def test_the_pool_queue_sensor_gives_a_stranded_step_its_free_slot(empty_home):
    """Under the daemon a stranded job step may have no run after it to assign it: the pool queue's sensor does,
    every 30 s, and its tick says so; with nothing stranded it says that."""
    from erasure_pipeline.defs import runtime
    from erasure_pipeline_tests.conftest import defs_and_policy

    defs, policy = defs_and_policy()
    sensor = defs.resolve_sensor_def(names.POOL_QUEUE_SENSOR)
    partitions, pool = [identity.partition_key(s) for s in range(policy.shards)], names.shard_pool("shard_02")
    with dg.instance_for_test() as inst:
        runtime.ensure_pools(inst, partitions)
        quiet = sensor.evaluate_tick(dg.build_sensor_context(instance=inst))
        assert quiet.skip_message == f"{len(names.pools(partitions))} pools: no step waits stranded"
        inst.event_log_storage.add_pending_step(pool, "run-x", "shard_02_op", should_assign=False)
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=inst))
        assert tick.skip_message == f"assigned a free slot to the step stranded in pool(s) {pool}" and not tick.run_requests
        assert inst.event_log_storage.claim_concurrency_slot(pool, "run-x", "shard_02_op").is_claimed

"""Ticks only read: previews, repeated ticks and restarts change nothing; the run claims its work."""

from __future__ import annotations

import datetime as dt
import sqlite3

import dagster as dg
import pandas as pd

from erasure_pipeline.app.process import drain, run_cycle
from erasure_pipeline.core import names
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import key, pick_subjects
from erasure_pipeline_tests.stores import default_ledger

AS_OF = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
PREVIEWS = 10


def ledger_dump() -> str:
    """Every row of every ledger table, as SQL text: equal dumps mean an unchanged ledger."""
    conn = sqlite3.connect(stores.settings().home / "ledger.sqlite")
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def _preview_sensor(defs, inst):
    sensor = defs.resolve_sensor_def("erasure_sensor")
    with dg.build_sensor_context(instance=inst, definitions=defs, resources=defs.resources) as ctx:
        return sensor.evaluate_tick(ctx)


def _preview_schedule(defs, inst, when: dt.datetime):
    schedule = defs.resolve_schedule_def("retraining_cycle")
    with dg.build_schedule_context(instance=inst, scheduled_execution_time=when, resources=defs.resources,
                                   repository_def=defs.get_repository_def()) as ctx:
        return schedule.evaluate_tick(ctx)


def test_ten_previews_of_each_tick_leave_the_ledger_byte_identical_then_one_real_tick_does_the_work(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    (a, shard_a), (b, _shard_b) = pick_subjects(policy.shards, with_tickets=2)
    rids = [erase(a)[0], erase(b)[0]]
    new_events = pd.DataFrame({"event_id": ["new-1"], "subject_id": [a], "ts": ["2026-11-01T12:00:00Z"], "event_type": ["purchase"]})
    stores.landing().write_bytes("events/2026-11-02.csv", new_events.to_csv(index=False).encode())
    before, runs_before = ledger_dump(), inst.get_runs_count()
    sensor_keys, schedule_keys = set(), set()
    for i in range(PREVIEWS):
        sensor_keys |= {r.run_key for r in _preview_sensor(defs, inst).run_requests}
        # previews at past and present tick times, as the UI offers them
        schedule_keys |= {r.run_key for r in _preview_schedule(defs, inst, AS_OF - dt.timedelta(days=i)).run_requests}
    assert ledger_dump() == before  # byte-identical: no claim, no cursor, no cycle time recorded
    assert inst.get_runs_count() == runs_before
    assert len(sensor_keys) == 1 and len(schedule_keys) == 1  # every evaluation asks for the same run
    assert {default_ledger().requests.get(r)["status"] for r in rids} == {"pending"}

    # one real tick of each: the run claims, erases and certifies ...
    result = drain(defs, inst)
    assert len(result.runs) == 1 and not result.failed_runs
    assert {default_ledger().requests.get(r)["status"] for r in rids} == {"completed"}
    (erasure_run,) = [r for r in inst.get_runs() if r.job_name == names.ERASURE_JOB]
    assert erasure_run.tags[names.RUN_KEY] == next(iter(sensor_keys))
    # ... and the cycle ingests the new landing file exactly once (its subject was erased: dropped on the way in)
    cycle = run_cycle(defs, inst, AS_OF)
    assert cycle.summary.success and cycle.files == 1
    events = stores.table(stores.lake(), "raw_events", f"shard_{shard_a:02d}")
    assert "new-1" not in set(events["event_id"]) and key(a) not in set(events["subject_key"])
    assert run_cycle(defs, inst, AS_OF).summary is None  # taken: the next cycle has nothing to do
    (batch,) = [b for b in default_ledger().runs.landing_batches() if b["kind"] == "cycle"]
    assert batch["status"] == "done" and batch["as_of"].replace(tzinfo=dt.UTC) == AS_OF


def test_a_run_for_a_batch_that_is_already_done_is_a_no_op_that_says_so(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    (a, _), = pick_subjects(policy.shards, with_tickets=1)
    erase(a)
    request = _preview_sensor(defs, inst).run_requests[0]
    drain(defs, inst)
    before = ledger_dump()
    job = defs.resolve_job_def(names.ERASURE_JOB)
    replay = job.execute_in_process(run_config=request.run_config, instance=inst, tags=request.tags, raise_on_error=False)
    assert replay.success
    assert inst.get_run_by_id(replay.run_id).tags["erasure_pipeline/outcome"] == "skipped: batch held elsewhere"
    assert not replay.get_asset_materialization_events()
    assert ledger_dump() == before

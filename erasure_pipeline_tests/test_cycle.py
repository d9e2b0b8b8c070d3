"""The retraining cycle: only shards with new rows, tombstones on the way in, retention, consent
withdrawal, and an erasure that arrives while a cycle runs."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain, run_cycle
from erasure_pipeline.core import identity
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline.kinds.training import COUNTS
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import (
    key,
    landing_frames,
    materialised_partitions,
    max_storage_id,
    pick_subjects,
    provenance_mismatches,
)
from erasure_pipeline_tests.injected import injected, request_filed_mid_rewrite
from erasure_pipeline_tests.stores import default_ledger

AS_OF = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)  # the demo's data ends 2026-11-01


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _events_for(subject_ids: list[str], start: int) -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": [f"new-{start + i}" for i in range(len(subject_ids))],
        "subject_id": subject_ids,
        "ts": ["2026-11-01T12:00:00Z"] * len(subject_ids),
        "event_type": ["email_open"] * len(subject_ids),
        "campaign_id": ["c-new"] * len(subject_ids),
    })


def _drop_csv(name: str, df: pd.DataFrame) -> None:
    stores.landing().write_bytes(name, df.to_csv(index=False).encode())


def _raw_keys(asset: str, shard: int) -> set[str]:
    return set(stores.table(stores.lake(), asset, identity.partition_key(shard))["subject_key"])


@pytest.mark.executor
def test_cycle_runs_only_shards_with_new_rows_and_is_repeat_safe(demo_home):
    inst = instance()
    defs, policy = defs_and_policy()
    assert run_cycle(defs, inst, AS_OF).summary is None  # the demo's files were taken by the full build
    chosen = pick_subjects(policy.shards, with_tickets=3)
    _drop_csv("events/2026-11-02.csv", _events_for([sid for sid, _ in chosen], 0))
    start = max_storage_id(inst)
    out = _cli("cycle", "--as-of", "2026-11-02")
    assert out.exit_code == 0, out.output
    touched = {identity.partition_key(s) for _, s in chosen}
    done = materialised_partitions(inst, start)
    assert {p for _, p in done if p is not None} == touched and len(touched) == 3
    assert {a for a, p in done if p is None} <= {"anonymised_cohorts", "cohort_model", "ensemble_model"}
    assert {a for a, p in done if p is not None} <= {"raw_events", "training_shards", "shard_models"}  # only what the events feed
    for sid, shard in chosen:
        events = stores.table(stores.lake(), "raw_events", identity.partition_key(shard))
        assert (events["event_id"].str.startswith("new-") & (events["subject_key"] == key(sid))).sum() == 1
    again = max_storage_id(inst)
    assert run_cycle(defs, inst, AS_OF).summary is None  # the same files are not ingested twice
    assert materialised_partitions(inst, again) == set()
    (batch,) = [b for b in default_ledger().runs.landing_batches() if b["kind"] == "cycle"]
    assert batch["shards"] == sorted(s for _, s in chosen) and batch["batch_id"] in out.output and batch["status"] == "done"
    (run,) = inst.get_runs(dg.RunsFilter(tags={"erasure_pipeline/batch": batch["batch_id"]}))
    assert run.job_name == "cycle_job" and run.tags["dagster/run_key"] == batch["batch_id"]
    assert provenance_mismatches(policy.shards) == []


def test_erased_subject_sent_again_by_the_source_stays_out(demo_home):
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    rid, _ = erase(sid)
    drain(defs, instance())
    assert default_ledger().requests.get(rid)["status"] == "completed"
    subjects, _tickets = landing_frames(policy.shards)  # the landing copies were scrubbed ...
    assert sid not in set(subjects["subject_id"])
    # ... so the source sends the subject again, with events and a ticket.
    _drop_csv("subjects/resend.csv", pd.DataFrame({"subject_id": [sid], "consent_training": [True], "region": ["north"],
                                                   "segment": ["smb"], "age": [40], "tenure_days": [10], "lifetime_value": [5.0],
                                                   "converted": [1]}))
    _drop_csv("events/resend.csv", _events_for([sid], 100))
    _drop_csv("tickets/resend.csv", pd.DataFrame({"ticket_id": ["T-resend"], "subject_id": [sid], "created_at": ["2026-11-01T00:00:00Z"],
                                                  "text": [f"Hello, this is {sid} again"]}))
    start = max_storage_id(instance())
    result = run_cycle(defs, instance(), AS_OF)
    assert result.summary.success and {p for _, p in materialised_partitions(instance(), start) if p} == {identity.partition_key(shard)}
    for asset in ("raw_subjects", "raw_events", "raw_tickets"):
        assert key(sid) not in _raw_keys(asset, shard)
    assert key(sid) not in set(stores.table(stores.lake(), "training_shards", identity.partition_key(shard))["subject_key"])
    assert stores.vectors().count_subjects(shard, [key(sid)]) == 0
    assert _cli("verify", rid).exit_code == 0
    assert provenance_mismatches(policy.shards) == []


def test_retention_drops_old_rows_on_the_next_cycle_and_they_never_come_back(demo_home):
    policy_file = demo_home / "policy.yaml"
    policy_file.write_text(policy_file.read_text().replace("retention_days: 1500", "retention_days: 365"))
    defs, policy = defs_and_policy()
    cutoff = AS_OF - dt.timedelta(days=365)
    start = max_storage_id(instance())
    result = run_cycle(defs, instance(), AS_OF)
    assert result.summary.success  # the demo spans ~3 years: every shard holds expired rows
    assert {p for _, p in materialised_partitions(instance(), start) if p} == set(identity.partition_keys(policy.shards))
    for shard in range(policy.shards):
        part = identity.partition_key(shard)
        events = stores.table(stores.lake(), "raw_events", part)
        tickets = stores.table(stores.lake(), "raw_tickets", part)
        assert pd.to_datetime(events["ts"], utc=True).min() >= pd.Timestamp(cutoff)
        assert tickets.empty or pd.to_datetime(tickets["created_at"], utc=True).min() >= pd.Timestamp(cutoff)
    logged = [e for e in default_ledger().audit.entries() if e["event"] == "retention"]
    assert {(json_detail(e)["asset"]) for e in logged} == {"raw_events", "raw_tickets"}
    assert provenance_mismatches(policy.shards) == []
    # A full re-ingest of every landing file (a backfill) applies the same cutoff.
    assert _cli("materialize").exit_code == 0
    events = stores.table(stores.lake(), "raw_events", identity.partition_key(0))
    assert pd.to_datetime(events["ts"], utc=True).min() >= pd.Timestamp(cutoff)
    assert run_cycle(defs, instance(), AS_OF).summary is None  # nothing left past retention
    assert provenance_mismatches(policy.shards) == []


def json_detail(entry):
    import json

    return json.loads(entry["detail"])


def test_consent_withdrawal_leaves_training_but_keeps_raw_data(demo_home):
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1, consented=True)
    subjects, _ = landing_frames(policy.shards)
    row = subjects[subjects["subject_id"] == sid].drop(columns=["subject_key", "shard"]).assign(consent_training=False)
    assert key(sid) in set(stores.table(stores.lake(), "training_shards", identity.partition_key(shard))["subject_key"])
    _drop_csv("subjects/consent-update.csv", row)
    start = max_storage_id(instance())
    result = run_cycle(defs, instance(), AS_OF)
    assert result.summary.success and {p for _, p in materialised_partitions(instance(), start) if p} == {identity.partition_key(shard)}
    assert key(sid) not in set(stores.table(stores.lake(), "training_shards", identity.partition_key(shard))["subject_key"])
    assert key(sid) in _raw_keys("raw_subjects", shard) and key(sid) in _raw_keys("raw_events", shard)
    book = default_ledger()
    (change,) = book.nodes.consent_changes(key(sid))
    assert change["consent"] is False and change["shard"] == shard
    assert book.requests.live_for(key(sid)) is None and key(sid) not in book.tombstones.active()  # not an erasure
    assert any(e["event"] == "consent_withdrawn" for e in book.audit.entries())
    assert provenance_mismatches(policy.shards) == []


@pytest.mark.executor
def test_erasure_filed_while_a_cycle_runs_is_not_lost_nor_undone(demo_home):
    defs, policy = defs_and_policy()
    (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
    _drop_csv("events/during.csv", _events_for([sid], 200))  # the cycle brings the subject new rows
    # the request arrives after a shard step read the tombstones, before it wrote (in that step's process)
    with injected(request_filed_mid_rewrite, subject_id=sid) as fault:
        result = run_cycle(defs, instance(), AS_OF)
        filed = [(fault / "filed").read_text()] if (fault / "filed").exists() else []
    assert result.summary.success and filed
    assert key(sid) not in _raw_keys("raw_events", shard)  # the late tombstone was honoured in the same step ...
    training = stores.table(stores.lake(), "training_shards", identity.partition_key(shard))
    assert key(sid) not in set(training["subject_key"])  # ... and by what the cycle derived from the shard
    book = default_ledger()
    assert book.requests.get(filed[0])["status"] == "pending"  # not lost: the erasure still runs ...
    drain(defs, instance())
    assert book.requests.get(filed[0])["status"] == "completed"  # ... and completes after the cycle
    for asset in ("raw_subjects", "raw_events", "raw_tickets"):
        assert key(sid) not in _raw_keys(asset, shard)
    assert _cli("verify", filed[0]).exit_code == 0



def test_training_sets_built_while_their_raw_parents_have_two_layouts(demo_home):
    """lake.buckets 16 -> 6, then by hand (as in the UI) raw_events and training_shards of one shard,
    raw_subjects still in the old layout; then raw_subjects and training_shards again: the training
    set built in between is recomputed in full, never diffed bucket by bucket across layouts."""
    from erasure_pipeline_tests.erasure_helpers import materialize_assets

    policy_file = demo_home / "policy.yaml"
    policy_file.write_text(policy_file.read_text() + "lake: {buckets: 6}\n")
    store = stores.lake()
    before = stores.table(store, "training_shards", "shard_01")
    assert materialize_assets(["raw_events", "training_shards"], "shard_01").success
    assert bk.read_manifest(store, "raw_events", "shard_01").of == 6
    assert bk.read_manifest(store, "raw_subjects", "shard_01").of == 16
    assert materialize_assets(["raw_subjects", "training_shards"], "shard_01").success
    assert bk.read_manifest(store, "raw_subjects", "shard_01").of == 6
    inputs = lk.table_inputs(store, "training_shards", "shard_01")
    assert set(inputs) == {"raw_subjects", "raw_events", COUNTS} and all(inputs.values())  # built from the new layout
    assert {int(b[2:]) for b in inputs[COUNTS]} <= set(range(6))  # the subjects counted by bucket of the new layout
    pd.testing.assert_frame_equal(stores.table(store, "training_shards", "shard_01"), before)  # same rows

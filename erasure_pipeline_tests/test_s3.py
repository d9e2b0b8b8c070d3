"""The S3 lake and landing against a real S3 endpoint on 127.0.0.1 (moto's server mode, versioning on).

An erasure rewrite on a versioned bucket leaves the subject's rows in old object versions; the
erasure run deletes them by VersionId and ``verify`` reads every remaining version to prove it.
"""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.lake_backends import S3Lake
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.erasure_helpers import decoded

pytestmark = pytest.mark.s3


def _all_versions(bucket: str) -> list[dict]:
    client = boto3.client("s3")
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out += [{**v, "Body": client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()}
                for v in page.get("Versions", [])]
    return out


def _holds(version: dict, needles: list[str]) -> bool:
    body = version["Body"]
    table = decoded(version["Key"], body)
    if table is not None:
        values = {str(v) for col in table.column_names for v in table.column(col).to_pylist()}
        return any(n in v for n in needles for v in values)
    return any(n.encode() in body for n in needles)


def test_s3_lake_versions_purge_and_names(s3_bucket):
    bucket, _ = s3_bucket
    store = S3Lake(bucket=bucket, prefix="lake")
    df1 = pd.DataFrame({"subject_key": ["a", "b"], "x": [1, 2]})
    df2 = df1[df1.subject_key != "a"]
    lk.write_table(store, "raw_subjects", "shard_00", df1)
    lk.write_table(store, "raw_subjects", "shard_00", df2)
    name = lk.table_name("raw_subjects", "shard_00")
    assert store.list() == [name] and store.list("raw_subjects/") == [name]
    (old,) = store.noncurrent_versions(name)
    assert lk.table_from_bytes(store.read_version(name, old.version_id))["subject_key"].tolist() == ["a", "b"]
    assert store.purge_noncurrent(name) == [old.version_id]
    assert store.noncurrent_versions(name) == []
    assert stores.table(store, "raw_subjects", "shard_00")["subject_key"].tolist() == ["b"]
    for bad in ("../x", "/abs", "a//b"):
        with pytest.raises(ValueError, match="invalid lake object name"):
            store.read_bytes(bad)
    assert stores.lake_at(f"s3://{bucket}/lake").describe() == f"s3://{bucket}/lake"
    with pytest.raises(ValueError, match="needs a bucket"):
        stores.lake_at("s3:///nobucket")


def test_landing_contract_errors_name_the_s3_object(s3_bucket):
    from erasure_pipeline.core.contracts import LandingContractError, TableContract
    from erasure_pipeline.core.identity import Keyer
    from erasure_pipeline.stores.landing import read_landing_table

    bucket, _ = s3_bucket
    landing = stores.lake_at(f"s3://{bucket}/landing")
    landing.write_bytes("subjects.csv", b"subject_id,consent_training\nu1,true\n,false\n")
    with pytest.raises(LandingContractError) as err:
        read_landing_table(landing, TableContract("subjects", "subject_id"), Keyer(b"pepper", 4))
    assert "subjects.csv" in str(err.value) and "subject_id" in str(err.value) and "row 2" in str(err.value)


def _cli(*args):
    from erasure_pipeline.app.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_erasure_on_versioned_s3_leaves_no_object_version_with_the_subject(s3_bucket, tmp_path):
    import dagster as dg

    from erasure_pipeline.app.process import run_cycle
    from erasure_pipeline_tests.conftest import build_demo, defs_and_policy, project_env
    from erasure_pipeline_tests.erasure_helpers import key, landing_frames, pick_subjects, scan_for
    from erasure_pipeline_tests.stores import default_ledger

    bucket, env = s3_bucket
    home = tmp_path / "home"
    with project_env(home, ERASURE_PIPELINE_LAKE_URL=f"s3://{bucket}/lake", ERASURE_PIPELINE_LANDING_URL=f"s3://{bucket}/landing", **env):
        build_demo(home, n_subjects=200)
        defs, policy = defs_and_policy()
        (sid, shard), = pick_subjects(policy.shards, with_tickets=1)
        # A cycle brings the subject new rows: the bucket files holding them are overwritten, so old
        # versions holding the subject exist.
        subjects, _tickets = landing_frames(policy.shards)
        other = subjects[subjects["subject_id"] == sid].iloc[0]
        update = other.drop(["subject_key", "shard"]).to_frame().T.assign(lifetime_value=other["lifetime_value"] + 1)
        stores.landing().write_bytes("subjects/update.csv", update.to_csv(index=False).encode())
        events = pd.DataFrame({"event_id": ["ev-update-1"], "subject_id": [other["subject_id"]], "ts": ["2026-11-01T00:00:00Z"],
                               "event_type": ["purchase"]})
        stores.landing().write_bytes("events/update.csv", events.to_csv(index=False).encode())
        with dg.DagsterInstance.get() as inst:
            assert run_cycle(defs, inst, dt.datetime(2026, 11, 2, tzinfo=dt.UTC)).summary.success
        needles = [sid, key(sid)]
        before = [v["Key"] for v in _all_versions(bucket) if _holds(v, needles)]
        assert any(k.startswith("lake/raw_subjects/") for k in before) and any(k.startswith("landing/") for k in before)
        assert any(not v["IsLatest"] for v in _all_versions(bucket))

        rid = _cli("erase", sid).stdout.strip()
        assert _cli("process").exit_code == 0
        assert default_ledger().requests.get(rid)["status"] == "completed"
        verified = _cli("verify", rid)
        assert verified.exit_code == 0, verified.output
        cert = json.loads(_cli("certificate", rid, "--json").stdout)
        raw = next(d for d in cert["datasets"] if d["dataset"].startswith("raw_subjects"))
        assert "old object versions purged" in raw.get("detail", "") or "old object versions purged" in json.dumps(cert)

        versions = _all_versions(bucket)
        assert [v["Key"] for v in versions if _holds(v, needles)] == []
        part = f"shard_{shard:02d}"
        b_sid = bk.bucket_of(key(sid), policy.lake.buckets)
        objects = [bk.object_name(n, part, b_sid) for n in ("raw_subjects", "raw_events", "raw_tickets")]
        objects += [bk.manifest_name(n, part) for n in ("raw_subjects", "raw_events", "raw_tickets")]
        objects += [lk.table_name(n, part) for n in ("training_shards", "cohort_partials")]
        for name in objects:
            assert [v for v in versions if v["Key"] == f"lake/{name}" and not v["IsLatest"]] == [], name
        assert scan_for(home, [sid]) == []  # the ledger, the instance, Qdrant: local parts of this set-up

        # verify reads old versions: an old copy put back under the same key is caught.
        client = boto3.client("s3")
        leaked = next(v for v in _all_versions(bucket) if v["Key"] == f"lake/{bk.object_name('raw_subjects', part, b_sid)}")
        client.put_object(Bucket=bucket, Key=leaked["Key"], Body=leaked["Body"])  # a new current version...
        frame = lk.table_from_bytes(leaked["Body"])
        again = pd.concat([frame, frame.head(1).assign(subject_key=key(sid))])
        client.put_object(Bucket=bucket, Key=leaked["Key"], Body=lk.table_to_bytes(again))  # ...then one with the subject...
        client.put_object(Bucket=bucket, Key=leaked["Key"], Body=leaked["Body"])  # ...made noncurrent by a clean one
        out = _cli("verify", rid)
        assert out.exit_code != 0 and "no old object version holds the subject's rows" in out.output

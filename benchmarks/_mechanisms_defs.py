"""A toy code location with the pipeline's shape, to measure how Dagster can run one tick.

Four shard partitions; ``raw`` and ``part`` per shard, ``merge`` over every shard's ``part``. The
same graph four times under key prefixes, one per mechanism, each triggered by its own sensor
reading ``$MECH_DIR/<mechanism>.json`` ({"tick": "...", "shards": [0, 2, 3]}):

- ``per_shard``: one RunRequest per touched shard (its partition plus the merge), what main does.
- ``backfill``: one asset backfill of the touched partitions and the merge (RunRequest.for_asset_graph_subset).
- ``single``: the same backfill of assets with ``BackfillPolicy.single_run()``.
- ``opjob``: one run of an op job: a claim op, one dynamic step per touched shard that writes and
  reports the shard's materialisations (with Dagster's provenance tags), then one merge step.

Used by ``benchmarks/run_mechanisms.py``; nothing in the package imports it.
"""


import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

SHARDS = [f"s{i}" for i in range(4)]
PARTS = dg.StaticPartitionsDefinition(SHARDS)
MECHANISMS = ("per_shard", "backfill", "single", "opjob")
WORK_SECONDS = 0.2  # each step's "work"


def _dir() -> Path:
    return Path(os.environ["MECH_DIR"])


def _write(name: str, payload: str) -> str:
    path = _dir() / "lake" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload)
    time.sleep(WORK_SECONDS)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _graph(prefix: str, policy: dg.BackfillPolicy | None):
    @dg.asset(key=[prefix, "raw"], partitions_def=PARTS, backfill_policy=policy, code_version="1")
    def raw(context: dg.AssetExecutionContext):
        for p in context.partition_keys:
            _write(f"{prefix}/raw/{p}", f"raw {p} {time.time()}")
        return dg.MaterializeResult()

    @dg.asset(key=[prefix, "part"], partitions_def=PARTS, deps=[raw], backfill_policy=policy, code_version="1")
    def part(context: dg.AssetExecutionContext):
        for p in context.partition_keys:
            _write(f"{prefix}/part/{p}", f"part {p} {time.time()}")
        return dg.MaterializeResult()

    @dg.asset(key=[prefix, "merge"], deps=[part], code_version="1")
    def merge():
        _write(f"{prefix}/merge", f"merge {time.time()}")
        return dg.MaterializeResult()

    return [raw, part, merge]


def _trigger(name: str, cursor: str | None) -> dict | None:
    path = _dir() / f"{name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return None if data["tick"] == cursor else data


# ---------------------------------------------------------------- the op job (mechanism "opjob")
def _report(context, key: list[str], partition: str | None, data_version: str, parents: list[list[str]]):
    """A materialisation with the provenance tags Dagster writes for an asset step."""
    tags = {CODE_VERSION_TAG: "1", DATA_VERSION_TAG: data_version}
    for parent in parents:
        record = context.instance.get_asset_records([dg.AssetKey(parent)])
        last = record[0].asset_entry.last_materialization_record if record else None
        tags[get_input_event_pointer_tag(dg.AssetKey(parent))] = str(last.storage_id) if last else "NULL"
        tags[get_input_data_version_tag(dg.AssetKey(parent))] = (
            (last.event_log_entry.asset_materialization.tags or {}).get(DATA_VERSION_TAG, "INITIAL") if last else "INITIAL")
    return dg.AssetMaterialization(asset_key=key, partition=partition, tags=tags)


class TickConfig(dg.Config):
    shards: list[int]


@dg.op(out=dg.DynamicOut(str))
def claim(config: TickConfig):
    for s in config.shards:
        yield dg.DynamicOutput(SHARDS[s], mapping_key=SHARDS[s])


@dg.op
def shard_step(context: dg.OpExecutionContext, shard: str) -> str:
    v = _write(f"opjob/raw/{shard}", f"raw {shard} {time.time()}")
    context.log_event(_report(context, ["opjob", "raw"], shard, v, []))
    v = _write(f"opjob/part/{shard}", f"part {shard} {time.time()}")
    context.log_event(_report(context, ["opjob", "part"], shard, v, [["opjob", "raw"]]))
    return shard


@dg.op
def merge_step(context: dg.OpExecutionContext, shards: list[str]) -> None:
    v = _write("opjob/merge", f"merge {time.time()}")
    context.log_event(_report(context, ["opjob", "merge"], None, v, [["opjob", "part"]]))


@dg.job
def tick_job():
    merge_step(claim().map(shard_step).collect())


def _sensors(assets_by_prefix):
    @dg.sensor(name="per_shard", minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING,
               asset_selection=dg.AssetSelection.key_prefixes("per_shard"))
    def per_shard(context):
        data = _trigger("per_shard", context.cursor)
        if not data:
            return dg.SkipReason("no trigger")
        keys = [dg.AssetKey(["per_shard", n]) for n in ("raw", "part", "merge")]
        return dg.SensorResult(run_requests=[
            dg.RunRequest(run_key=f"{data['tick']}-{s}", partition_key=SHARDS[s], asset_selection=keys) for s in data["shards"]
        ], cursor=data["tick"])

    def backfill_sensor(prefix: str):
        @dg.sensor(name=prefix, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING,
                   asset_selection=dg.AssetSelection.key_prefixes(prefix))
        def _sensor(context):
            data = _trigger(prefix, context.cursor)
            if not data:
                return dg.SkipReason("no trigger")
            graph = context.repository_def.asset_graph
            touched = PARTS.subset_with_partition_keys([SHARDS[s] for s in data["shards"]])
            subset = AssetGraphSubset(
                partitions_subsets_by_asset_key={dg.AssetKey([prefix, "raw"]): touched, dg.AssetKey([prefix, "part"]): touched},
                non_partitioned_asset_keys={dg.AssetKey([prefix, "merge"])},
            )
            del graph
            return dg.SensorResult(run_requests=[dg.RunRequest.for_asset_graph_subset(subset, tags={"tick": data["tick"]})],
                                   cursor=data["tick"])

        return _sensor

    @dg.sensor(name="opjob", minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING, job=tick_job)
    def opjob(context):
        data = _trigger("opjob", context.cursor)
        if not data:
            return dg.SkipReason("no trigger")
        return dg.SensorResult(run_requests=[dg.RunRequest(
            run_key=data["tick"], run_config={"ops": {"claim": {"config": {"shards": data["shards"]}}}})], cursor=data["tick"])

    return [per_shard, backfill_sensor("backfill"), backfill_sensor("single"), opjob]


assets = [*_graph("per_shard", None), *_graph("backfill", None), *_graph("single", dg.BackfillPolicy.single_run()),
          *_graph("opjob", None)]
defs = dg.Definitions(assets=assets, jobs=[tick_job], sensors=_sensors(None), executor=dg.in_process_executor)

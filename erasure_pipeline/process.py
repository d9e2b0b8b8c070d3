"""Without a daemon: drain the ledger through the erasure sensor, run one retraining cycle.

The same sensor and schedule functions and the same run requests as under ``dagster-daemon``;
runs execute in this process one after another (so they never overlap), for cron jobs,
scripts and tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.erasure.service import default_ledger, fail_batch
from erasure_pipeline.runner import RunSummary, materialize_partition, status_line
from erasure_pipeline.schedules import CYCLE_TAG


@dataclass
class DrainResult:
    runs: list[str] = field(default_factory=list)
    failed_batches: list[str] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)
    ticks: int = 0


def drain(
    defs: dg.Definitions, instance: dg.DagsterInstance, *, progress: Callable[[str], None] = lambda _m: None, max_ticks: int = 100
) -> DrainResult:
    sensor = defs.resolve_sensor_def("erasure_sensor")
    book = default_ledger()
    out = DrainResult()
    cursor = None
    for _ in range(max_ticks):
        out.ticks += 1
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources, cursor=cursor) as ctx:
            data = sensor.evaluate_tick(ctx)
        cursor = data.cursor
        todo = [rr for rr in data.run_requests if (b := book.get_batch(rr.run_key)) and b["status"] == "requested"]
        if not todo:
            progress(data.skip_message or "nothing pending")
            return out
        for rr in todo:
            assets = [k.to_user_string() for k in rr.asset_selection]
            res = materialize_partition(
                defs, instance, rr.partition_key, assets, run_config=rr.run_config, tags={**rr.tags, "dagster/run_key": rr.run_key}
            )
            summary = RunSummary.of(res)
            out.runs.append(res.run_id)
            out.summaries.append(summary)
            if res.success:
                progress(f"batch {rr.run_key} ({rr.partition_key}, {len(assets) - 1} assets): certified in run {res.run_id[:8]}")
            else:
                fail_batch(book, rr.run_key, res.run_id, f"run {res.run_id} failed")
                out.failed_batches.append(rr.run_key)
                reason = summary.error or "checks failed: " + ", ".join(c.check for c in summary.failed_checks)
                progress(f"batch {rr.run_key} ({rr.partition_key}): FAILED in run {res.run_id[:8]} ({reason}); requests marked failed")
    return out


@dataclass
class CycleResult:
    batch_id: str | None = None
    shards: list[int] = field(default_factory=list)
    files: int = 0
    runs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)


def run_cycle(
    defs: dg.Definitions, instance: dg.DagsterInstance, as_of: dt.datetime | None = None, *,
    progress: Callable[[str], None] = lambda _m: None,
) -> CycleResult:
    """Evaluate the retraining schedule at ``as_of`` (default now) and execute its runs in process."""
    schedule = defs.resolve_schedule_def("retraining_cycle")
    as_of = as_of or dt.datetime.now(dt.UTC)
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=as_of, resources=defs.resources, repository_def=defs.get_repository_def()
    ) as ctx:
        data = schedule.evaluate_tick(ctx)
    out = CycleResult()
    if not data.run_requests:
        progress(data.skip_message or "nothing to do")
        return out
    for rr in data.run_requests:
        out.batch_id = rr.tags.get(CYCLE_TAG)
        assets = [k.to_user_string() for k in rr.asset_selection]
        res = materialize_partition(defs, instance, rr.partition_key, assets, run_config=rr.run_config,
                                    tags={**rr.tags, "dagster/run_key": rr.run_key})
        summary = RunSummary.of(res)
        out.shards.append(identity.shard_from_partition(rr.partition_key))
        out.runs.append(res.run_id)
        out.summaries.append(summary)
        if summary.error is not None:
            out.failed.append(res.run_id)
        progress(f"cycle {out.batch_id} {rr.partition_key}: {status_line(summary)}" + (f": {summary.error}" if summary.error else ""))
    out.files = len(rr.run_config["ops"]["raw_subjects"]["config"]["landing_files"])
    return out

"""Draining the ledger without a daemon: evaluate the erasure sensor, run what it requests.

The same sensor function and the same run requests as under ``dagster-daemon``; runs execute
in this process one after another (so erasure runs never overlap), until nothing is pending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from erasure_pipeline.erasure.service import default_ledger, fail_batch
from erasure_pipeline.runner import materialize_partition


@dataclass
class DrainResult:
    runs: list[str] = field(default_factory=list)
    failed_batches: list[str] = field(default_factory=list)
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
            out.runs.append(res.run_id)
            if res.success:
                progress(f"batch {rr.run_key} ({rr.partition_key}, {len(assets) - 1} assets): certified in run {res.run_id[:8]}")
            else:
                fail_batch(book, rr.run_key, res.run_id, f"run {res.run_id} failed")
                out.failed_batches.append(rr.run_key)
                progress(f"batch {rr.run_key} ({rr.partition_key}): FAILED in run {res.run_id[:8]}; requests marked failed")
    return out

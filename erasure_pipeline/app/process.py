"""Without a daemon: drain the ledger through the erasure sensor, run one retraining cycle.

The same sensor and schedule and the same run requests as under ``dagster-daemon``; runs execute in
this process one after another (``runner.launch``), for cron jobs, scripts and tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from erasure_pipeline.app.runner import RunSummary, env_of, launch
from erasure_pipeline.core import names
from erasure_pipeline.defs import runtime, ticks


@dataclass
class DrainResult:
    runs: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)
    skipped: int = 0
    ticks: int = 0


def drain(defs: dg.Definitions, instance: dg.DagsterInstance, *, progress: Callable[[str], None] = lambda _m: None,
          max_ticks: int = 20) -> DrainResult:
    """Tick the erasure sensor and run what it asks for until it asks for nothing.

    First, runs of this host whose process died (a killed ``process``) are marked failed and their
    requests handed back, so nothing a crash left behind waits for a person."""
    env = env_of(defs, instance=instance)
    runtime.before_work(instance, env.ledger, env.graph.partitions, progress)
    sensor = defs.resolve_sensor_def(names.ERASURE_SENSOR)
    out = DrainResult()
    for _ in range(max_ticks):
        out.ticks += 1
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as ctx:
            data = sensor.evaluate_tick(ctx)
        if not data.run_requests:
            progress(data.skip_message or "nothing to run")
            return out
        for request in data.run_requests:
            summary = launch(defs, instance, request, progress, env)
            if summary is None:
                out.skipped += 1
                return out  # another live run holds this batch: it is that run's work now
            out.runs.append(summary.run_id)
            out.summaries.append(summary)
            if not summary.success:
                out.failed_runs.append(summary.run_id)
    return out


@dataclass
class CycleResult:
    batch_id: str | None = None
    files: int = 0
    summary: RunSummary | None = None
    skipped: bool = False


def run_cycle(defs: dg.Definitions, instance: dg.DagsterInstance, as_of: dt.datetime | None = None, *,
              progress: Callable[[str], None] = lambda _m: None) -> CycleResult:
    """Evaluate the retraining schedule at ``as_of`` (default now) and run its request here."""
    env = env_of(defs, instance=instance)
    runtime.before_work(instance, env.ledger, env.graph.partitions, progress)
    out = CycleResult()
    if as_of is None:  # the schedule's own tick, now
        schedule = defs.resolve_schedule_def(names.CYCLE_SCHEDULE)
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=dt.datetime.now(dt.UTC), resources=defs.resources,
                                       repository_def=defs.get_repository_def()) as ctx:
            data = schedule.evaluate_tick(ctx)
        if not data.run_requests:
            progress(data.skip_message or "nothing to do")
            return out
        (request,) = data.run_requests
    else:  # as of a time the caller gives (`cycle --as-of`): what the schedule asks for, at that time, whatever its age
        request = ticks.cycle_request(env.ledger, instance, env.landing, env.graph, env.policy, as_of)
        if request is None:
            progress("no new landing files and nothing past retention")
            return out
    config = request.run_config["ops"][names.CLAIM_LANDING_OP]["config"]
    out.batch_id, out.files = config["batch_id"], len(config["landing_files"])
    out.summary = launch(defs, instance, request, progress, env)
    out.skipped = out.summary is None
    return out

"""How Dagster 1.13 can run one tick that touches shards {0, 2, 3} of 4 and a merge over all shards.

    python -m benchmarks.run_mechanisms

Starts ``dagster dev`` (webserver + daemon, sensors every second) on the toy code location in
``benchmarks/_mechanisms_defs.py`` and triggers each mechanism once; then runs the two in-process
variants (what ``erasure-pipeline process`` does without a daemon). For each: runs created, how often
the merge ran, which partitions were materialised, wall time from trigger to the merge's
materialisation, and whether Dagster's stale-status resolver calls every touched asset fresh after.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine, table
from erasure_pipeline_tests.servers import answers_http, free_port, serving

TOUCHED = [0, 2, 3]


@contextlib.contextmanager
def dagster_dev(env: dict, log: Path):
    port = free_port()
    with serving([sys.executable, "-m", "dagster", "dev", "-m", "benchmarks._mechanisms_defs", "-p", str(port), "-h", "127.0.0.1"],
                 log=log, ready=answers_http(f"http://127.0.0.1:{port}/server_info"), what="dagster dev", timeout=120, env=env):
        yield port


def _materialisations_since(instance, prefix: str, after: float) -> list[tuple[str, str | None]]:
    import dagster as dg

    out = []
    for name in ("raw", "part", "merge"):
        records = instance.fetch_materializations(dg.AssetKey([prefix, name]), limit=100).records
        out += [(name, r.partition_key) for r in records if r.timestamp >= after]
    return out


def _stale(instance, prefix: str) -> dict[str, str]:
    import dagster as dg
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from benchmarks import _mechanisms_defs as m

    resolver = get_stale_status_resolver(instance, m.assets)
    out = {f"part[s{s}]": resolver.get_status(dg.AssetKey([prefix, "part"]), f"s{s}").value for s in TOUCHED}
    out["merge"] = resolver.get_status(dg.AssetKey([prefix, "merge"])).value
    return out


def _row(name: str, instance, prefix: str, t0: float, seconds: float, runs: int) -> list:
    done = _materialisations_since(instance, prefix, t0)
    merges = sum(1 for n, _ in done if n == "merge")
    parts = sorted({p for n, p in done if n == "part"})
    stale = _stale(instance, prefix)
    return [name, runs, merges, ", ".join(parts), seconds, "all fresh" if set(stale.values()) == {"FRESH"} else json.dumps(stale)]


def main() -> None:
    import dagster as dg

    root = Path(tempfile.mkdtemp(prefix="mechanisms-"))
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster"), "MECH_DIR": str(root)}
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ.update({"DAGSTER_HOME": env["DAGSTER_HOME"], "MECH_DIR": env["MECH_DIR"]})
    from benchmarks import _mechanisms_defs as m

    rows = []
    with dg.DagsterInstance.get() as instance:
        for prefix in m.MECHANISMS:  # every partition materialised once, so merges have inputs
            for shard in m.SHARDS:
                dg.materialize([a for a in m.assets if a.key.path[0] == prefix],
                               selection=dg.AssetSelection.key_prefixes(prefix) - dg.AssetSelection.keys([prefix, "merge"]),
                               partition_key=shard, instance=instance)
            dg.materialize([a for a in m.assets if a.key.path[0] == prefix], selection=[dg.AssetKey([prefix, "merge"])],
                           instance=instance)
        print("under dagster dev (daemon):", flush=True)
        with dagster_dev(env, root / "dagster_dev.log"):
            time.sleep(5)
            for prefix in m.MECHANISMS:
                before = {r.run_id for r in instance.get_runs()}
                t0 = time.time()
                (root / f"{prefix}.json").write_text(json.dumps({"tick": f"t-{prefix}", "shards": TOUCHED}))
                deadline = t0 + 300
                while time.time() < deadline:
                    merged = any(n == "merge" for n, _ in _materialisations_since(instance, prefix, t0))
                    new = [r for r in instance.get_runs() if r.run_id not in before]
                    if merged and new and all(r.is_finished for r in new):
                        break
                    time.sleep(0.5)
                seconds = time.time() - t0
                rows.append(_row(f"daemon: {prefix}", instance, prefix, t0, seconds, len(new)))
                print("  ", rows[-1], flush=True)
        print("in process (no daemon):", flush=True)
        t0 = time.time()
        for s in TOUCHED:
            dg.materialize([a for a in m.assets if a.key.path[0] == "per_shard"], selection=dg.AssetSelection.key_prefixes("per_shard"),
                           partition_key=m.SHARDS[s], instance=instance)
        rows.append(_row("in process: per_shard", instance, "per_shard", t0, time.time() - t0, len(TOUCHED)))
        t0 = time.time()
        m.tick_job.execute_in_process(run_config={"ops": {"claim": {"config": {"shards": TOUCHED}}}}, instance=instance)
        rows.append(_row("in process: opjob", instance, "opjob", t0, time.time() - t0, 1))
    print()
    print(f"Machine: {machine()}")
    print(f"Toy graph: 4 shard partitions, raw -> part per shard, one merge; tick touches shards {TOUCHED}; "
          f"each step sleeps {m.WORK_SECONDS} s per partition; sensors every 1 s, dagster dev defaults otherwise.")
    print()
    print(table(["mechanism", "runs", "merge ran", "part partitions materialised", "trigger -> merge done (s)", "stale status after"], rows))


if __name__ == "__main__":
    main()

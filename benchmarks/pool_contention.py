"""Does a Dagster pool of limit 1 keep two holders apart when several processes claim it at once?

Four processes each take one pool (limit 1) ``--holds`` times in a tight loop through ``runtime.pool_slot`` (the
claim an asset step makes; a job op's claim goes through the same storage methods), hold it 5 ms and free it. Each
holder records when it held the slot and, while holding, what Dagster's storage says: who holds the slot row and
which queue entries are assigned. Printed per instance storage (SQLite in a fresh DAGSTER_HOME; Postgres when
``--pg-url`` names a server) and per variant (Dagster's claim alone; with ``runtime.assign_stranded``; and with
the shard lease of ``ledger.leases`` taken inside the pool, as every shard writer does): holds, wall time,
overlapping holds (two processes inside at once), holds that saw a second assigned entry or another holder's name
on the slot row, and how many stranded steps ``assign_stranded`` assigned.

    python -m benchmarks.pool_contention [--holds 40] [--repeats 3] [--pg-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import tempfile
import time
import uuid

from benchmarks._common import machine, table

POOL = "erasure_pipeline/shard_00"
WORKERS = 4
DAGSTER, STRANDED, LEASE = "Dagster's claim alone", "with assign_stranded", "with assign_stranded and the shard lease"


def _instance_yaml(pg_url: str | None) -> str:
    text = "telemetry:\n  enabled: false\n"
    if pg_url:
        text += f"storage:\n  postgres:\n    postgres_url: {pg_url}\n"
    return text


def _worker(home: str, worker: int, holds: int, variant: str, ledger_url: str, out) -> None:
    os.environ["DAGSTER_HOME"] = home
    import contextlib

    import dagster as dg

    from erasure_pipeline.defs import runtime
    from erasure_pipeline.ledger import Ledger

    if variant == DAGSTER:  # neither pool_slot's own looks nor assign_stranded find anything stranded
        runtime._stranded = lambda *_a, **_k: []
    book = Ledger(ledger_url)
    instance = dg.DagsterInstance.get()
    storage = instance.event_log_storage
    spans, odd, healed = [], 0, 0

    def log(message: str) -> None:
        nonlocal healed
        healed += message.startswith("pool ")

    for j in range(holds):
        key = f"step-{j}"
        lease = (book.leases.hold(POOL, f"run-{worker}/{key}", f"run-{worker}", live=lambda _row: True, host=runtime.HOST,
                                  pid=os.getpid(), poll=0.005)
                 if variant == LEASE else contextlib.nullcontext())
        with runtime.pool_slot(instance, f"run-{worker}", key, POOL, log, poll=0.02), lease:
            start = time.time()
            info = storage.get_concurrency_info(POOL)
            holders = [(c.run_id, c.step_key) for c in info.claimed_slots]
            assigned = [p for p in info.pending_steps if p.assigned_timestamp is not None]
            odd += holders != [(f"run-{worker}", f"{key}/{POOL}")] or len(assigned) != 1
            time.sleep(0.005)
            spans.append((start, time.time()))
    out.put((spans, odd, healed))


def _trial(pg_url: str | None, holds: int, variant: str) -> tuple[int, float, int, int, int]:
    home = tempfile.mkdtemp(prefix="pool-contention-")
    db_url = None
    if pg_url:
        import sqlalchemy as sa

        name = f"pool_contention_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a generated name, not input
        db_url = sa.engine.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        with open(os.path.join(home, "dagster.yaml"), "w") as f:
            f.write(_instance_yaml(db_url))
        os.environ["DAGSTER_HOME"] = home
        import dagster as dg

        from erasure_pipeline.defs import runtime
        from erasure_pipeline.ledger import Ledger

        with dg.DagsterInstance.get() as instance:
            runtime.ensure_pools(instance, ["shard_00"])
        ledger_url = db_url or f"sqlite:///{os.path.join(home, 'ledger.sqlite')}"
        Ledger(ledger_url).migrate()
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(home, w, holds, variant, ledger_url, out)) for w in range(WORKERS)]
        started = time.time()
        for p in procs:
            p.start()
        results = [out.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
        wall = time.time() - started
    finally:
        if db_url:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    spans = sorted(s for r in results for s in r[0])
    overlaps = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    return len(spans), wall, overlaps, sum(r[1] for r in results), sum(r[2] for r in results)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holds", type=int, default=40, help="holds per process (4 processes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pg-url", default=None, help="a Postgres server to make a database on (none: SQLite only)")
    args = ap.parse_args(argv)
    rows = []
    for storage, url in [("SQLite", None), *([("Postgres", args.pg_url)] if args.pg_url else [])]:
        for variant in (DAGSTER, STRANDED, LEASE):
            for r in range(args.repeats):
                holds, wall, overlaps, odd, healed = _trial(url, args.holds, variant)
                rows.append([storage, variant, r + 1, holds, wall, overlaps, odd, healed])
                print(f"  {storage}, {variant}, trial {r + 1}: {overlaps} overlaps", flush=True)
    print(f"\nMachine: {machine()}\n{WORKERS} processes, each taking pool {POOL} (limit 1) {args.holds} times, holding it 5 ms\n")
    print(table(["instance storage", "claims", "trial", "holds", "wall (s)", "overlapping holds", "holds seeing a second assigned entry or holder",
                 "stranded steps assigned"], rows))


if __name__ == "__main__":
    main()

"""Erasures on the Dagster instance storage the project ships and on Dagster's own classes (SQLite; dagster-postgres with --pg), in pairs.

Needs a home that ``erasure_cost`` built and kept (``--keep DIR``; or builds one at ``--subjects`` itself). Each
pass copies it twice: one copy keeps the project's ``dagster.yaml`` (``erasure_pipeline.defs.instance_storage``:
connections kept open), the other has the three storage blocks removed (Dagster's ``SqliteRunStorage``,
``SqliteEventLogStorage``, ``SqliteScheduleStorage``: an engine and a connection per query). On each copy, in a
process started for it, one erasure warms the process, then ``-n`` subjects are erased one at a time (the same
subjects on both copies of a pass), then ``--batch`` subjects in one tick. The two copies of a pass run one after
the other, in alternating order, so the VM's drift falls on both.

``--pg postgresql+psycopg2://user@host:5432/postgres`` puts each copy's Dagster storage on a database of its own on
that server (made and dropped here; the ledger stays the home's), ``deploy/dagster.yaml``'s ``PooledPostgres*``
against dagster-postgres's own classes. The copy's Dagster history starts empty there: each erasure does the same
work, its materialisations name no earlier ones.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import secrets
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from benchmarks._common import copy_home, kept_home, kept_home_arguments, machine, project_home, table

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {"kept": "the project's (connections kept open)", "dagster": "Dagster's own classes (a connection per query)"}
STORAGES = ("run_storage", "event_log_storage", "schedule_storage")


def _copy(home: Path, to: Path, variant: str, postgres: bool) -> None:
    copy_home(home, to)
    config = to / "dagster" / "dagster.yaml"
    instance = yaml.safe_load(((REPO / "deploy" / "dagster.yaml") if postgres else config).read_text())
    if variant == "dagster":
        instance = {k: v for k, v in instance.items() if k not in STORAGES}
        if postgres:
            instance["storage"] = {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    elif not all(k in instance for k in STORAGES):
        raise SystemExit(f"{home}/dagster/dagster.yaml does not name the project's storages: build the home with this checkout")
    config.write_text(yaml.safe_dump(instance))


def _erase(singles: list[str], batch: list[str]) -> tuple[list[float], float | None]:
    """In a process started for it, on the home its environment names: seconds of each single erasure (the
    first, which warms the process, included) and of the batch's one tick."""
    from benchmarks._common import ledger
    from benchmarks.erasure_cost import erase_in_a_fresh_process
    from erasure_pipeline.app.process import drain
    from erasure_pipeline.app.runner import get_instance
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions
    from erasure_pipeline.erasure.intake import erase_many

    times = erase_in_a_fresh_process(singles)
    if not batch:
        return times, None
    defs, instance = build_definitions(load_policy()), get_instance()
    t0 = time.perf_counter()
    rids = [r for r, _ in erase_many(batch, reason="benchmark")]
    result = drain(defs, instance)
    seconds = time.perf_counter() - t0
    book = ledger()
    assert not result.failed_runs and all(book.requests.get(r)["status"] == "completed" for r in rids)
    return times, seconds


@contextlib.contextmanager
def _database(server: str | None, copy: Path):
    """A database of its own on ``server`` for one copy's Dagster storage, in the environment; dropped after."""
    if server is None:
        yield
        return
    import sqlalchemy as sa

    name = f"erasure_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a generated name, not input
    os.environ["DAGSTER_PG_URL"] = sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    os.environ["DAGSTER_COMPUTE_LOG_DIR"] = str(copy / "compute_logs")
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kept_home_arguments(ap)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--pg", default=None, help="a PostgreSQL server's URL (psycopg2): each copy's Dagster storage there")
    args = ap.parse_args(argv)

    from erasure_pipeline.app.demo import subject_ids

    scratch = Path(tempfile.mkdtemp(prefix="erasure-bench-storage-"))
    try:
        home = kept_home(args, scratch)
        ids = subject_ids(args.subjects, args.seed)
        rows, singles_of, batches_of = [], {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
        for p in range(args.passes):
            rng = random.Random(1000 + p)
            chosen = rng.sample(ids, 1 + args.n + args.batch)
            singles, batch = chosen[:1 + args.n], chosen[1 + args.n:]
            for variant in (list(VARIANTS) if p % 2 == 0 else list(VARIANTS)[::-1]):
                copy = scratch / f"pass{p}-{variant}"
                _copy(home, copy, variant, args.pg is not None)
                with project_home((copy / "policy.yaml").read_text(), str(copy)), _database(args.pg, copy), \
                        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                    times, batch_s = child.submit(_erase, singles, batch).result()
                shutil.rmtree(copy, ignore_errors=True)
                singles_of[variant] += times[1:]
                if batch_s is not None:
                    batches_of[variant].append(batch_s)
                rows.append([p + 1, VARIANTS[variant], f"{statistics.median(times[1:]):.3f}", f"{min(times[1:]):.3f}",
                             f"{max(times[1:]):.3f}", f"{batch_s:.2f}" if batch_s is not None else "-"])
                print(f"pass {p + 1}, {variant}: median {statistics.median(times[1:]):.3f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"Machine: {machine()}")
    where = "PostgreSQL (a database per copy; the ledger on the home's SQLite)" if args.pg else "SQLite"
    print(f"Dagster instance storage: {where}")
    print(f"Home: {args.subjects:,} subjects ({'kept at ' + args.keep if args.keep else 'built here'}); "
          f"{args.n} single erasures and one tick of {args.batch} per copy, in a process started for it (after one that warms it)")
    print()
    print(table(["pass", "instance storage", "one subject, median (s)", "min (s)", "max (s)", f"{args.batch} subjects in one tick (s)"], rows))
    print()
    kept, plain = statistics.median(singles_of["kept"]), statistics.median(singles_of["dagster"])
    summary = [["one subject, median of every erasure", f"{plain:.3f}", f"{kept:.3f}", f"{kept / plain:.3f}"]]
    if batches_of["kept"]:
        bk, bd = statistics.median(batches_of["kept"]), statistics.median(batches_of["dagster"])
        summary.append([f"{args.batch} subjects in one tick, median of the passes", f"{bd:.2f}", f"{bk:.2f}", f"{bk / bd:.3f}"])
    print(table(["erasure", "Dagster's own classes (s)", "the project's (s)", "ratio"], summary))


if __name__ == "__main__":
    main()

"""Picking demo subjects and scanning a project home for raw identifiers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from erasure_pipeline.app.demo import demo_policy
from erasure_pipeline.core.contracts import contracts_for
from erasure_pipeline.core.identity import Keyer
from erasure_pipeline.stores.landing import read_landing_table
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import PEPPER


def landing_frames(n_shards: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    landing = stores.landing()
    keyer = Keyer(PEPPER.encode(), n_shards)
    tables = contracts_for(demo_policy())
    return read_landing_table(landing, tables["subjects"], keyer), read_landing_table(landing, tables["tickets"], keyer)


def pick_subjects(n_shards: int, with_tickets: int, without_tickets: int = 0, consented: bool | None = None) -> list[tuple[str, int]]:
    """(subject_id, shard) of subjects in pairwise different shards."""
    subjects, tickets = landing_frames(n_shards)
    has_ticket = set(tickets["subject_id"])
    used, out = set(), []
    for want_ticket, count in ((True, with_tickets), (False, without_tickets)):
        for row in subjects.itertuples(index=False):
            if count == 0:
                break
            if row.shard in used or (row.subject_id in has_ticket) != want_ticket:
                continue
            if consented is not None and bool(row.consent_training) != consented:
                continue
            out.append((row.subject_id, int(row.shard)))
            used.add(row.shard)
            count -= 1
    return out


def decoded(name: str, body: bytes) -> pa.Table | None:
    """A Parquet or Arrow IPC file's table (read with pyarrow alone, not the project's readers: both compress, so a
    byte scan would not see what they hold); None for anything else."""
    if name.endswith(".parquet"):
        return pq.read_table(pa.BufferReader(body))
    if name.endswith(".arrow"):  # the ingest's staging area
        return pa.ipc.open_file(pa.BufferReader(body)).read_all()
    return None


def scan_for(home: Path, needles: list[str]) -> list[str]:
    """Every place under ``home`` that holds one of ``needles``: Parquet and Arrow files decoded, all else as raw bytes."""
    found = []
    raw_needles = [n.encode() for n in needles]
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        table = decoded(path.name, path.read_bytes()) if path.suffix in (".parquet", ".arrow") else None
        if table is not None:
            for col in table.column_names:
                values = set(map(str, table.column(col).to_pylist()))
                for n in needles:
                    if n in values or any(n in v for v in values):
                        found.append(f"{path}:{col}")
        else:
            data = path.read_bytes()
            for n, raw in zip(needles, raw_needles):
                if raw in data or n.encode("utf-16-le") in data:
                    found.append(str(path))
    return found


def key(subject_id: str) -> str:
    return Keyer(PEPPER.encode(), 1).key(subject_id)


def materialised_partitions(inst, after_storage_id: int) -> set[tuple[str, str | None]]:
    """(asset, partition) of every materialisation recorded after a point in the event log."""
    import warnings

    import dagster as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one query over every asset's materialisations since a point
        records = inst.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, after_cursor=after_storage_id), limit=10_000)
    return {(r.asset_key.to_user_string(), r.partition_key) for r in records}


def max_storage_id(inst) -> int:
    import warnings

    import dagster as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = inst.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION),
                                         limit=1, ascending=False)
    return records[0].storage_id if records else 0


def materialize_assets(names: list[str], partition: str | None = None):
    """Materialise assets by hand, as a person does in the UI (the asset path, not a job)."""
    import dagster as dg

    from erasure_pipeline_tests.conftest import defs_and_policy, instance

    defs, _policy = defs_and_policy()
    return dg.materialize([*defs.assets, *(defs.asset_checks or [])], selection=dg.AssetSelection.assets(*names),
                          partition_key=partition, instance=instance(), resources=defs.resources, raise_on_error=False)


def provenance_mismatches(n_shards: int) -> list[str]:
    """Where the ledger's provenance of the raw and training partitions is not what the stores hold now:
    a subject's rows in a partition, or (raw, text) the buckets whose text names a subject without rows there.
    Each entry names the partition, a key prefix and both counts."""
    from collections import defaultdict

    import sqlalchemy as sa

    from erasure_pipeline.core.identity import NO_SUBJECT, partition_keys
    from erasure_pipeline.ledger import schema
    from erasure_pipeline.stores import buckets as bk

    P = schema.provenance.c
    held: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    with stores.default_ledger().db.engine.connect() as conn:
        for asset, part, k, n in conn.execute(sa.select(P.asset, P.partition, P.subject_key, P.rows)):
            held[(asset, part)][k] = n
    lake, out = stores.lake(), []
    for asset in ("raw_subjects", "raw_events", "raw_tickets", "training_shards"):
        for part in partition_keys(n_shards):
            manifest = bk.read_manifest(lake, asset, part)
            rows = stores.table(lake, asset, part)["subject_key"].value_counts().to_dict()
            rows.pop(NO_SUBJECT, None)
            recorded = held.get((asset, part), {})
            for k in set(rows) | set(recorded):
                named = len(manifest.mentioning(k)) if manifest is not None and k not in rows else None
                if recorded.get(k) != rows.get(k, named or None):
                    out.append(f"{asset}[{part}] {k[:8]}: ledger {recorded.get(k)}, stores {rows.get(k, named)}")
    return sorted(out)


def actions_keep_their_order(book, rid: str) -> None:
    """A certificate's actions, recorded in one statement, read back in the order given (recorded again: replaced)."""
    actions = [{"asset": f"a{i:02d}", "partition": None if i % 2 else f"shard_{i:02d}", "action": "NO_DATA", "data_present": False,
                "before_hash": None, "after_hash": None, "detail": "", "run_id": None} for i in (5, 1, 9, 0, 7, 3, 12, 2)]
    for _ in range(2):
        book.certificates.record_actions(rid, actions)
    assert [a["asset"] for a in book.certificates.actions(rid)] == [a["asset"] for a in actions]

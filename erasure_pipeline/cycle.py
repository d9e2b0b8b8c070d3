"""The retraining cycle's plan: which landing files are new, which shards they and retention touch.

The cursor is the ledger's ``landing_files`` table (files some batch has taken), written when a
cycle is planned; every run of the cycle carries its file list in run config, so a failed run
can be re-executed from the UI with the same input. No Dagster import.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

from erasure_pipeline import identity
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage.lake import Lake, content_hash
from erasure_pipeline.storage.landing import landing_files, read_landing

RETENTION_ASSETS = ("raw_events", "raw_tickets")


@dataclass
class CyclePlan:
    batch_id: str
    as_of: dt.datetime
    files: list[tuple[str, str, str]] = field(default_factory=list)
    """(name, table, content hash) of the new landing files."""
    new_rows: set[int] = field(default_factory=set)
    """Shards that received landing rows."""
    retention: set[int] = field(default_factory=set)
    """Shards holding rows older than ``as_of - retention_days``."""

    @property
    def shards(self) -> list[int]:
        return sorted(self.new_rows | self.retention)

    @property
    def file_names(self) -> list[str]:
        return [f[0] for f in self.files]


def _batch_id(as_of: dt.datetime, names: list[str]) -> str:
    # New files identify the batch, so re-evaluating the same tick gives the same run keys;
    # a retention-only cycle is identified by its day.
    seed = "\n".join(sorted(names)) if names else f"retention:{as_of.date().isoformat()}"
    return "lb-" + hashlib.sha256(seed.encode()).hexdigest()[:16]


def plan_cycle(book: Ledger, landing: Lake, pepper: bytes, policy: Policy, as_of: dt.datetime) -> CyclePlan | None:
    """What the next cycle must do, or None when there is nothing (no new file, nothing expired)."""
    known = book.known_landing_files()
    plan = CyclePlan("", as_of)
    for f in landing_files(landing):
        if f.name in known:
            continue
        data = landing.read_bytes(f.name) or b""
        plan.files.append((f.name, f.table, content_hash(data)))
        rows = read_landing(landing, f, pepper, policy.shards)
        plan.new_rows.update(int(s) for s in rows["shard"].unique())
    cutoff = as_of - dt.timedelta(days=policy.retention_days)
    for stats in book.partition_stats():
        if stats["asset"] in RETENTION_ASSETS and stats["oldest"] is not None and stats["oldest"] < cutoff:
            plan.retention.add(identity.shard_from_partition(stats["partition"]))
    if not plan.files and not plan.retention:
        return None
    plan.batch_id = _batch_id(as_of, plan.file_names)
    return plan


def record_full_ingest(book: Ledger, landing: Lake, policy: Policy, batch_id: str) -> None:
    """A full materialisation takes every landing file present: the next cycle starts after them."""
    files = [(f.name, f.table, content_hash(landing.read_bytes(f.name) or b"")) for f in landing_files(landing)]
    book.record_landing_batch(batch_id, "full", files, range(policy.shards), dt.datetime.now(dt.UTC))

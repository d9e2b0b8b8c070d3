"""Checking the sealed personal fields store-wide: every kept subject's fields open, no erased subject keeps a key.

``erasure-pipeline keys verify`` runs it. A request's own ``verify`` checks its subject has no data key
(``erasure.verify``); this checks the other side, which no single request can: that what the pipeline
keeps, it can still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from erasure_pipeline.core.contracts import contracts_for
from erasure_pipeline.core.crypto import PAYLOAD_PREFIX
from erasure_pipeline.core.identity import shard_from_partition
from erasure_pipeline.core.tombstones import Tombstones
from erasure_pipeline.kinds.base import Env
from erasure_pipeline.kinds.vectors import NODE as VECTOR_NODE
from erasure_pipeline.kinds.vectors import open_payload
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.stores import buckets as bk


@dataclass
class SealedReport:
    partitions: int = 0
    rows: int = 0
    points: int = 0
    kept_unreadable: dict[str, int] = field(default_factory=dict)
    """Kept (not tombstoned) subject key -> sealed cells or payloads of theirs that do not open: a lost key."""
    erased_unreadable: int = 0
    """Cells of tombstoned subjects that no longer open (their key is destroyed; the rewrite takes them out)."""
    erased_with_key: list[str] = field(default_factory=list)
    """Subjects whose key was destroyed and who hold one again (never expected)."""

    @property
    def ok(self) -> bool:
        return not self.kept_unreadable and not self.erased_with_key

    @property
    def line(self) -> str:
        if self.ok:
            return (f"sealed fields: every kept subject's fields open ({self.rows} rows in {self.partitions} partitions, "
                    f"{self.points} vector payloads); no erased subject holds a data key")
        parts = []
        if self.kept_unreadable:
            parts.append(f"{len(self.kept_unreadable)} kept subjects have {sum(self.kept_unreadable.values())} sealed fields "
                         "that do not open (their data keys are missing: was the key store restored from an older copy?)")
        if self.erased_with_key:
            parts.append(f"{len(self.erased_with_key)} erased subjects hold a data key again")
        return "sealed fields: " + "; ".join(parts)


def check_sealed(env: Env) -> SealedReport:
    report = SealedReport()
    if env.keys is None:
        return report
    tombstoned = Tombstones.load(env.ledger, env.keyer).current
    tables = contracts_for(env.policy)

    def lost(unreadable: dict[str, int]) -> None:
        for k, n in unreadable.items():
            if k in tombstoned:
                report.erased_unreadable += n
            else:
                report.kept_unreadable[k] = report.kept_unreadable.get(k, 0) + n

    for node in env.graph.raw_nodes:
        sealed = tables[node.table].sealed
        if not sealed:
            continue
        for p in env.partitions:
            df = bk.read_buckets(env.lake, node.name, p, columns=["subject_key", *sealed], keys=env.keys)
            if df is None:
                continue
            report.partitions += 1
            report.rows += len(df)
            lost(df.attrs.get("unreadable") or {})
    if any(n.name == VECTOR_NODE for n in env.graph.nodes):
        for p in env.partitions:
            for payload in env.vectors.payloads(shard_from_partition(p)):
                report.points += 1
                text = payload.get("text")
                if isinstance(text, str) and text.startswith(PAYLOAD_PREFIX) and open_payload(payload, env.keys)["text"] is None:
                    lost({payload["subject_key"]: 1})
    with env.ledger.db.connect() as conn:
        q = sa.select(t.data_keys.c.subject_key).join(t.key_erasures, t.key_erasures.c.subject_key == t.data_keys.c.subject_key)
        report.erased_with_key = sorted(r.subject_key for r in conn.execute(q))
    return report

"""Lookup tables: datasets declared without a subject (``subject: null``): carriers, airports, price lists.

No person's data, by declaration: one unpartitioned table, rebuilt from every landing file of the dataset
(later files win on id), computed before the shard steps so features can join it (``features.joins``) and
feature functions can read it. It is never in an erasure plan, a certificate or a proof.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from erasure_pipeline.core.contracts import contracts_for
from erasure_pipeline.core.graph import Node
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds.base import Env, Finding, Kind, NodeResult, NodeRun, finish
from erasure_pipeline.stores import lake as lk
from erasure_pipeline.stores.landing import landing_files, read_landing_table

TABLE = "all"


def node_name(dataset: str) -> str:
    return f"lookup_{dataset}"


class Lookup(Kind):
    name = "lookup"
    personal = False

    def nodes(self, policy: Policy) -> list[Node]:
        return [Node(node_name(name), self.name, "raw", False, reads=(f"datasets.{name}",), table=name, kinds=("parquet",), prepare=True,
                     description=f"Lookup table `{name}` (declared without a subject: no person's data), whole, from every landing file.")
                for name in policy.lookup_datasets]

    def compute(self, run: NodeRun) -> NodeResult:
        env, node = run.env, run.node
        contract = contracts_for(env.policy)[node.table]
        if not landing_files(env.landing, {contract.name: contract}):
            raise lk.not_materialised(env.landing, f"{node.table} (lookup: no landing file)", None)
        rows = read_landing_table(env.landing, contract, env.keyer)
        rows = rows.drop(columns=[c for c in ("subject_key", "shard") if c in rows]).sort_values(contract.id_column, kind="stable")
        digest = lk.write_table(env.lake, node.name, TABLE, rows.reset_index(drop=True))
        finish(run, digest)
        return NodeResult(digest, None, {"rows": len(rows), "columns": len(rows.columns), "content_hash": digest})

    def read_rows(self, env: Env, node: Node, partition: str, *, buckets: Iterable[int] | None = None,
                  columns: list[str] | None = None, cache: bool = False) -> pd.DataFrame | None:
        """The whole table, whichever shard asks."""
        data = env.lake.read_bytes(lk.table_name(node.name, TABLE))
        return None if data is None else lk.table_from_bytes(data, columns, name=lk.table_name(node.name, TABLE))

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        return []  # declared to hold no person's data

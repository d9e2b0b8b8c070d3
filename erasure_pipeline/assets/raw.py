"""Raw lake partitions: ``raw_subjects``, ``raw_events``, ``raw_tickets`` per shard.

Ingest: the existing partition, upserted with this shard's rows from landing, minus
tombstoned subjects. Erasure: the existing partition minus tombstoned subjects, and
nothing new (so an erasure run never mixes in fresh data). Either way the partition is
read back, checked, and its per-subject footprint written to the ledger's provenance.
"""


from typing import Literal

import dagster as dg
import pandas as pd

from erasure_pipeline import contracts, identity
from erasure_pipeline.assets.common import code_version, shard_partitions, tombstone_check, tombstone_spec
from erasure_pipeline.erasure.service import BATCH_TAG
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LandingResource, LedgerResource, PepperResource
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.storage.landing import read_landing_table, scrub_landing

RAW_TABLES = {"raw_subjects": "subjects", "raw_events": "events", "raw_tickets": "tickets"}


class RawConfig(dg.Config):
    mode: Literal["ingest", "erasure"] = "ingest"
    """``erasure`` rewrites the partition without its tombstoned subjects and ingests nothing."""
    landing_files: list[str] | None = None
    """Ingest only these landing files (a cycle's batch); ``None`` means every file in landing."""


def rewrite_partition(existing: pd.DataFrame | None, incoming: pd.DataFrame | None, id_column: str, tombstoned: set[str]) -> tuple[pd.DataFrame, int]:
    """Upsert ``incoming`` into ``existing`` by id, drop tombstoned subjects, sort by id."""
    frames = [f for f in (existing, incoming) if f is not None and not f.empty]
    if not frames:
        return (existing if existing is not None else pd.DataFrame()), 0
    both = pd.concat(frames, ignore_index=True).drop_duplicates(subset=[id_column], keep="last")
    keep = ~both["subject_key"].isin(tombstoned)
    out = both[keep].sort_values(id_column, kind="stable").reset_index(drop=True)
    return out, int((~keep).sum())


def _raw_asset(asset_name: str, table: str, policy: Policy) -> dg.AssetsDefinition:
    contract = contracts.CONTRACTS[table]

    @dg.asset(
        name=asset_name,
        group_name="raw",
        partitions_def=shard_partitions(policy),
        code_version=code_version(policy, asset_name),
        check_specs=[tombstone_spec(asset_name)],
        kinds={"parquet"},
        description=f"Landing `{table}` rows of one shard, keyed by `subject_key`, minus tombstoned subjects.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: RawConfig,
        lake: LakeResource,
        landing: LandingResource,
        pepper: PepperResource,
        ledger: LedgerResource,
    ) -> dg.MaterializeResult:
        partition = context.partition_key
        shard = identity.shard_from_partition(partition)
        store, book = lake.get(), ledger.get()
        batch_id = context.run.tags.get(BATCH_TAG)
        if config.mode == "erasure" and batch_id and (batch := book.get_batch(batch_id)):
            book.start(batch["plan"]["requests"], context.run_id)
        # Tombstones are read at materialisation time, after any intake that committed before.
        tombstoned = book.tombstoned_keys(shard)
        existing = lk.read_table(store, asset_name, partition)
        before_hash = lk.content_hash(lk.table_to_bytes(existing)) if existing is not None else None
        incoming = None
        if config.mode == "ingest":
            rows = read_landing_table(landing.get(), table, pepper.get(), policy.shards, config.landing_files)
            if not rows.empty:
                incoming = rows[rows["shard"] == shard].drop(columns=["shard"])
        result, dropped = rewrite_partition(existing, incoming, contract.id_column, tombstoned)
        if result.empty and not result.columns.size:
            result = pd.DataFrame({"subject_key": pd.Series(dtype=str), contract.id_column: pd.Series(dtype=str)})
        after_hash = lk.write_table(store, asset_name, partition, result)
        purged, scrubbed = [], []
        if config.mode == "erasure":
            purged = store.purge_noncurrent(lk.table_name(asset_name, partition))
            scrubbed = scrub_landing(landing.get(), table, book.tombstoned_keys(), pepper.get(), policy.shards)
        written = lk.require_table(store, asset_name, partition)
        book.record_provenance(asset_name, partition, written["subject_key"].value_counts().to_dict(), after_hash, context.run_id)
        context.log.info(f"{asset_name}[{partition}] {config.mode}: {len(written)} rows, {dropped} tombstoned rows dropped")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(after_hash),
            metadata={
                "mode": config.mode,
                "rows": len(written),
                "subjects": int(written["subject_key"].nunique()),
                "rows_added": 0 if incoming is None else len(incoming),
                "tombstoned_rows_dropped": dropped,
                "noncurrent_versions_purged": len(purged),
                "landing_files_scrubbed": len(scrubbed),
                "content_hash": after_hash,
                "previous_content_hash": before_hash or "",
                "lake": store.describe(),
            },
            check_results=[tombstone_check(asset_name, written["subject_key"], tombstoned)],
        )

    return _asset


def build_raw_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    return [_raw_asset(name, table, policy) for name, table in RAW_TABLES.items()]

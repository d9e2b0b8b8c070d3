"""Raw lake partitions: ``raw_subjects``, ``raw_events``, ``raw_tickets`` per shard.

Ingest: the existing partition, upserted with this shard's rows from landing, minus
tombstoned subjects. Erasure: the existing partition minus tombstoned subjects, and
nothing new (so an erasure run never mixes in fresh data). Either way the partition is
read back, checked, and its per-subject footprint written to the ledger's provenance.
"""


import datetime as dt
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
    as_of: str | None = None
    """A retraining cycle's time (ISO 8601): rows older than ``as_of - retention_days`` leave the lake.
    Every ingest also applies the latest cutoff a cycle has applied, so re-ingesting all of landing
    (a backfill) never brings expired rows back."""


def retention_cutoff(policy: Policy, book, as_of: str | None) -> dt.datetime | None:
    """The latest of this run's cutoff and every earlier cycle's (cutoffs only move forward)."""
    times = [b["as_of"] for b in book.landing_batches() if b["kind"] == "cycle"]
    if as_of:
        times.append(dt.datetime.fromisoformat(as_of))
    if not times:
        return None
    latest = max(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in times)
    return latest - dt.timedelta(days=policy.retention_days)


def apply_retention(df: pd.DataFrame, table: str, cutoff: dt.datetime | None) -> tuple[pd.DataFrame, int]:
    """Drop rows whose timestamp is older than ``cutoff`` (tables without timestamps are kept)."""
    cols = contracts.CONTRACTS[table].timestamps
    if cutoff is None or not cols or df.empty or cols[0] not in df:
        return df, 0
    old = (pd.to_datetime(df[cols[0]], utc=True) < pd.Timestamp(cutoff)).to_numpy()
    return df[~old].reset_index(drop=True), int(old.sum())


def oldest(df: pd.DataFrame, table: str) -> dt.datetime | None:
    cols = contracts.CONTRACTS[table].timestamps
    if not cols or df.empty or cols[0] not in df:
        return None
    return pd.to_datetime(df[cols[0]], utc=True).min().to_pydatetime()


def _awaiting_erasure(book, existing: pd.DataFrame | None, incoming: pd.DataFrame | None, tombstoned: set[str]) -> dict[str, int]:
    """Subjects an ingest dropped because their erasure request is still live.

    Their provenance is kept, so the erasure run still visits this partition (and scrubs the
    landing copies, retrains, certifies what it did) instead of finding "no data".
    """
    frames = [f[["subject_key"]] for f in (existing, incoming) if f is not None and not f.empty]
    if not frames or not tombstoned:
        return {}
    counts = pd.concat(frames)["subject_key"].value_counts()
    counts = counts[counts.index.isin(tombstoned)]
    return {k: int(n) for k, n in counts.items() if book.live_request_for(k) is not None}


def consent_changes(existing: pd.DataFrame | None, written: pd.DataFrame, policy: Policy) -> dict[str, bool]:
    """Subjects whose training consent flipped between the old and the new partition."""
    from erasure_pipeline.ml.features import consenting

    if existing is None or existing.empty or written.empty or policy.consent.column not in written:
        return {}
    before = pd.Series(consenting(existing, policy).to_numpy(), index=existing["subject_key"].to_numpy())
    after = pd.Series(consenting(written, policy).to_numpy(), index=written["subject_key"].to_numpy())
    both = before.index.intersection(after.index)
    flipped = both[before.loc[both].to_numpy() != after.loc[both].to_numpy()]
    return {k: bool(after.loc[k]) for k in flipped}


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
            check = (lambda frame, name: contracts.check_subjects_for_policy(frame, name, policy)) if table == "subjects" else None
            rows = read_landing_table(landing.get(), table, pepper.get(), policy.shards, config.landing_files, check=check)
            if not rows.empty:
                incoming = rows[rows["shard"] == shard].drop(columns=["shard"])
        result, dropped = rewrite_partition(existing, incoming, contract.id_column, tombstoned)
        cutoff = retention_cutoff(policy, book, config.as_of) if config.mode == "ingest" else None
        result, expired = apply_retention(result, table, cutoff)
        if result.empty and not result.columns.size:
            result = pd.DataFrame({"subject_key": pd.Series(dtype=str), contract.id_column: pd.Series(dtype=str)})
        after_hash = lk.write_table(store, asset_name, partition, result)
        # A request filed while this step ran: its tombstone committed after we read the list.
        # Re-read after the write and rewrite until no late tombstone is in the partition.
        for _ in range(5):
            late = book.tombstoned_keys(shard) - tombstoned
            tombstoned |= late
            if not late or not result["subject_key"].isin(late).any():
                break
            result, more = rewrite_partition(result, None, contract.id_column, tombstoned)
            dropped += more
            after_hash = lk.write_table(store, asset_name, partition, result)
        purged, scrubbed = [], []
        if config.mode == "erasure" or expired:
            purged = store.purge_noncurrent(lk.table_name(asset_name, partition))
        if config.mode == "erasure":
            scrubbed = scrub_landing(landing.get(), table, book.tombstoned_keys(), pepper.get(), policy.shards)
        elif incoming is not None and incoming["subject_key"].isin(tombstoned).any():
            # A source sent an erased subject again: drop them from the landing copy too.
            scrubbed = scrub_landing(landing.get(), table, book.tombstoned_keys(), pepper.get(), policy.shards, config.landing_files)
        written = lk.require_table(store, asset_name, partition)
        footprint = written["subject_key"].value_counts().to_dict()
        if config.mode == "ingest":
            footprint.update(_awaiting_erasure(book, existing, incoming, tombstoned))
        book.record_provenance(asset_name, partition, footprint, after_hash, context.run_id)
        book.record_partition_stats(asset_name, partition, len(written), oldest(written, table))
        if expired:
            book.record_retention(asset_name, partition, expired, cutoff, context.run_id, len(purged))
        consent = consent_changes(existing, written, policy) if table == "subjects" else {}
        book.record_consent_changes(shard, consent, context.run_id)
        context.log.info(
            f"{asset_name}[{partition}] {config.mode}: {len(written)} rows, {dropped} tombstoned rows dropped, "
            f"{expired} rows past retention, {len(consent)} consent changes"
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(after_hash),
            metadata={
                "mode": config.mode,
                "rows": len(written),
                "subjects": int(written["subject_key"].nunique()),
                "rows_added": 0 if incoming is None else len(incoming),
                "tombstoned_rows_dropped": dropped,
                "rows_past_retention": expired,
                "retention_cutoff": cutoff.isoformat() if cutoff else "",
                "consent_changes": len(consent),
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

"""The vector index: ticket chunks of one shard, embedded statelessly, synced into Qdrant."""

import dagster as dg

from erasure_pipeline import identity
from erasure_pipeline.assets.common import code_version, shard_partitions
from erasure_pipeline.policy import Policy
from erasure_pipeline.resources import LakeResource, LedgerResource, VectorStoreResource
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.vectors.embed import chunk_text, embed, point_id


def ticket_points(tickets, shard: int, max_chars: int) -> tuple[list[str], list[str], list[dict]]:
    """(point ids, chunk texts, payloads) for one shard's tickets, in ticket order."""
    ids, texts, payloads = [], [], []
    for t in tickets[["ticket_id", "subject_key", "text"]].itertuples(index=False):
        for i, chunk in enumerate(chunk_text(t.text, max_chars)):
            ids.append(point_id(t.ticket_id, i, chunk))
            texts.append(chunk)
            payloads.append({"subject_key": t.subject_key, "ticket_id": t.ticket_id, "shard": shard, "chunk": i, "text": chunk})
    return ids, texts, payloads


def build_vector_assets(policy: Policy) -> list:
    v = policy.vectors

    @dg.asset(
        group_name="vectors",
        partitions_def=shard_partitions(policy),
        deps=["raw_tickets"],
        code_version=code_version(policy, "vector_index"),
        check_specs=[dg.AssetCheckSpec("no_tombstoned_points", asset="vector_index", blocking=True,
                                       description="Counting points by tombstoned subject_key in the shard's collection gives 0.")],
        kinds={"qdrant"},
        description="Ticket chunks of one shard in Qdrant (payload subject_key, ticket_id, shard); tombstoned subjects deleted by filter.",
    )
    def vector_index(context: dg.AssetExecutionContext, lake: LakeResource, vectors: VectorStoreResource, ledger: LedgerResource) -> dg.MaterializeResult:
        p = context.partition_key
        shard = identity.shard_from_partition(p)
        store = vectors.get()
        book = ledger.get()
        tombstoned = sorted(book.tombstoned_keys(shard))
        # Erasure first, by filter on subject_key, whatever the tickets table says.
        deleted, left = store.delete_subjects(shard, tombstoned)
        tickets = lk.require_table(lake.get(), "raw_tickets", p)
        tickets = tickets[~tickets["subject_key"].isin(tombstoned)] if len(tickets) else tickets
        ids, texts, payloads = ticket_points(tickets, shard, v.chunk_chars) if len(tickets) else ([], [], [])
        result = store.sync(shard, ids, embed(texts, v.dimensions), payloads)
        remaining = store.count_subjects(shard, tombstoned)
        points_by_key: dict[str, int] = {}
        for payload in payloads:
            points_by_key[payload["subject_key"]] = points_by_key.get(payload["subject_key"], 0) + 1
        book.record_provenance("vector_index", p, points_by_key, result.content_hash, context.run_id)
        context.log.info(f"vector_index[{p}]: {result.points} points, +{result.added} -{result.removed}, {deleted} deleted by subject filter")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(result.content_hash),
            metadata={
                "points": result.points,
                "tickets": len(tickets),
                "points_added": result.added,
                "points_removed": result.removed,
                "points_deleted_by_subject_filter": deleted,
                "content_hash": result.content_hash,
            },
            check_results=[
                dg.AssetCheckResult(check_name="no_tombstoned_points", passed=remaining == 0 and left == 0,
                                    metadata={"tombstoned_points_found": remaining, "tombstones_checked": len(tombstoned)})
            ],
        )

    return [vector_index]

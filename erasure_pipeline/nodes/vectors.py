"""The vector index: ticket chunks of one shard, embedded statelessly, synced into Qdrant."""

from __future__ import annotations

from erasure_pipeline.nodes import CheckOutcome, NodeResult, NodeRun, finish
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


def compute_vector_index(run: NodeRun) -> NodeResult:
    env, p, shard = run.env, run.partition, run.shard
    v = env.policy.vectors
    store = env.vectors
    tombstoned = sorted(env.ledger.tombstoned_keys(shard))
    # Erasure first, by filter on subject_key, whatever the tickets table says.
    deleted, left = store.delete_subjects(shard, tombstoned)
    tickets = lk.require_table(env.lake, "raw_tickets", p)
    tickets = tickets[~tickets["subject_key"].isin(tombstoned)] if len(tickets) else tickets
    ids, texts, payloads = ticket_points(tickets, shard, v.chunk_chars) if len(tickets) else ([], [], [])
    result = store.sync(shard, ids, embed(texts, v.dimensions), payloads)
    remaining = store.count_subjects(shard, tombstoned)
    points_by_key: dict[str, int] = {}
    for payload in payloads:
        points_by_key[payload["subject_key"]] = points_by_key.get(payload["subject_key"], 0) + 1
    finish(run, result.content_hash, provenance=points_by_key)
    run.log(f"vector_index[{p}]: {result.points} points, +{result.added} -{result.removed}, {deleted} deleted by subject filter")
    return NodeResult(result.content_hash, None, {
        "points": result.points,
        "tickets": len(tickets),
        "points_added": result.added,
        "points_removed": result.removed,
        "points_deleted_by_subject_filter": deleted,
        "content_hash": result.content_hash,
    }, (CheckOutcome("no_tombstoned_points", remaining == 0 and left == 0,
                     {"tombstoned_points_found": remaining, "tombstones_checked": len(tombstoned)}),))

"""The vector index: chunks of every declared text column of one shard, embedded statelessly, synced into Qdrant."""

from __future__ import annotations

from erasure_pipeline.nodes import CheckOutcome, NodeResult, NodeRun, finish
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.vectors.embed import chunk_text, embedder_for, point_id


def text_points(rows, dataset: str, id_column: str, text_columns, shard: int, max_chars: int) -> tuple[list[str], list[str], list[dict]]:
    """(point ids, chunk texts, payloads) for one shard's rows of one dataset, in row order, column by column."""
    ids, texts, payloads = [], [], []
    for col in text_columns:
        for record_id, subject_key, text in rows[[id_column, "subject_key", col]].itertuples(index=False):
            for i, chunk in enumerate(chunk_text(text, max_chars)):
                ids.append(point_id(f"{dataset}\x00{col}\x00{record_id}", i, chunk))
                texts.append(chunk)
                payloads.append({"subject_key": subject_key, "dataset": dataset, "record_id": record_id, "column": col,
                                 "shard": shard, "chunk": i, "text": chunk})
    return ids, texts, payloads


def compute_vector_index(run: NodeRun) -> NodeResult:
    env, p, shard = run.env, run.partition, run.shard
    policy = env.policy
    store = env.vectors
    tombstoned = sorted(env.ledger.tombstoned_keys(shard))
    # Erasure first, by filter on subject_key, whatever the text tables say.
    deleted, left = store.delete_subjects(shard, tombstoned)
    ids, texts, payloads, records = [], [], [], {}
    for parent in run.node.parents:
        dataset = parent.removeprefix("raw_")
        spec = policy.datasets[dataset]
        rows = lk.require_table(env.lake, parent, p)
        rows = rows[~rows["subject_key"].isin(tombstoned)] if len(rows) else rows
        records[dataset] = len(rows)
        if len(rows):
            i, t, pl = text_points(rows, dataset, spec.id, spec.text, shard, policy.vectors.chunk_chars)
            ids += i
            texts += t
            payloads += pl
    result = store.sync(shard, ids, embedder_for(policy)(texts, policy.vectors.dimensions), payloads)
    remaining = store.count_subjects(shard, tombstoned)
    points_by_key: dict[str, int] = {}
    for payload in payloads:
        points_by_key[payload["subject_key"]] = points_by_key.get(payload["subject_key"], 0) + 1
    finish(run, result.content_hash, provenance=points_by_key)
    run.log(f"vector_index[{p}]: {result.points} points, +{result.added} -{result.removed}, {deleted} deleted by subject filter")
    return NodeResult(result.content_hash, None, {
        "points": result.points,
        **{f"{d}_rows": n for d, n in records.items()},
        "points_added": result.added,
        "points_removed": result.removed,
        "points_deleted_by_subject_filter": deleted,
        "content_hash": result.content_hash,
    }, (CheckOutcome("no_tombstoned_points", remaining == 0 and left == 0,
                     {"tombstoned_points_found": remaining, "tombstones_checked": len(tombstoned)}),))

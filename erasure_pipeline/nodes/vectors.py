"""The vector index: chunks of every declared text column of one shard, embedded statelessly, in Qdrant.

Tombstoned subjects are deleted first, by ``subject_key`` filter. Then the index is synced with the raw
text buckets that changed since it was last built (their hashes are kept beside the index): per bucket,
points that are gone are deleted and only new chunks are embedded and upserted. Built for the first
time, or under other policy values, every bucket is synced and points of no bucket are deleted.
"""

from __future__ import annotations

import json

from erasure_pipeline.nodes import CheckOutcome, NodeResult, NodeRun, finish
from erasure_pipeline.storage import buckets as bk
from erasure_pipeline.storage.vectors import PointData, hash_ids
from erasure_pipeline.vectors.embed import chunk_text, embedder_for, point_id


def text_points(rows, dataset: str, id_column: str, text_columns, shard: int, max_chars: int,
                group: str | None = None) -> tuple[list[str], list[str], list[dict]]:
    """(point ids, chunk texts, payloads) for one shard's rows of one dataset, in row order, column by column."""
    ids, texts, payloads = [], [], []
    for col in text_columns:
        for record_id, subject_key, text in rows[[id_column, "subject_key", col]].itertuples(index=False):
            for i, chunk in enumerate(chunk_text(text, max_chars)):
                ids.append(point_id(f"{dataset}\x00{col}\x00{record_id}", i, chunk))
                texts.append(chunk)
                payloads.append({"subject_key": subject_key, "dataset": dataset, "record_id": record_id, "column": col,
                                 "shard": shard, "chunk": i, "group": group, "text": chunk})
    return ids, texts, payloads


def _inputs_name(partition: str) -> str:
    return f"vector_index/{partition}/inputs.json"


def compute_vector_index(run: NodeRun) -> NodeResult:
    env, p, shard = run.env, run.partition, run.shard
    policy, store, lake = env.policy, env.vectors, env.lake
    dims = policy.vectors.dimensions
    tombstoned = sorted(env.ledger.tombstoned_keys(shard))
    manifests = {parent: bk.read_manifest(lake, parent, p) for parent in run.node.parents}
    now = {parent: {bk.bucket_name(b): i.hash for b, i in (m.buckets.items() if m else [])} for parent, m in manifests.items()}
    blob = lake.read_bytes(_inputs_name(p))
    recorded = json.loads(blob) if blob else None
    layout = {parent: m.of for parent, m in manifests.items() if m is not None}
    full = recorded is None or recorded.get("code_version") != run.code_version or set(recorded["inputs"]) != set(now) \
        or recorded.get("layout", layout) != layout
    embed = embedder_for(policy)
    added = removed = rows_read = 0

    def sync(parts: list[tuple[str, list[int] | None]], existing: set[str]) -> None:
        """Make the points of these (parent, buckets; None: all) the ones their rows give now: of
        ``existing`` (the points there are), delete the others and embed only the new chunks."""
        nonlocal added, removed, rows_read
        ids, texts, payloads = [], [], []
        for parent, buckets in parts:
            dataset = parent.removeprefix("raw_")
            spec = policy.datasets[dataset]
            rows = bk.read_buckets(lake, parent, p, buckets, manifests[parent]) if manifests[parent] else None
            if rows is None or not len(rows):
                continue
            rows = rows[~rows["subject_key"].isin(tombstoned)]
            rows_read += len(rows)
            groups = bk.buckets_of(rows["subject_key"], manifests[parent].of or policy.lake.buckets)  # the raw buckets
            for b in sorted(set(groups.tolist())):
                i, t, pl = text_points(rows[groups == b], dataset, spec.id, spec.text, shard, policy.vectors.chunk_chars,
                                       f"{dataset}/{bk.bucket_name(b)}")
                ids, texts, payloads = ids + i, texts + t, payloads + pl
        new = [i for i, pid in enumerate(ids) if pid not in existing]
        vectors = embed([texts[i] for i in new], dims)
        stale = sorted(existing - set(ids))
        store.apply(shard, stale, [PointData(ids[i], vectors[j], payloads[i]) for j, i in enumerate(new)], dims)
        added, removed = added + len(new), removed + len(stale)

    with store.session(shard, dims):
        # Erasure first, by filter on subject_key, whatever the text tables say.
        deleted, left = store.delete_subjects(shard, tombstoned)
        if full:  # every bucket against every point: points of no bucket (gone, or from before groups) go too
            sync([(parent, None) for parent in manifests], store.point_ids(shard))
        else:
            for parent in manifests:
                before = recorded["inputs"][parent]
                for name in sorted(n for n in set(now[parent]) | set(before) if now[parent].get(n) != before.get(n)):
                    sync([(parent, [int(name[2:])])], store.group_ids(shard, f"{parent.removeprefix('raw_')}/{name}"))
        ids_now = store.point_ids(shard)
        remaining = store.count_subjects(shard, tombstoned)
    version = hash_ids(ids_now)
    lake.write_bytes(_inputs_name(p), json.dumps({"code_version": run.code_version, "inputs": now, "layout": layout}, sort_keys=True).encode())
    points_by_key: dict[str, int] = {}
    for parent in run.node.parents:  # provenance: whose text rows (so points) are here
        subjects = bk.read_buckets(lake, parent, p, columns=["subject_key"]) if manifests[parent] else None
        if subjects is not None and len(subjects):
            for k, n in subjects.loc[~subjects["subject_key"].isin(tombstoned), "subject_key"].value_counts().items():
                points_by_key[k] = points_by_key.get(k, 0) + int(n)
    finish(run, version, provenance=points_by_key)
    run.log(f"vector_index[{p}]: {len(ids_now)} points, +{added} -{removed}, {deleted} deleted by subject filter")
    return NodeResult(version, None, {
        "points": len(ids_now),
        "text_rows_read": rows_read,
        "synced": "every bucket" if full else "changed buckets",
        "points_added": added,
        "points_removed": removed,
        "points_deleted_by_subject_filter": deleted,
        "store": store.describe(),
        "content_hash": version,
    }, (CheckOutcome("no_tombstoned_points", remaining == 0 and left == 0,
                     {"tombstoned_points_found": remaining, "tombstones_checked": len(tombstoned)}),))

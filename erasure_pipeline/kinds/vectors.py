"""The vector index: chunks of every declared text column of one shard, embedded statelessly, in Qdrant.

Tombstoned subjects are deleted first, by ``subject_key`` filter. Then the index is synced with the raw
text buckets that changed since it was last built (their hashes are kept beside the index): per bucket,
points that are gone are deleted and only new chunks are embedded and upserted. Built for the first
time, or under other policy values, every bucket is synced and points of no bucket are deleted.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from erasure_pipeline.core.crypto import PAYLOAD_PREFIX, open_payload_value, seal_payload_value
from erasure_pipeline.core.graph import CheckSpec, Node
from erasure_pipeline.core.identity import shard_from_partition
from erasure_pipeline.core.policy import Policy
from erasure_pipeline.kinds import raw
from erasure_pipeline.kinds.base import CheckOutcome, Env, Finding, Kind, NodeResult, NodeRun, finish, read_together
from erasure_pipeline.kinds.raw_rows import key_counts
from erasure_pipeline.ml.embed import chunk_text, embedder_for, point_id
from erasure_pipeline.stores import buckets as bk
from erasure_pipeline.stores.vectors import PointData, hash_ids

NODE = "vector_index"


def text_points(rows, dataset: str, id_column: str, text_columns, shard: int, max_chars: int,
                group: str | None = None, sealed: Collection[str] = ()) -> tuple[list[str], list[str], list[dict]]:
    """(point ids, chunk texts, payloads) for one shard's rows of one dataset, in row order, column by column.
    A point of a ``sealed`` column has an id of its own: declaring a column personal replaces its points (their
    payloads were stored in the clear) rather than keeping them as they were."""
    ids, texts, payloads = [], [], []
    for col in text_columns:
        mark = "\x00sealed" if col in sealed else ""
        for record_id, subject_key, text in zip(*(rows[c].tolist() for c in (id_column, "subject_key", col)), strict=True):
            for i, chunk in enumerate(chunk_text(text, max_chars)):
                ids.append(point_id(f"{dataset}\x00{col}\x00{record_id}{mark}", i, chunk))
                texts.append(chunk)
                payloads.append({"subject_key": subject_key, "dataset": dataset, "record_id": record_id, "column": col,
                                 "shard": shard, "chunk": i, "group": group, "text": chunk})
    return ids, texts, payloads


def seal_payloads(payloads: list[dict], columns: list[str], keys, *, with_record_id: bool = False) -> None:
    """Seal, in place, the chunk text of points whose column is sealed (and their record id, when the dataset's
    id column is), under the subject's data key. The vector itself is a derived number, as a model's weights
    are: it stays as computed."""
    wanted = {p["subject_key"] for p in payloads if p["column"] in columns}
    found = keys.data_keys(wanted, create=False) if wanted else {}
    for p in payloads:
        if p["column"] in columns:
            key = found.get(p["subject_key"])
            for name in ("text", "record_id") if with_record_id else ("text",):
                p[name] = None if key is None else seal_payload_value(key, name, p["subject_key"], str(p[name]))


def open_payload(payload: dict, keys) -> dict:
    """A point's payload with its sealed fields opened (None: the subject's key is destroyed)."""
    sealed = [n for n in ("text", "record_id") if isinstance(payload.get(n), str) and payload[n].startswith(PAYLOAD_PREFIX)]
    if keys is None or not sealed:
        return payload
    key = keys.data_keys([payload["subject_key"]], create=False).get(payload["subject_key"])
    return {**payload, **{n: open_payload_value(key, n, payload["subject_key"], payload[n]) for n in sealed}}


def _inputs_name(partition: str) -> str:
    return f"{NODE}/{partition}/inputs.json"


@dataclass
class _Sync:
    """Makes the points of some raw buckets the ones their rows give now, counting what it did."""

    run: NodeRun
    manifests: dict
    tombstoned: list[str]
    added: int = 0
    removed: int = 0
    rows_read: int = 0

    def points_of(self, parent: str, buckets: list[int] | None) -> tuple[list[str], list[str], list[dict]]:
        """(ids, texts, payloads) of the parent's rows in ``buckets`` (None: all), per raw bucket as a group."""
        env, p = self.run.env, self.run.partition
        dataset = env.graph.node(parent).table
        spec = env.policy.datasets[dataset]
        rows = bk.read_buckets(env.lake, parent, p, buckets, self.manifests[parent], keys=env.keys,
                               only={*spec.text, spec.id}) if self.manifests[parent] else None
        if rows is None or not len(rows):
            return [], [], []
        rows = rows[~rows["subject_key"].isin(self.tombstoned)]
        self.rows_read += len(rows)
        groups = bk.buckets_of(rows["subject_key"], self.manifests[parent].of or env.policy.lake.buckets)  # the raw buckets
        ids, texts, payloads = [], [], []
        for b in sorted(set(groups.tolist())):
            i, t, pl = text_points(rows[groups == b], dataset, spec.id, spec.text, self.run.shard, env.policy.vectors.chunk_chars,
                                   f"{dataset}/{bk.bucket_name(b)}", spec.sealed)
            ids, texts, payloads = ids + i, texts + t, payloads + pl
        sealed = [c for c in spec.text if c in spec.sealed]
        if sealed and payloads:
            seal_payloads(payloads, sealed, env.keys, with_record_id=spec.id in spec.sealed)
        return ids, texts, payloads

    def __call__(self, parts: list[tuple[str, list[int] | None]], existing: set[str]) -> None:
        """Of ``existing`` (the points there are), delete the others and embed only the new chunks."""
        env = self.run.env
        ids, texts, payloads = [], [], []
        for parent, buckets in parts:
            i, t, pl = self.points_of(parent, buckets)
            ids, texts, payloads = ids + i, texts + t, payloads + pl
        new = [i for i, pid in enumerate(ids) if pid not in existing]
        dims = env.policy.vectors.dimensions
        vectors = embedder_for(env.policy)([texts[i] for i in new], dims)
        stale = sorted(existing - set(ids))
        env.vectors.apply(self.run.shard, stale, [PointData(ids[i], vectors[j], payloads[i]) for j, i in enumerate(new)], dims)
        self.added, self.removed = self.added + len(new), self.removed + len(stale)


def _provenance(env: Env, node: Node, partition: str, manifests: dict, tombstoned: list[str]) -> dict[str, int]:
    """Whose text rows (so points) are here: rows per subject of every text parent, tombstoned ones left out."""
    points_by_key: dict[str, int] = {}
    gone = set(tombstoned)
    for parent in node.parents:
        subjects = bk.read_buckets(env.lake, parent, partition, columns=["subject_key"], keys=env.keys) if manifests[parent] else None
        if subjects is not None and len(subjects):
            for k, n in key_counts(subjects["subject_key"]).items():  # rows of nobody left out
                if k not in gone:
                    points_by_key[k] = points_by_key.get(k, 0) + n
    return points_by_key


class VectorIndex(Kind):
    name = "vector_index"
    action = "VECTOR_DELETE"
    unit = "points"

    def nodes(self, policy: Policy) -> list[Node]:
        if not policy.text_datasets:
            return []
        columns = ", ".join(f"{t}.{col}" for t in policy.text_datasets for col in policy.datasets[t].text)
        return [Node(NODE, self.name, "vectors", True, tuple(raw.node_name(t) for t in policy.text_datasets), ("vectors", "embedder"),
                     self.action, subject_rows=True, kinds=("qdrant",),
                     checks=(CheckSpec("no_tombstoned_points", "Counting points by tombstoned subject_key in the shard's collection gives 0."),),
                     description=f"Text chunks of one shard ({columns}) in Qdrant; payload subject_key, dataset, record id; "
                                 "tombstoned subjects deleted by filter.")]

    def compute(self, run: NodeRun) -> NodeResult:
        env, p, shard = run.env, run.partition, run.shard
        store, lake = env.vectors, env.lake
        tombstoned = sorted(env.ledger.tombstones.active(shard))
        manifests = {parent: bk.read_manifest(lake, parent, p) for parent in run.node.parents}
        now = {parent: {bk.bucket_name(b): i.hash for b, i in (m.buckets.items() if m else [])} for parent, m in manifests.items()}
        blob = lake.read_bytes(_inputs_name(p))
        recorded = json.loads(blob) if blob else None
        layout = {parent: m.of for parent, m in manifests.items() if m is not None}
        full = recorded is None or recorded.get("code_version") != run.code_version or set(recorded["inputs"]) != set(now) \
            or recorded.get("layout", layout) != layout
        sync = _Sync(run, manifests, tombstoned)
        with store.session(shard, env.policy.vectors.dimensions):
            deleted, left = store.delete_subjects(shard, tombstoned)  # erasure first, by filter on subject_key
            if full:  # every bucket against every point: points of no bucket (gone, or from before groups) go too
                sync([(parent, None) for parent in manifests], store.point_ids(shard))
            else:
                for parent in manifests:
                    before = recorded["inputs"][parent]
                    for name in sorted(n for n in set(now[parent]) | set(before) if now[parent].get(n) != before.get(n)):
                        sync([(parent, [int(name[2:])])], store.group_ids(shard, f"{env.graph.node(parent).table}/{name}"))
            ids_now, remaining = store.point_ids(shard), store.count_subjects(shard, tombstoned)
        version = hash_ids(ids_now)
        lake.write_bytes(_inputs_name(p), json.dumps({"code_version": run.code_version, "inputs": now, "layout": layout}, sort_keys=True).encode())
        finish(run, version, provenance=_provenance(env, run.node, p, manifests, tombstoned))
        run.log(f"vector_index[{p}]: {len(ids_now)} points, +{sync.added} -{sync.removed}, {deleted} deleted by subject filter")
        return NodeResult(version, None, {
            "points": len(ids_now), "text_rows_read": sync.rows_read, "synced": "every bucket" if full else "changed buckets",
            "points_added": sync.added, "points_removed": sync.removed, "points_deleted_by_subject_filter": deleted,
            "store": store.describe(), "content_hash": version,
        }, (CheckOutcome("no_tombstoned_points", remaining == 0 and left == 0,
                         {"tombstoned_points_found": remaining, "tombstones_checked": len(tombstoned)}),))

    def object_name(self, node: Node, partition: str | None) -> None:
        return None  # in Qdrant, not the lake

    def read_rows(self, env: Env, node: Node, partition: str, **_kw) -> None:
        return None

    def stored_version(self, env: Env, node: Node, partition: str | None) -> str | None:
        return hash_ids(env.vectors.point_ids(shard_from_partition(partition)))

    def prove(self, env: Env, node: Node, subject_key: str, partition: str | None, cache: dict) -> list[Finding]:
        shard = shard_from_partition(partition)
        # one count and one scan of the shard's files for every subject of the batch here
        points_of_all, stored = read_together(cache, ("vector_keys", partition), partition, subject_key, lambda together: (
            env.vectors.count_subjects(shard, list(together)), env.vectors.stored_keys(shard, together)))
        points = 0 if points_of_all == 0 else env.vectors.count_subjects(shard, [subject_key])
        out = [Finding("no vector points of the subject (count by subject_key filter)", f"{node.name}[{partition}]",
                       points == 0, f"{points} points")]
        if stored is not None:  # a server's disk cannot be scanned from here: the count is what it has
            out.append(Finding("no bytes of the subject left in the vector store's files (a scan for its key)",
                               f"{node.name}[{partition}]", subject_key not in stored,
                               "deleted, not yet gone: a segment file still holds the subject's payload (the compaction is retried)"
                               if subject_key in stored else "0 files hold it"))
        return out

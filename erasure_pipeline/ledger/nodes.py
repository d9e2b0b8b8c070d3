"""What each node partition holds and was built from, whose rows it holds (provenance), and what left it.

Every node computation ends with one ``NodeRecords.record`` transaction, after its objects are
written: its data version, code version and the recorded versions of its inputs (what staleness
compares), and, as the node has them, its provenance, row statistics, consent changes and rows that
left it for retention. A crash before it leaves the old record, so the next run redoes the node.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from erasure_pipeline.core.signing import canonical_json
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import Database, as_utc, chunks, held_keys, insert_many, page_cache, utcnow

P = t.provenance.c
SKELETON_CACHE_MIB = 64
"""The page cache of the claim's transaction of skeletons (``keep_skeletons``, ``db.page_cache``): ~24 MiB of table and
index at 200 000 subjects, ~120 MiB at 1 000 000 (the transaction is then bound by the cache again, not wrong)."""


class NodeRecords:
    def __init__(self, db: Database, audit: AuditLog):
        self.db, self.audit = db, audit

    def record(
        self, asset: str, partition: str | None, *, data_version: str, code_version: str, inputs: Mapping[str, str], run_id: str,
        provenance: Mapping[str, int] | None = None, provenance_scope: Iterable[str] | None = None,
        skeletons: Mapping[str, str] | None = None, stats: tuple[int, dt.datetime | None] | None = None,
        consent: tuple[int, Mapping[str, bool]] | None = None, retention: Mapping[str, Any] | None = None,
        policy_values: Mapping[str, Any] | None = None,
    ) -> None:
        """Everything the ledger learns from one node partition's computation, in one transaction.

        ``provenance`` is what the partition holds per subject; with ``provenance_scope`` it covers only
        those subjects (the buckets a computation rewrote) and the others' rows are left as they are.
        Either way only rows that differ are written, so an erasure changes its subjects' rows only.
        ``skeletons``: subject key -> the keyed skeleton of their id, kept once per subject holding data (look-alikes).
        ``policy_values``: the policy fields the code version stands for, kept once per code version."""
        part = partition or "all"
        now = utcnow()
        with self.db.tx() as conn:
            conn.execute(t.node_versions.delete().where(t.node_versions.c.asset == asset, t.node_versions.c.partition == part))
            conn.execute(t.node_versions.insert().values(asset=asset, partition=part, data_version=data_version, code_version=code_version,
                                                         inputs=canonical_json(dict(inputs)), run_id=run_id, recorded_at=now))
            if policy_values is not None and conn.execute(sa.select(t.policy_snapshots.c.code_version).where(
                    t.policy_snapshots.c.code_version == code_version)).first() is None:
                conn.execute(t.policy_snapshots.insert().values(code_version=code_version, fields=canonical_json(dict(policy_values)),
                                                                recorded_at=now))
            if provenance is not None:
                _update_provenance(conn, asset, part, provenance, provenance_scope, skeletons)
            if stats is not None:
                conn.execute(t.partition_stats.delete().where(t.partition_stats.c.asset == asset, t.partition_stats.c.partition == part))
                conn.execute(t.partition_stats.insert().values(asset=asset, partition=part, rows=stats[0], oldest=stats[1], recorded_at=now))
            if consent is not None and consent[1]:
                self._consent(conn, consent, run_id, now)
            if retention:
                self.audit.append(conn, [("retention", None, {"asset": asset, "partition": part, "run_id": run_id, **retention})])

    def _consent(self, conn: Connection, consent: tuple[int, Mapping[str, bool]], run_id: str, now: dt.datetime) -> None:
        shard, changes = consent
        ordered = sorted(changes.items())
        conn.execute(t.consent_changes.insert(), [
            {"subject_key": key, "shard": shard, "consent": bool(c), "run_id": run_id, "at": now} for key, c in ordered])
        self.audit.append(conn, [("consent_granted" if c else "consent_withdrawn", None, {"subject_key": key, "shard": shard, "run_id": run_id})
                                 for key, c in ordered])

    def records(self, partition: str | None = ..., assets: Iterable[str] | None = None) -> dict[tuple[str, str], dict]:
        """(asset, partition) -> the node's record; ``partition`` limits to one (None: the merges' ``all``)."""
        q = sa.select(t.node_versions)
        if partition is not ...:
            q = q.where(t.node_versions.c.partition == (partition or "all"))
        if assets is not None:
            q = q.where(t.node_versions.c.asset.in_(list(assets)))
        with self.db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for r in rows:
            r["inputs"] = json.loads(r["inputs"])
        return {(r["asset"], r["partition"]): r for r in rows}

    def policy_snapshots(self, code_versions: Iterable[str]) -> dict[str, dict]:
        """Code version -> the policy values it was made under (those recorded since ledger version 5)."""
        wanted = sorted(set(code_versions))
        if not wanted:
            return {}
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(t.policy_snapshots).where(t.policy_snapshots.c.code_version.in_(wanted))).all()
        return {r.code_version: json.loads(r.fields) for r in rows}

    def record_provenance(self, asset: str, partition: str, rows_by_key: Mapping[str, int]) -> None:
        """Make what the ledger knows of one asset partition's subjects what it now holds."""
        with self.db.tx() as conn:
            _update_provenance(conn, asset, partition, rows_by_key, None)

    def tombstoned_in(self, asset: str, partition: str, among: Iterable[str] | None = None) -> set[str]:
        """Tombstoned subjects the ledger still records in an asset partition: what an erasure there must remove.
        ``among``: of these subjects only (an erasure run's: looked up by key, not the partition's rows scanned)."""
        held = sa.select(t.erasure_requests.c.subject_key).where(t.erasure_requests.c.status == "on_hold")
        q = (sa.select(P.subject_key).join(t.tombstones, t.tombstones.c.subject_key == P.subject_key)
             .where(P.asset == asset, P.partition == partition, P.subject_key.not_in(held)))
        with self.db.connect() as conn:
            if among is None:
                return {r.subject_key for r in conn.execute(q)}
            return {r.subject_key for chunk in chunks(among) for r in conn.execute(q.where(P.subject_key.in_(chunk)))}

    def keep_skeletons(self, skeletons: Mapping[str, str]) -> int:
        """An ingest's claim: the skeletons of the subjects it staged (subject key -> keyed skeleton), stored before any
        raw step records their rows, in one transaction in key order (stored by each raw node's record, they landed on
        pages all over the table and its index in 16 transactions: ``raw_subjects`` 19.3 -> 10.6 s, the claim +2.6 s,
        in a 200 000-subject build). Never for a
        tombstoned subject (read in the same transaction; an erasure's certificate forgets the skeleton of a subject
        who holds no data, ``forget_skeletons_of_the_gone``). A staged subject whose rows no raw step keeps holds a
        skeleton no look-alike search returns (``look_alikes`` asks for data) until they hold data, or are erased.
        Returns how many were new."""
        if not skeletons:
            return 0
        with self.db.tx() as conn, page_cache(conn, SKELETON_CACHE_MIB):
            erased = held_keys(conn, t.tombstones, list(skeletons))
            return _add_skeletons(conn, {k: v for k, v in skeletons.items() if k not in erased})

    def look_alikes(self, skeleton_key: str, subject_key: str) -> set[str]:
        """Subjects other than ``subject_key`` whose id has this skeleton and who hold data somewhere."""
        S = t.subject_skeletons.c
        with self.db.connect() as conn:
            alike = list(conn.execute(sa.select(S.subject_key).where(S.skeleton_key == skeleton_key, S.subject_key != subject_key)).scalars())
            return {r.subject_key for r in _held(conn, alike)}

    def provenance_for(self, subject_keys: Iterable[str]) -> list[dict]:
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in _held(conn, subject_keys)]

    def forget_provenance(self, subject_keys: Iterable[str]) -> None:
        with self.db.tx() as conn:
            for chunk in chunks(subject_keys):
                conn.execute(t.provenance.delete().where(P.partition.in_(_partitions()), P.subject_key.in_(chunk)))
                conn.execute(t.subject_skeletons.delete().where(t.subject_skeletons.c.subject_key.in_(chunk)))

    def consent_changes(self, subject_key: str | None = None) -> list[dict]:
        q = sa.select(t.consent_changes).order_by(t.consent_changes.c.id)
        if subject_key:
            q = q.where(t.consent_changes.c.subject_key == subject_key)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def partition_stats(self) -> list[dict]:
        with self.db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(t.partition_stats))]
        for r in rows:
            r["oldest"] = as_utc(r["oldest"])
        return rows


def _partitions() -> sa.Select:
    """Every partition that holds provenance, as a subquery: the key's first column walked one distinct value at a
    time (a recursive CTE, an index seek each: 17 for 16 shards, ~0.5 ms), so a subject's rows are found through the
    key without an index by subject."""
    walk = sa.select(sa.func.min(P.partition).label("p")).cte("held_partitions", recursive=True)
    walk = walk.union_all(sa.select(sa.select(sa.func.min(P.partition)).where(P.partition > walk.c.p).scalar_subquery())
                          .where(walk.c.p.is_not(None)))
    return sa.select(walk.c.p).where(walk.c.p.is_not(None))


def _held(conn: Connection, subject_keys: Iterable[str]) -> list:
    """The provenance rows of ``subject_keys``, through each partition's stretch of the key."""
    return [r for chunk in chunks(subject_keys)
            for r in conn.execute(sa.select(t.provenance).where(P.partition.in_(_partitions()), P.subject_key.in_(chunk)))]


def _update_provenance(conn: Connection, asset: str, partition: str, rows_by_key: Mapping[str, int],
                       scope: Iterable[str] | None, skeletons: Mapping[str, str] | None = None) -> None:
    """Make the partition's provenance (of the subjects in ``scope``; None: all) equal ``rows_by_key``,
    writing only the rows that differ. ``skeletons``: subject key -> the keyed skeleton of their id, kept once per
    subject who holds rows; a subject who holds no row anywhere once it is written loses theirs."""
    where = (P.partition == partition, P.asset == asset)
    if scope is None:
        existing = {r.subject_key: r.rows for r in conn.execute(sa.select(P.subject_key, P.rows).where(*where))}
    else:
        existing = {}
        for chunk in chunks(scope):
            existing.update({r.subject_key: r.rows for r in conn.execute(sa.select(P.subject_key, P.rows).where(*where, P.subject_key.in_(chunk)))})
    wanted = {k: int(n) for k, n in rows_by_key.items() if n}
    gone = [k for k in existing if k not in wanted]
    for chunk in chunks(gone):
        conn.execute(t.provenance.delete().where(*where, P.subject_key.in_(chunk)))
    changed = [{"k": k, "n": n} for k, n in wanted.items() if k in existing and existing[k] != n]
    if changed:
        conn.execute(t.provenance.update().where(*where, P.subject_key == sa.bindparam("k")).values(rows=sa.bindparam("n")), changed)
    added = sorted(k for k in wanted if k not in existing)  # in key order: filled in sequence
    batch = [{"partition": partition, "asset": asset, "subject_key": k, "rows": wanted[k]} for k in added]
    for chunk in chunks(batch, 5000):
        insert_many(conn, t.provenance, chunk)
    if skeletons:  # each subject's first; one who has none yet (a ledger older than look-alikes) gets it now
        _add_skeletons(conn, {k: v for k, v in skeletons.items() if k in wanted})
    if gone:
        forget_skeletons_of_the_gone(conn, gone)


def _add_skeletons(conn: Connection, skeletons: Mapping[str, str]) -> int:
    """Store the skeletons of the subjects who have none yet, in key order; returns how many. Those held already (the
    ingest's claim stored them, ``keep_skeletons``, or an earlier raw node's record) are looked up, not inserted
    again: 200 000 lookups in one raw node's 16 records cost 1.0-1.3 s on a slow 2-core VM (RESULTS.md, "Skeletons
    stored by the claim")."""
    ordered = sorted(k for k, v in skeletons.items() if v)  # a subject without an id has no skeleton
    held = held_keys(conn, t.subject_skeletons, ordered)
    added = 0
    for chunk in chunks([{"subject_key": k, "skeleton_key": skeletons[k]} for k in ordered if k not in held], 5000):
        added += insert_many(conn, t.subject_skeletons, chunk, or_ignore=True) or 0
    return added


def forget_skeletons_of_the_gone(conn: Connection, keys: list[str]) -> None:
    """Subjects of ``keys`` who hold no provenance row any more lose their skeleton (it was theirs while they held data):
    at each record that removes a subject's rows, and at each erasure's certificate (``Certificates.complete``: a
    subject staged by an ingest whose rows no raw step kept, the erasure found none to remove)."""
    S = t.subject_skeletons.c
    for chunk in chunks(keys):
        still = {r.subject_key for r in _held(conn, chunk)}
        if len(still) < len(chunk):
            conn.execute(t.subject_skeletons.delete().where(S.subject_key.in_([k for k in chunk if k not in still])))

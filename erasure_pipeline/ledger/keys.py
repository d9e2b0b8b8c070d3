"""The key store: each subject's data key, wrapped, in the ledger's database (no Dagster import).

Three layers, so that destroying one subject's key and rotating the key-encryption key (KEK) stay cheap:

    KEK version (KMS)  wraps  a root key (one per version, ``kek_versions``)
    root key           wraps  256 group keys (by the first two hex digits of subject_key, ``key_groups``)
    group key          wraps  each subject's 64-byte data key (``data_keys``)

Erasure (``KeyRing.destroy``), in this order:

1. one transaction deletes the subjects' data keys, lists them in ``key_erasures`` (a key is never made for
   them again), and rekeys their groups: a new group key, the group's other data keys rewrapped, so a
   copy of the deleted row anywhere (a free page, a WAL, a replica) has no live key that opens it;
2. the KEK rotates: a new KMS version and root key, the 256 group keys rewrapped under it, the old
   version destroyed in the KMS. A backup of the key store taken before now holds only roots wrapped
   under destroyed versions: restored beside old data, it opens nothing, the erased subjects included;
   the live store still opens every kept subject's old data (their data keys did not change);
3. the engine is made to forget the deleted bytes: SQLite zeroes freed pages (``secure_delete``, set on
   every connection) and its WAL is checkpointed and truncated; Postgres VACUUMs the key tables.

Every step is idempotent and a crash between them is finished by the next call (``key_erasures.rotated_to``
stays null until its rotation is done; retired versions are destroyed by the next call that finds them).
On Postgres, creating data keys takes a shared advisory lock and rekeying or rotating an exclusive one,
so a data key is never wrapped under a group key that a concurrent erasure is replacing.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from erasure_pipeline.core.crypto import forget_ciphers, new_data_keys
from erasure_pipeline.core.errors import DamagedObject
from erasure_pipeline.ledger import schema as t
from erasure_pipeline.ledger.audit import AuditLog
from erasure_pipeline.ledger.db import Database, chunks, insert_many, rows_by_subject, update_many, utcnow

GROUPS = 256
KEY_CHUNK = 5000  # keys per IN (...) list: under SQLite's 32 766 bound parameters (3.32+), few round trips
KEYS_LOCK = 0x4B455953  # "KEYS"
DEK_CACHE_SECONDS = 120.0
"""How long a process keeps a data key it read (a step's partitions read the same keys). The newest KEK version is
read at most every ``EPOCH_CHECK_SECONDS``: an erasure anywhere rotates it, then this process forgets every key
it kept (a key destroyed elsewhere is not used from memory a second later; its own ``destroy`` forgets at once)."""
DEK_CACHE_MAX = 2_000_000
EPOCH_CHECK_SECONDS = 1.0
"""The newest KEK version is read at most this often: a key destroyed elsewhere is dropped from memory within it."""


def group_of(subject_key: str) -> int:
    return int(subject_key[:2], 16)


def _erased_in(conn: Connection, subject_keys: list[str]) -> set[str]:
    """Which of these subjects' keys were destroyed (``key_erasures``)."""
    return {r.subject_key for r in rows_by_subject(conn, t.key_erasures, subject_keys, KEY_CHUNK, t.key_erasures.c.subject_key)}


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    """A key wrapped: ``nonce || ciphertext || tag`` (a random nonce, or one of a batch drawn at once)."""
    nonce = nonce or secrets.token_bytes(12)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, wrapped: bytes, aad: bytes, what: str) -> bytes:
    try:
        return aead.decrypt(wrapped[:12], wrapped[12:], aad)
    except InvalidTag:
        raise DamagedObject(f"key store: {what} does not unwrap (damaged, or wrapped by another key store)") from None


def _group_aad(grp: int, gen: int) -> bytes:
    return f"group:{grp}:{gen}".encode()


def _dek_aad(subject_key: str) -> bytes:
    return b"dek:" + subject_key.encode()


@dataclass(frozen=True)
class Destroyed:
    """One subject's key erasure, as the certificate states it."""

    subject_key: str
    destroyed_at: object
    had_key: bool
    rotated_to: int | None
    rotated_at: object


class KeyRing:
    """Data keys by subject key: read, created, destroyed; the KEK rotated. ``kms``: ``stores.kms.Kms``."""

    def __init__(self, db: Database, audit: AuditLog, kms):
        self.db, self.audit, self.kms = db, audit, kms
        self._roots: dict[int, bytes] = {}
        self._groups: dict[tuple[int, int], bytes] = {}
        self._deks: dict[str, tuple[bytes, float]] = {}
        self._epoch: int | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.kms.describe()

    # ------------------------------------------------------------------ locks
    def _shared(self, conn: Connection) -> None:
        if self.db.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": KEYS_LOCK})

    def _exclusive(self, conn: Connection) -> None:
        if self.db.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": KEYS_LOCK})

    # ------------------------------------------------------------------ unwrapping
    def _root(self, conn: Connection, version: int) -> bytes:
        if version not in self._roots:
            row = conn.execute(sa.select(t.kek_versions).where(t.kek_versions.c.version == version)).first()
            if row is None or row.wrapped_root is None:
                raise DamagedObject(f"key store: key-encryption key version {version} is destroyed or missing")
            self._roots[version] = self.kms.unwrap(row.kms_ref, row.wrapped_root)
        return self._roots[version]

    def _group_key(self, conn: Connection, grp: int, gen: int, kek_version: int, wrapped: bytes) -> bytes:
        if (grp, gen) not in self._groups:
            self._groups[(grp, gen)] = _open(AESGCM(self._root(conn, kek_version)), wrapped, _group_aad(grp, gen), f"group key {grp}")
        return self._groups[(grp, gen)]

    def _groups_now(self, conn: Connection, groups: Iterable[int]) -> dict[int, tuple[int, bytes]]:
        """Group -> (generation, key), as stored now."""
        out = {}
        for part in chunks(sorted(set(groups))):
            for r in conn.execute(sa.select(t.key_groups).where(t.key_groups.c.grp.in_(part))):
                out[r.grp] = (r.gen, self._group_key(conn, r.grp, r.gen, r.kek_version, r.wrapped))
        return out

    def _active(self, conn: Connection):
        return conn.execute(sa.select(t.kek_versions).where(t.kek_versions.c.state == "active")).first()

    # ------------------------------------------------------------------ data keys
    def data_keys(self, subject_keys: Collection[str], *, create: bool) -> dict[str, bytes]:
        """The data key of each subject that has one; ``create``: a new one for each that never had one
        (never for a subject whose key was destroyed)."""
        wanted = set(subject_keys)
        if not wanted:
            return {}
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= EPOCH_CHECK_SECONDS:
                with self.db.connect() as conn:
                    epoch = conn.execute(sa.select(sa.func.max(t.kek_versions.c.version))).scalar()
                # A rotation (every erasure makes one) since these keys were read: forget them. The store's first
                # version (None -> 1) is no rotation: nothing was destroyed before it, and forgetting there threw
                # away every cell a build's staging pass had just sealed (it makes the first version at its end).
                if epoch != self._epoch and not (self._epoch is None and epoch == 1):
                    self._deks.clear()
                    forget_ciphers()
                self._epoch = epoch
                self._checked = now
            found = {k: hit[0] for k in wanted if (hit := self._deks.get(k)) is not None and now - hit[1] < DEK_CACHE_SECONDS}
            rest = sorted(wanted - set(found))
            if rest:
                fresh = self._read(rest)
                missing = [k for k in rest if k not in fresh]
                if create and missing:
                    fresh.update(self.store(new_data_keys(missing)))
                self._remember(fresh, now)
                found.update(fresh)
            return found

    def remember(self, keys: dict[str, bytes]) -> None:
        """Keep these keys (stored: ``store`` returned them) in this process's cache, as if just read."""
        with self._lock:
            self._remember(keys, time.monotonic())

    def _remember(self, keys: dict[str, bytes], now: float) -> None:
        if len(self._deks) + len(keys) > DEK_CACHE_MAX:
            self._deks.clear()
        self._deks.update({k: (v, now) for k, v in keys.items()})

    def _read(self, wanted: list[str]) -> dict[str, bytes]:
        found = {}
        with self.db.connect() as conn:
            rows = [tuple(r) for r in rows_by_subject(conn, t.data_keys, wanted, KEY_CHUNK, t.data_keys.c.subject_key, t.data_keys.c.grp,
                                                t.data_keys.c.gen, t.data_keys.c.wrapped)]
            if not rows:
                return {}
            stale = {(grp, gen) for _k, grp, gen, _w in rows} - set(self._groups)
            if stale:
                self._groups_now(conn, {g for g, _ in stale})
        aeads: dict[tuple[int, int], AESGCM] = {}
        for subject_key, grp, gen, wrapped in rows:  # plain tuples: a Row's attributes cost more than the unwrap
            aead = aeads.get((grp, gen))
            if aead is None:
                key = self._groups.get((grp, gen))
                if key is None:  # rekeyed between the two reads: read again
                    return self._read(wanted)
                aead = aeads[(grp, gen)] = AESGCM(key)
            found[subject_key] = _open(aead, wrapped, _dek_aad(subject_key), "a data key")
        return found

    def store(self, made: dict[str, bytes]) -> dict[str, bytes]:
        """Store ``made`` (subject key -> new data key) in one transaction, never for a subject whose key was destroyed;
        returns each stored subject's key: ours, or the one another writer stored first (``INSERT OR IGNORE``)."""
        self._bootstrap()
        with self.db.tx() as conn:
            self._shared(conn)
            erased = _erased_in(conn, list(made))
            new = sorted(k for k in made if k not in erased)  # in key order: fewer pages of the key index touched
            groups = self._groups_now(conn, {group_of(k) for k in new})
            aeads = {g: (gen, AESGCM(key)) for g, (gen, key) in groups.items()}
            now, ours = utcnow(), set()
            for part in chunks(new, KEY_CHUNK):  # a chunk's rows at a time: a staging pass stores all its keys here
                nonces = secrets.token_bytes(12 * len(part))
                rows = []
                for i, k in enumerate(part):
                    grp = group_of(k)
                    gen, aead = aeads[grp]
                    rows.append({"subject_key": k, "grp": grp, "gen": gen, "created_at": now,
                                 "wrapped": _seal(aead, made[k], _dek_aad(k), nonces[i * 12:(i + 1) * 12])})
                n = insert_many(conn, t.data_keys, rows, or_ignore=True)
                # Another writer may have made some first (its row stays): ours only where ours is stored. Every row
                # inserted (the driver counted them): all ours, nothing to read back.
                stored = None if n is not None and n == len(rows) else {r.subject_key: r.wrapped for r in conn.execute(
                    sa.select(t.data_keys.c.subject_key, t.data_keys.c.wrapped).where(t.data_keys.c.subject_key.in_(part)))}
                ours.update(r["subject_key"] for r in rows if stored is None or stored.get(r["subject_key"]) == r["wrapped"])
        raced = [k for k in new if k not in ours]
        return {**{k: made[k] for k in ours}, **(self._read(raced) if raced else {})}

    def erased(self, subject_keys: Collection[str]) -> set[str]:
        """Which of these subjects' keys were destroyed (``key_erasures``): never given a key again."""
        with self.db.connect() as conn:
            return _erased_in(conn, sorted(subject_keys))

    def has_key(self, subject_key: str) -> bool:
        with self.db.connect() as conn:
            return conn.execute(sa.select(t.data_keys.c.subject_key).where(t.data_keys.c.subject_key == subject_key)).first() is not None

    # ------------------------------------------------------------------ versions
    def _bootstrap(self) -> None:
        with self.db.connect() as conn:
            if self._active(conn) is not None:
                return
        ref = self.kms.create_version()
        root = secrets.token_bytes(32)
        wrapped = self.kms.wrap(ref, root)
        with self.db.tx() as conn:
            self._exclusive(conn)
            if self._active(conn) is not None:  # another process made the store meanwhile
                raced = True
            else:
                raced = False
                version = (conn.execute(sa.select(sa.func.max(t.kek_versions.c.version))).scalar() or 0) + 1
                conn.execute(t.kek_versions.insert().values(version=version, kms_ref=ref, wrapped_root=wrapped, state="active",
                                                            created_at=utcnow()))
                conn.execute(t.key_groups.insert(), [{"grp": g, "gen": 1, "kek_version": version,
                                                      "wrapped": _seal(AESGCM(root), secrets.token_bytes(32), _group_aad(g, 1))} for g in range(GROUPS)])
                self.audit.append(conn, [("kek_created", None, {"version": version, "kms": self.kms.describe()})])
                self._roots[version] = root
        if raced:
            self.kms.destroy(ref)

    def rotate(self) -> int:
        """A new KEK version and root key; the group keys rewrapped under it; every older version destroyed."""
        self._bootstrap()
        with self.db.connect() as conn:
            before = self._active(conn).version
        ref = self.kms.create_version()
        root = secrets.token_bytes(32)
        wrapped = self.kms.wrap(ref, root)
        with self.db.tx() as conn:
            self._exclusive(conn)
            active = self._active(conn)
            version = (conn.execute(sa.select(sa.func.max(t.kek_versions.c.version))).scalar() or 0) + 1
            rows = list(conn.execute(sa.select(t.key_groups)))
            wrap = AESGCM(root)
            rewrapped = [{"g": r.grp, "w": _seal(wrap, self._group_key(conn, r.grp, r.gen, r.kek_version, r.wrapped), _group_aad(r.grp, r.gen))}
                         for r in rows]
            conn.execute(t.key_groups.update().where(t.key_groups.c.grp == sa.bindparam("g"))
                         .values(kek_version=version, wrapped=sa.bindparam("w")), rewrapped)
            now = utcnow()
            conn.execute(t.kek_versions.update().where(t.kek_versions.c.state.in_(("active", "pending")))
                         .values(state="retired", retired_at=now))
            conn.execute(t.kek_versions.insert().values(version=version, kms_ref=ref, wrapped_root=wrapped, state="active", created_at=now))
            conn.execute(t.key_erasures.update().where(t.key_erasures.c.rotated_to.is_(None)).values(rotated_to=version, rotated_at=now))
            self.audit.append(conn, [("kek_rotated", None, {"version": version, "retired": active.version if active else before})])
            self._roots[version] = root
        self.finish()
        return version

    def finish(self) -> list[int]:
        """Destroy, in the KMS, every retired version (a crash after a rotation leaves some); returns them."""
        with self.db.connect() as conn:
            retired = list(conn.execute(sa.select(t.kek_versions).where(t.kek_versions.c.state == "retired")))
        for r in retired:
            self.kms.destroy(r.kms_ref)
            with self.db.tx() as conn:
                conn.execute(t.kek_versions.update().where(t.kek_versions.c.version == r.version).values(
                    state="destroyed", destroyed_at=utcnow(), wrapped_root=None))
                self.audit.append(conn, [("kek_destroyed", None, {"version": r.version})])
            self._roots.pop(r.version, None)
        if retired:
            self._forget_deleted()
        return [r.version for r in retired]

    # ------------------------------------------------------------------ erasure
    def destroy(self, subject_keys: Iterable[str]) -> dict[str, Destroyed]:
        """Destroy the subjects' data keys, then rotate the KEK (see the module's docstring). Idempotent."""
        keys = sorted(set(subject_keys))
        with self._lock:
            for k in keys:
                self._deks.pop(k, None)
            forget_ciphers(keys)
            if keys:
                self._destroy_keys(keys)
            with self.db.connect() as conn:
                pending = conn.execute(sa.select(sa.func.count()).select_from(t.key_erasures).where(t.key_erasures.c.rotated_to.is_(None))).scalar()
                store = self._active(conn) is not None
            if pending and store:
                if self.rotate() - 1 == self._epoch:  # its own rotation: this process forgot above, not again
                    self._epoch += 1
            elif pending:  # no key store yet: nothing was ever wrapped, there is nothing to rotate away
                with self.db.tx() as conn:
                    conn.execute(t.key_erasures.update().where(t.key_erasures.c.rotated_to.is_(None)).values(rotated_to=0, rotated_at=utcnow()))
            else:
                self.finish()
        return self.erasures(keys)

    def _destroy_keys(self, keys: list[str]) -> None:
        with self.db.tx() as conn:
            self._exclusive(conn)
            held = {r.subject_key: r for part in chunks(keys) for r in conn.execute(
                sa.select(t.data_keys.c.subject_key, t.data_keys.c.grp).where(t.data_keys.c.subject_key.in_(part)))}
            known = _erased_in(conn, keys)
            now = utcnow()
            for part in chunks(list(held)):
                conn.execute(t.data_keys.delete().where(t.data_keys.c.subject_key.in_(part)))
            fresh = [k for k in keys if k not in known]
            if fresh:
                conn.execute(t.key_erasures.insert(), [{"subject_key": k, "destroyed_at": now, "had_key": k in held} for k in fresh])
            active = self._active(conn)
            if active is not None:
                root = self._root(conn, active.version)
                for grp in sorted({r.grp for r in held.values()}):
                    self._rekey(conn, grp, root, active.version)
            if fresh:
                self.audit.append(conn, [("data_key_destroyed", None, {"subject_key": k, "had_key": k in held}) for k in fresh])

    def _rekey(self, conn: Connection, grp: int, root: bytes, version: int) -> None:
        """A new key for one group; its data keys rewrapped under it."""
        row = conn.execute(sa.select(t.key_groups).where(t.key_groups.c.grp == grp)).first()
        old = self._group_key(conn, grp, row.gen, row.kek_version, row.wrapped)
        new, gen = secrets.token_bytes(32), row.gen + 1
        members = conn.execute(sa.select(t.data_keys.c.subject_key, t.data_keys.c.wrapped).where(t.data_keys.c.grp == grp)).all()
        old_aead, new_aead = AESGCM(old), AESGCM(new)
        update_many(conn, t.data_keys, "subject_key", [
            {"subject_key": k, "gen": gen, "wrapped": _seal(new_aead, _open(old_aead, w, _dek_aad(k), "a data key"), _dek_aad(k))}
            for k, w in members])
        conn.execute(t.key_groups.update().where(t.key_groups.c.grp == grp).values(
            gen=gen, kek_version=version, wrapped=_seal(AESGCM(root), new, _group_aad(grp, gen))))
        self._groups.pop((grp, row.gen), None)

    def _forget_deleted(self) -> None:
        """Make the database engine let go of deleted rows' bytes (see the module's docstring)."""
        if self.db.dialect == "sqlite":  # outside any transaction (a checkpoint cannot run inside one)
            self.db.checkpoint(truncate=True)
        elif self.db.dialect == "postgresql":
            with self.db._base_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                prep = conn.dialect.identifier_preparer  # identifiers cannot be bound: quoted by the dialect
                for table in (t.data_keys, t.key_groups, t.kek_versions):
                    target = (prep.quote_schema(self.db.schema) + "." if self.db.schema else "") + prep.quote(table.name)
                    conn.exec_driver_sql("VACUUM " + target)

    def erasures(self, subject_keys: Iterable[str]) -> dict[str, Destroyed]:
        keys = sorted(set(subject_keys))
        with self.db.connect() as conn:
            rows = [r for part in chunks(keys) for r in conn.execute(sa.select(t.key_erasures).where(t.key_erasures.c.subject_key.in_(part)))]
        return {r.subject_key: Destroyed(r.subject_key, r.destroyed_at, bool(r.had_key), r.rotated_to, r.rotated_at) for r in rows}

    # ------------------------------------------------------------------ for a person
    def status(self) -> dict:
        with self.db.connect() as conn:
            versions = [{"version": r.version, "state": r.state, "kms_ref": r.kms_ref, "created_at": r.created_at,
                         "destroyed_at": r.destroyed_at} for r in conn.execute(sa.select(t.kek_versions).order_by(t.kek_versions.c.version))]
            count = conn.execute(sa.select(sa.func.count()).select_from(t.data_keys)).scalar()
            erased = conn.execute(sa.select(sa.func.count()).select_from(t.key_erasures)).scalar()
            pending = conn.execute(sa.select(sa.func.count()).select_from(t.key_erasures).where(t.key_erasures.c.rotated_to.is_(None))).scalar()
        return {"kms": self.kms.describe(), "versions": versions, "data_keys": int(count), "keys_destroyed": int(erased),
                "rotations_pending": int(pending)}

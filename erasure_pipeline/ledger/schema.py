"""Ledger tables (SQLAlchemy Core) and the project's own migrations.

Every identity column holds a keyed hash (``subject_key``), never a raw subject id. On
Postgres the tables live in their own schema (``erasure_ledger`` by default) through
SQLAlchemy's ``schema_translate_map``; on SQLite they live in the file's only schema.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_version = sa.Table(
    "ledger_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

erasure_requests = sa.Table(
    "erasure_requests",
    metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("request_id", sa.String(40), nullable=False, unique=True),
    sa.Column("subject_key", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False, server_default="erasure"),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("extended", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("extension_reason", sa.Text),
    sa.Column("hold_reason", sa.Text),
    sa.Column("batch_id", sa.String(40), index=True),
    sa.Column("run_id", sa.String(64)),  # the run that claimed it: claims are made by runs, never by ticks
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    # The keyed skeleton of the id as filed (identity.skeleton): finds look-alike ids that hold data.
    sa.Column("skeleton_key", sa.String(64)),
    # Why the last run could not proceed, when the cause is outside the request (a malformed landing file, an
    # outage): such a failure does not use up an attempt; the request is retried until the cause is gone.
    sa.Column("blocked_by", sa.Text),
    # An operator's decision on a request that waited for review (look-alike ids hold data).
    sa.Column("review", sa.Text),
    # What the subject's data was found in when a run first planned the request (canonical JSON of asset ->
    # partition -> rows): a retry after the data was already rewritten still certifies what was erased.
    sa.Column("footprint", sa.Text),
)

# At most one live (not completed, not revoked) request per subject, enforced by the database itself so
# two processes filing for the same subject at once cannot both succeed.
LIVE_SUBJECT_INDEX = sa.Index(
    "uq_erasure_requests_live_subject",
    erasure_requests.c.subject_key,
    unique=True,
    postgresql_where=erasure_requests.c.status.not_in(["completed", "revoked"]),
    sqlite_where=erasure_requests.c.status.not_in(["completed", "revoked"]),
)

tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("subject_key", sa.String(64), primary_key=True),
    sa.Column("shard", sa.Integer, nullable=False, index=True),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_id", sa.String(40), nullable=False),
    # The identity rule the key was made under (identity.rule_name): ingest matches ids under it too.
    sa.Column("rule", sa.String(128), nullable=False, server_default=""),
)

provenance = sa.Table(
    "provenance",
    metadata,
    sa.Column("subject_key", sa.String(64), nullable=False),
    sa.Column("asset", sa.String(64), nullable=False),
    sa.Column("partition", sa.String(32), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    # Partition first: a node records one partition at a time, so its rows land in one stretch of the key's B-tree
    # (a subject's rows are found through the few partitions, ``nodes._partitions``). Keyed by subject first, with an
    # index of skeletons beside it, each record touched pages all over both (a 200 000-subject build's provenance
    # 18.2 -> 4.1 s on SQLite, benchmarks/RESULTS.md). The partition's version and the run that wrote it are the
    # node's record (``node_versions``), once per partition: a subject's row carries its count alone (since 12; the
    # copies of both on every row were never read and were half of what a build wrote here). Why not asset before
    # subject: benchmarks/RESULTS.md, "The ledger's provenance rows without their copies". No rowid on SQLite.
    sa.PrimaryKeyConstraint("partition", "subject_key", "asset", name="pk_provenance"),
    sqlite_with_rowid=False,
)

subject_skeletons = sa.Table(
    "subject_skeletons",
    metadata,
    sa.Column("subject_key", sa.String(64), primary_key=True),
    # The keyed skeleton of the subject's id (identity.skeleton): who looks alike. Stored by the claim that stages the
    # subject (or a raw record), kept while the subject holds data.
    sa.Column("skeleton_key", sa.String(64), nullable=False, index=True),
    sqlite_with_rowid=False,
)

batches = sa.Table(
    "erasure_batches",
    metadata,
    sa.Column("batch_id", sa.String(40), primary_key=True),
    sa.Column("shard", sa.Integer),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

erasure_actions = sa.Table(
    "erasure_actions",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("request_id", sa.String(40), nullable=False, index=True),
    sa.Column("asset", sa.String(64), nullable=False),
    sa.Column("partition", sa.String(32)),
    sa.Column("action", sa.String(24), nullable=False),
    sa.Column("data_present", sa.Boolean, nullable=False),
    sa.Column("before_hash", sa.String(64)),
    sa.Column("after_hash", sa.String(64)),
    sa.Column("detail", sa.Text),
    sa.Column("run_id", sa.String(64)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("request_id", sa.String(40), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("request_id", sa.String(40)),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128)),  # Ed25519 over row_hash, with a key that is not in this database
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("request_id", sa.String(40), nullable=False, index=True),
    sa.Column("recipient", sa.String(128), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
)

landing_files = sa.Table(
    "landing_files",
    metadata,
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("table_name", sa.String(32), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(40), nullable=False, index=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stamp", sa.String(128)),  # size and mtime (local) or ETag (S3) when last taken or rewritten
)

landing_batches = sa.Table(
    "landing_batches",
    metadata,
    sa.Column("batch_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("shards", sa.Text, nullable=False),
    sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="done"),
    sa.Column("run_id", sa.String(64)),
)

# Every run of the project's jobs, and which process executes it: a run whose process is gone is
# found by the next run or CLI command on the same host and marked failed (see ``Ledger.job_runs``).
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("batch_id", sa.String(40), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.String(24)),
)

shard_leases = sa.Table(
    "shard_leases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),  # a shard's pool name: one writer of the shard at a time
    sa.Column("owner", sa.String(255), nullable=False),  # run id and step key
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
)
"""Who writes each shard now (``ledger.leases``): taken inside the shard's Dagster pool, which alone admits two
holders now and then under contention (benchmarks/pool_contention.py)."""

consent_changes = sa.Table(
    "consent_changes",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("subject_key", sa.String(64), nullable=False, index=True),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("consent", sa.Boolean, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

partition_stats = sa.Table(
    "partition_stats",
    metadata,
    sa.Column("asset", sa.String(64), primary_key=True),
    sa.Column("partition", sa.String(32), primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("oldest", sa.DateTime(timezone=True)),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

# What each node partition holds now, and what it was built from: the record jobs compare to decide
# what is stale (a run that died between writing an object and recording it is redone, never
# skipped), and what ``verify`` compares stored objects with. Written with the node's provenance.
node_versions = sa.Table(
    "node_versions",
    metadata,
    sa.Column("asset", sa.String(64), primary_key=True),
    sa.Column("partition", sa.String(32), primary_key=True),
    sa.Column("data_version", sa.String(64), nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

policy_snapshots = sa.Table(
    "policy_snapshots",
    metadata,
    sa.Column("code_version", sa.String(64), primary_key=True),
    sa.Column("fields", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
"""The policy values a code version stands for (the fields one node reads): what a stale partition says changed."""

sealed_ids = sa.Table(
    "sealed_ids",
    metadata,
    sa.Column("request_id", sa.String(40), primary_key=True),
    sa.Column("recipient", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
"""The subject id as filed, sealed at intake to each recipient that knows the subject by it (a libsodium
sealed box to its public key: this database cannot open it). Deleted once the recipient confirms, its notice is
dead-lettered, or the request is revoked or needs no notice to it."""

notices = sa.Table(
    "notices",
    metadata,
    sa.Column("notice_id", sa.String(40), primary_key=True),  # the idempotency key every attempt carries
    sa.Column("request_id", sa.String(40), nullable=False, index=True),
    sa.Column("recipient", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # erasure (to a recipient) | drp_status (a DRP status callback)
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the exact bytes every attempt sends (sealed id destroyed when settled)
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),  # Ed25519 over the body, with the evidence key
    sa.Column("status", sa.String(12), nullable=False),  # pending | confirmed | dead
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("first_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("settled_at", sa.DateTime(timezone=True)),
    sa.Column("receipt", sa.Text),
    sa.Index("ix_notices_due", "status", "next_attempt_at"),
)

drp_tokens = sa.Table(
    "drp_tokens",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),  # the bearer token itself is never stored
    sa.Column("agent_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

drp_requests = sa.Table(
    "drp_requests",
    metadata,
    sa.Column("body_sha256", sa.String(64), primary_key=True),  # a replayed signed request is the same row
    sa.Column("request_id", sa.String(40), nullable=False, index=True),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("agent_request_id", sa.String(128)),
    sa.Column("status_callback", sa.Text),
    sa.Column("regime", sa.String(16)),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_status_sent", sa.String(64)),
)
"""Requests taken in over the Data Rights Protocol: which agent filed which request, and the status its
callback was last told. No identity claim is kept: the subject id goes through intake like the CLI's."""

kek_versions = sa.Table(
    "kek_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kms_ref", sa.String(256), nullable=False),
    sa.Column("wrapped_root", sa.LargeBinary),  # emptied once the version is destroyed
    sa.Column("state", sa.String(16), nullable=False),  # pending | active | retired | destroyed
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True)),
    sa.Column("destroyed_at", sa.DateTime(timezone=True)),
)
"""Key-encryption key versions (in the KMS) and the root key each wraps: the key store's top."""

key_groups = sa.Table(
    "key_groups",
    metadata,
    sa.Column("grp", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("gen", sa.Integer, nullable=False),
    sa.Column("kek_version", sa.Integer, nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
)
"""256 group keys (by the first two hex digits of subject_key), each wrapped by a version's root key:
rotating the KEK rewraps 256 rows, not one per subject; an erasure rekeys only its subjects' groups."""

data_keys = sa.Table(
    "data_keys",
    metadata,
    sa.Column("subject_key", sa.String(64), primary_key=True),
    sa.Column("grp", sa.Integer, nullable=False),
    sa.Column("gen", sa.Integer, nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_data_keys_grp", "grp"),
)
"""Each subject's data key, wrapped by its group's key of generation ``gen``. An erasure rekeys its subjects'
groups: the index finds a group's keys without reading every subject's (a scan was 14 ms warm per group at
200 000 subjects, and grew with them)."""

key_erasures = sa.Table(
    "key_erasures",
    metadata,
    sa.Column("subject_key", sa.String(64), primary_key=True),
    sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("had_key", sa.Boolean, nullable=False),
    sa.Column("rotated_to", sa.Integer),  # the KEK version made after the destruction (null: rotation still to do)
    sa.Column("rotated_at", sa.DateTime(timezone=True)),
)
"""Whose data key was destroyed, when, and the KEK rotation that made older key-store copies unusable.
A key is never created again for a subject listed here."""

# Versions: 1 is create_all. 2: landing_files, landing_batches, consent_changes, partition_stats and
# the live-request index (new tables; the index is created by ``Database.migrate``). 3: claims by runs:
# erasure_requests.run_id, landing_batches.status and .run_id, job_runs, node_versions, audit_log.signature.
# 4: look-alike ids and blocked requests: erasure_requests.skeleton_key, .blocked_by, .review;
# provenance.skeleton_key and its index (until 10). 5: policy_snapshots (a new table). 6: recipients and DRP intake:
# sealed_ids, notices, drp_tokens, drp_requests (new tables; the ``outbox`` table is no longer written);
# landing_files.stamp (a file re-delivered under a name already taken is ingested again). 7: the key store:
# kek_versions, key_groups, data_keys, key_erasures (new tables). 8: erasure_requests.footprint.
# 9: the index of data_keys by group. 10: provenance keyed by partition first, its skeletons moved to
# subject_skeletons (one per subject; ``Database.migrate`` rebuilds the table, ``db._rebuild_provenance``).
# 11: shard_leases (a new table). 12: provenance without its per-row content_hash, run_id and recorded_at (never
# read: the node's record holds them per partition; ``db._rebuild_provenance`` rebuilds the table again).
CURRENT_VERSION = 12
ADDED_COLUMNS = {3: [(erasure_requests, "run_id"), (landing_batches, "status"), (landing_batches, "run_id"),
                    (audit_log, "signature"), (tombstones, "rule")],
                 4: [(erasure_requests, "skeleton_key"), (erasure_requests, "blocked_by"), (erasure_requests, "review")],
                 6: [(landing_files, "stamp")],
                 8: [(erasure_requests, "footprint")]}
ADDED_INDEXES = {9: ["ix_data_keys_grp"]}
RECREATED_INDEXES = {6: [LIVE_SUBJECT_INDEX]}
"""Indexes whose definition changed (6: a revoked request is not live), dropped and created again."""

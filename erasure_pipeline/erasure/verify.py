"""Proof: re-check, against the stores as they are now, that a subject is gone.

Used inside the erasure run (before a certificate is issued) and by ``erasure-pipeline verify``
later. Which partitions hold subject rows, which nodes are models or merges: all from the graph
table. No Dagster import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from erasure_pipeline import contracts, identity
from erasure_pipeline.anonymise import cohorts as cm
from erasure_pipeline.ledger import Anchor
from erasure_pipeline.ml.shard_training import matches_retrain
from erasure_pipeline.nodes import PICKLED, Env, current_inputs, object_name, read_partition
from erasure_pipeline.signing import key_id, verify_document
from erasure_pipeline.storage import buckets as bk
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.storage import landing_index
from erasure_pipeline.storage.landing import landing_files, read_landing, staged_files
from erasure_pipeline.storage.vectors import hash_ids
from erasure_pipeline.tombstones import mentioned_keys

MERGE_INPUTS_CLAIM = "published merge was built from the current shard partitions"


@dataclass(frozen=True)
class Finding:
    claim: str
    target: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def verify_subject(subject_key: str, env: Env, cache: dict | None = None) -> list[Finding]:
    """Every claim an erasure certificate makes about one subject, checked now.

    Shard-level and merge-level claims (the model retrain, k-anonymity, what merges were built
    from) do not depend on the subject; pass one ``cache`` dict when verifying many subjects.
    """
    cache = {} if cache is None else cache
    graph, policy = env.graph, env.policy
    shard = identity.shard_of(subject_key, policy.shards)
    part = identity.partition_key(shard)
    out: list[Finding] = []
    held = env.ledger.live_request_for(subject_key)
    out.append(Finding("tombstone keeps the subject out of future ingests", "ledger.tombstones",
                       subject_key in env.ledger.tombstoned_keys(shard),
                       "on hold" if held and held["status"] == "on_hold" else ""))
    tables = [n for n in graph.subject_nodes if n.kind != "vector_index"]
    for node in tables:
        manifest = bk.read_manifest(env.lake, node.name, part) if node.kind == "raw" else None
        buckets = [manifest.bucket_of(subject_key, policy.lake.buckets)] if manifest is not None else None
        df = read_partition(env, node.name, part, buckets=buckets)
        present = int((df["subject_key"] == subject_key).sum()) if df is not None and "subject_key" in df else 0
        out.append(Finding("no rows of the subject", f"{node.name}[{part}]", present == 0, f"{present} rows"))
    out += _old_versions(env, subject_key, part, tables)
    rule = env.ledger.tombstone_rule(subject_key)
    rule = tuple(rule.split(",")) if rule else (() if rule == "" else env.keyer.rule)
    in_landing, named_in_landing = _landing_holding(env, subject_key, rule, cache)
    out.append(Finding("no rows of the subject in landing files", "landing", in_landing == 0, f"{in_landing} rows"))
    staged = sum(int((lk.table_from_bytes(env.lake.read_bytes(n), ["subject_key"])["subject_key"] == subject_key).sum())
                 for n in staged_files(env.lake, shard=shard))
    out.append(Finding("no rows of the subject in an ingest's staging area", "lake/_staging", staged == 0, f"{staged} rows"))
    mentions = named_in_landing + _lake_mentions(env, subject_key, rule, cache)
    out.append(Finding("no text column of the lake or landing holds the subject's id", "text columns", mentions == 0,
                       f"{mentions} mentions"))
    for node in graph.nodes:
        if node.kind == "vector_index":
            points = env.vectors.count_subjects(shard, [subject_key])
            out.append(Finding("no vector points of the subject (count by subject_key filter)", f"{node.name}[{part}]",
                               points == 0, f"{points} points"))
        elif node.kind == "shard_model":
            if (node.name, shard) not in cache:
                cache[(node.name, shard)] = _model_claim(env, node, shard, part)
            out.append(cache[(node.name, shard)])
        elif node.kind == "cohort_publish":
            if node.name not in cache:
                cache[node.name] = _cohort_claim(env, node)
            out.append(cache[node.name])
    if "merges" not in cache:
        cache["merges"] = merge_input_claims(env) + recorded_version_claims(env, None)
    if ("recorded", part) not in cache:
        cache[("recorded", part)] = recorded_version_claims(env, part)
    out += cache["merges"] + cache[("recorded", part)]
    prov = env.ledger.provenance_for([subject_key])
    out.append(Finding("provenance lists no data for the subject", "ledger.provenance", not prov, f"{len(prov)} rows"))
    return out


def _landing_holding(env: Env, subject_key: str, rule: tuple[str, ...], cache: dict) -> tuple[int, int]:
    """(rows of the subject, mentions of their id in texts) in landing: the files the landing index names
    for them, and every file no ingest has indexed, read now."""
    tables = contracts.contracts_for(env.policy)
    if "landing_batches" not in cache:
        cache["landing_batches"] = landing_index.batches(env.lake)
    batches = cache["landing_batches"]
    indexed = landing_index.indexed_files(env.lake, batches)
    holding = landing_index.files_holding(env.lake, [subject_key], env.policy.shards, env.policy.lake.buckets, batches)
    rows = named = 0
    keyer = env.keyer.under(rule)
    for f in landing_files(env.landing, tables):
        if f.name not in holding and f.name in indexed and rule == env.keyer.rule:
            continue
        df = read_landing(env.landing, f, env.keyer)
        rows += int((df["subject_key"] == subject_key).sum())
        named += mentioned_keys(df, f.contract.texts, keyer).get(subject_key, 0)
    return rows, named


def _lake_mentions(env: Env, subject_key: str, rule: tuple[str, ...], cache: dict) -> int:
    """Mentions of the subject's id in the text columns of the lake: the buckets whose manifest names
    them, read now (under an earlier identity rule, every text bucket)."""
    keyer = env.keyer.under(rule)
    tables = contracts.contracts_for(env.policy)
    count = 0
    for node in env.graph.raw_nodes:
        texts = tables[node.table].texts
        if not texts:
            continue
        for p in identity.partition_keys(env.policy.shards):
            manifest = bk.read_manifest(env.lake, node.name, p)
            if manifest is None:
                continue
            wanted = manifest.mentioning(subject_key) if rule == env.keyer.rule else None
            if wanted == []:
                continue
            df = bk.read_buckets(env.lake, node.name, p, wanted, manifest, columns=[*texts])
            count += mentioned_keys(df, texts, keyer).get(subject_key, 0)
    return count


def _old_versions(env: Env, subject_key: str, part: str, tables) -> list[Finding]:
    """A versioned bucket keeps overwritten objects: none may still hold the subject.

    Tables with a ``subject_key`` column are read version by version. Models and aggregates
    cannot be searched for one subject, so no version of them may predate the tombstone
    (the erasure run purges every older one).
    """
    out = []
    for node in tables:
        if node.kind == "raw":  # the subject's bucket in every layout the partition may have had
            counts = {env.policy.lake.buckets, *((m.of,) if (m := bk.read_manifest(env.lake, node.name, part)) and m.of else ())}
            names = [bk.object_name(node.name, part, b) for b in sorted({bk.bucket_of(subject_key, c) for c in counts})]
        else:
            names = [lk.table_name(node.name, part)]
        versions = [(name, v) for name in names for v in env.lake.noncurrent_versions(name) if not v.delete_marker]
        holding = 0
        for name, v in versions:
            old = lk.table_from_bytes(env.lake.read_version(name, v.version_id))
            holding += int("subject_key" in old and bool((old["subject_key"] == subject_key).any()))
        out.append(Finding("no old object version holds the subject's rows", f"{node.name}[{part}]", holding == 0,
                           f"{len(versions)} noncurrent versions, {holding} with the subject"))
    since = env.ledger.tombstoned_since(subject_key)
    derived = [object_name(n, part if n.partitioned else None) for n in env.graph.nodes
               if n.kind != "vector_index" and (not n.subject_rows or n.kind == "raw")]  # a raw node's: its manifest
    derived += [lk.model_name(n.name, "candidate") for n in env.graph.nodes if n.kind == "ensemble"]
    for name in derived:
        older = [v for v in env.lake.noncurrent_versions(name) if since is None or v.last_modified < since]
        out.append(Finding("no object version from before the erasure request", name, not older, f"{len(older)} older versions"))
    return out


def _model_claim(env: Env, node, shard: int, part: str) -> Finding:
    claim = "shard model equals an independent retrain without the subject"
    name = node.name
    rows = lk.read_table(env.lake, node.parents[0], part)
    blob = env.lake.read_bytes(lk.model_name(name, part))
    if rows is None or blob is None:
        return Finding(claim, f"{name}[{part}]", False, "not materialised")
    equal, diff, probes = matches_retrain(env.policy, node.model, lk.loads_model(blob)["model"], rows, shard)
    return Finding(claim, f"{name}[{part}]", equal, f"max |Δ| = {diff:.3g} over {probes} probe rows")


def _cohort_claim(env: Env, node) -> Finding:
    name = node.name
    published = lk.read_table(env.lake, name, "all")
    parts = [lk.read_table(env.lake, node.parents[0], p) for p in identity.partition_keys(env.policy.shards)]
    if published is None or any(p is None for p in parts):
        return Finding("published cohorts are k-anonymous", name, False, "not materialised")
    bad = cm.k_anonymity_violations(published, cm.merge_partials(parts), env.policy.k_min)
    return Finding("published cohorts are k-anonymous", name, not bad, f"{len(bad)} cells below k_min={env.policy.k_min}")


def recorded_inputs(env: Env, name: str) -> list[tuple[str, dict | None]]:
    """(object, the input hashes it recorded) for each stored object of a merge node."""
    node = env.graph.node(name)
    if node.kind == "cohort_publish":
        return [(object_name(node, None), lk.table_inputs(env.lake, name, "all"))]
    names = [object_name(node, None)] + ([lk.model_name(name, "candidate")] if node.kind == "ensemble" else [])
    out = []
    for obj in names:
        blob = env.lake.read_bytes(obj)
        if blob is not None or obj == names[-1]:
            out.append((obj, lk.loads_model(blob).get("inputs") if blob else None))
    return out


def merge_input_claims(env: Env) -> list[Finding]:
    """Each published merge records the content hash of every input it read; they must be the inputs
    stored now. A merge restored from before an erasure (or built while a shard changed) fails here."""
    out = []
    for node in env.graph.merge_nodes:
        current = current_inputs(env, node)
        for obj, recorded in recorded_inputs(env, node.name):
            if recorded is None:
                out.append(Finding(MERGE_INPUTS_CLAIM, obj, False, "not materialised, or written without its inputs"))
                continue
            stale = sorted(k for k in current if recorded.get(k) != current[k])
            out.append(Finding(MERGE_INPUTS_CLAIM, obj, not stale,
                               f"{len(current)} inputs match" if not stale else f"differs from: {', '.join(stale[:5])}"))
    return out


STORED_CLAIM = "stored partition is what its last materialisation recorded"


def stored_version(env: Env, node, partition: str | None) -> str | None:
    """The data version of what is stored now, computed as the node computes it (None: nothing stored)."""
    if node.kind == "vector_index":
        ids = env.vectors.point_ids(identity.shard_from_partition(partition))
        return hash_ids(ids)
    if node.kind == "raw":
        return bk.stored_version(env.lake, node.name, partition)
    if node.kind == "ensemble":
        blob = env.lake.read_bytes(lk.model_name(node.name, "candidate"))
    else:
        blob = env.lake.read_bytes(object_name(node, partition))
    if blob is None:
        return None
    return lk.model_fingerprint(lk.loads_model(blob)) if node.kind in PICKLED else lk.content_hash(blob)


def recorded_version_claims(env: Env, partition: str | None) -> list[Finding]:
    """Every node partition of one shard (or, with None, every merge) holds what the ledger recorded when
    it was last materialised: a corrupted object, or an old copy restored in its place, fails here."""
    nodes = [n for n in env.graph.nodes if n.partitioned == (partition is not None)]
    records = env.ledger.node_records(partition, [n.name for n in nodes])
    out = []
    for node in nodes:
        record = records.get((node.name, partition or "all"))
        stored = stored_version(env, node, partition)
        target = f"{node.name}[{partition}]" if partition else node.name
        if record is None:
            out.append(Finding(STORED_CLAIM, target, stored is None, "no record" + ("" if stored is None else ", yet an object is stored")))
        else:
            out.append(Finding(STORED_CLAIM, target, stored == record["data_version"],
                               "matches" if stored == record["data_version"] else
                               f"recorded {record['data_version'][:12]}, stored {(stored or 'nothing')[:12]}"))
    return out


def certificate_anchors(book) -> list[Anchor]:
    """The audit-log heads every stored certificate carries."""
    out = []
    for request_id, body in book.certificates():
        anchor = body.get("audit_anchor") or {}
        if anchor.get("seq"):
            out.append(Anchor(int(anchor["seq"]), anchor["row_hash"], f"the certificate of {request_id}"))
    return out


def audit_log_finding(env: Env, anchors: list[Anchor]) -> Finding:
    public = env.ledger.signer.public if env.ledger.signer else None
    report = env.ledger.check_audit_log(public, [*certificate_anchors(env.ledger), *anchors])
    detail = (f"{report.rows} rows, {report.signed} signatures, {report.anchors} anchors" if report.ok
              else f"row {report.first_bad_seq}: {report.problem}")
    return Finding("audit log is intact: chain, signatures and anchors", "ledger.audit_log", report.ok, detail)


def certificate_signature_finding(document: dict, public: Ed25519PublicKey | None, target: str) -> Finding:
    if public is None:
        return Finding("certificate is signed with the evidence key", target, False, "no public key to check it with")
    ok, why = verify_document(public, document)
    return Finding("certificate is signed with the evidence key", target, ok, f"key {key_id(public)}" if ok else why)


def verify_certificate_document(document: dict, public: Ed25519PublicKey) -> list[Finding]:
    """What a third party can check with a certificate file and the public key alone (no database)."""
    target = str(document.get("request_id", "certificate"))
    out = [certificate_signature_finding(document, public, target)]
    anchor = document.get("audit_anchor") or {}
    out.append(Finding("certificate anchors the audit log", target, bool(anchor.get("seq")),
                       f"row {anchor.get('seq')}, {str(anchor.get('row_hash', ''))[:16]}…" if anchor.get("seq") else "no anchor"))
    return out


def verify_certificate(request_id: str, env: Env, anchors: list[Anchor] = ()) -> list[Finding]:
    """A stored certificate: its signature and body hash, the audit log against every anchor known
    (``anchors``: e.g. the runs' Dagster metadata), and every claim about the subject now."""
    found = env.ledger.certificate(request_id)
    if found is None:
        return [Finding("a certificate exists", request_id, False, "no certificate")]
    body, digest = found
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    out = [Finding("certificate body matches its recorded sha256", request_id, hashlib.sha256(canonical.encode()).hexdigest() == digest)]
    out.append(certificate_signature_finding(body, env.ledger.signer.public if env.ledger.signer else None, request_id))
    out.append(audit_log_finding(env, list(anchors)))
    request = env.ledger.get_request(request_id)
    out.append(Finding("request is completed", request_id, request["status"] == "completed", request["status"]))
    if body.get("data_present") or body.get("exception") is None:
        out += verify_subject(request["subject_key"], env)
    return out

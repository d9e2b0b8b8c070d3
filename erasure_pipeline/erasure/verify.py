"""Proof: re-check, against the stores as they are now, that a subject is gone.

Used inside the erasure run (before a certificate is issued) and by
``erasure-pipeline verify`` later. No Dagster import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from erasure_pipeline import identity
from erasure_pipeline.anonymise import cohorts as cm
from erasure_pipeline.ledger import Ledger
from erasure_pipeline.ml.shard_training import matches_retrain
from erasure_pipeline.policy import Policy
from erasure_pipeline.storage import lake as lk
from erasure_pipeline.storage.lake import Lake
from erasure_pipeline.storage.landing import landing_files, read_landing
from erasure_pipeline.storage.vectors import VectorStore

RAW_ASSETS = ("raw_subjects", "raw_events", "raw_tickets")
MERGED_OBJECTS = (lk.table_name("anonymised_cohorts", "all"), lk.model_name("cohort_model"), lk.model_name("ensemble_model"),
                  lk.model_name("ensemble_model", "candidate"))


@dataclass(frozen=True)
class Finding:
    claim: str
    target: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Stores:
    policy: Policy
    lake: Lake
    landing: Lake
    vectors: VectorStore
    ledger: Ledger
    pepper: bytes


def verify_subject(subject_key: str, stores: Stores, cache: dict | None = None) -> list[Finding]:
    """Every claim an erasure certificate makes about one subject, checked now.

    Shard-level claims (the model retrain, k-anonymity) do not depend on the subject; pass one
    ``cache`` dict when verifying many subjects to check each shard once.
    """
    cache = {} if cache is None else cache
    policy = stores.policy
    shard = identity.shard_of(subject_key, policy.shards)
    part = identity.partition_key(shard)
    out: list[Finding] = []
    held = stores.ledger.live_request_for(subject_key)
    out.append(Finding("tombstone keeps the subject out of future ingests", "ledger.tombstones",
                       subject_key in stores.ledger.tombstoned_keys(shard),
                       "on hold" if held and held["status"] == "on_hold" else ""))
    for asset in (*RAW_ASSETS, "training_shards"):
        df = lk.read_table(stores.lake, asset, part)
        present = int((df["subject_key"] == subject_key).sum()) if df is not None and "subject_key" in df else 0
        out.append(Finding("no rows of the subject", f"{asset}[{part}]", present == 0, f"{present} rows"))
    out += _old_versions(stores, subject_key, part)
    in_landing = 0
    for f in landing_files(stores.landing):
        in_landing += int((read_landing(stores.landing, f, stores.pepper, policy.shards)["subject_key"] == subject_key).sum())
    out.append(Finding("no rows of the subject in landing files", "landing", in_landing == 0, f"{in_landing} rows"))
    points = stores.vectors.count_subjects(shard, [subject_key])
    out.append(Finding("no vector points of the subject (count by subject_key filter)", f"vector_index[{part}]", points == 0, f"{points} points"))
    if ("model", shard) not in cache:
        cache[("model", shard)] = _model_claim(stores, shard, part)
    if "cohorts" not in cache:
        cache["cohorts"] = _cohort_claim(stores)
    out += [cache[("model", shard)], cache["cohorts"]]
    prov = stores.ledger.provenance_for([subject_key])
    out.append(Finding("provenance lists no data for the subject", "ledger.provenance", not prov, f"{len(prov)} rows"))
    return out


def _old_versions(stores: Stores, subject_key: str, part: str) -> list[Finding]:
    """A versioned bucket keeps overwritten objects: none may still hold the subject.

    Tables with a ``subject_key`` column are read version by version. Models and aggregates
    cannot be searched for one subject, so no version of them may predate the tombstone
    (the erasure run purges every older one).
    """
    out = []
    for asset in (*RAW_ASSETS, "training_shards"):
        name = lk.table_name(asset, part)
        versions = [v for v in stores.lake.noncurrent_versions(name) if not v.delete_marker]
        holding = 0
        for v in versions:
            old = lk.table_from_bytes(stores.lake.read_version(name, v.version_id))
            holding += int("subject_key" in old and bool((old["subject_key"] == subject_key).any()))
        out.append(Finding("no old object version holds the subject's rows", f"{asset}[{part}]", holding == 0,
                           f"{len(versions)} noncurrent versions, {holding} with the subject"))
    since = stores.ledger.tombstoned_since(subject_key)
    derived = (lk.table_name("cohort_partials", part), lk.model_name("shard_models", part), *MERGED_OBJECTS)
    for name in derived:
        older = [v for v in stores.lake.noncurrent_versions(name) if since is None or v.last_modified < since]
        out.append(Finding("no object version from before the erasure request", name, not older, f"{len(older)} older versions"))
    return out


def _model_claim(stores: Stores, shard: int, part: str) -> Finding:
    rows = lk.read_table(stores.lake, "training_shards", part)
    blob = stores.lake.read_bytes(lk.model_name("shard_models", part))
    if rows is None or blob is None:
        return Finding("shard model equals an independent retrain without the subject", f"shard_models[{part}]", False, "not materialised")
    equal, diff, probes = matches_retrain(stores.policy, lk.loads_model(blob)["model"], rows, shard)
    return Finding("shard model equals an independent retrain without the subject", f"shard_models[{part}]", equal,
                   f"max |Δp| = {diff:.3g} over {probes} probe rows")


def _cohort_claim(stores: Stores) -> Finding:
    published = lk.read_table(stores.lake, "anonymised_cohorts", "all")
    parts = [lk.read_table(stores.lake, "cohort_partials", p) for p in identity.partition_keys(stores.policy.shards)]
    if published is None or any(p is None for p in parts):
        return Finding("published cohorts are k-anonymous", "anonymised_cohorts", False, "not materialised")
    bad = cm.k_anonymity_violations(published, cm.merge_partials(parts), stores.policy.k_min)
    return Finding("published cohorts are k-anonymous", "anonymised_cohorts", not bad, f"{len(bad)} cells below k_min={stores.policy.k_min}")


def verify_certificate(request_id: str, stores: Stores) -> list[Finding]:
    """A stored certificate: its body hash, the audit chain, and every claim about the subject now."""
    found = stores.ledger.certificate(request_id)
    if found is None:
        return [Finding("a certificate exists", request_id, False, "no certificate")]
    body, digest = found
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    out = [Finding("certificate body matches its recorded sha256", request_id, hashlib.sha256(canonical.encode()).hexdigest() == digest)]
    ok, bad_seq = stores.ledger.verify_audit_chain()
    out.append(Finding("audit log hash chain is intact", "ledger.audit_log", ok, f"first bad row {bad_seq}" if bad_seq else ""))
    request = stores.ledger.get_request(request_id)
    out.append(Finding("request is completed", request_id, request["status"] == "completed", request["status"]))
    if body.get("data_present") or body.get("exception") is None:
        out += verify_subject(request["subject_key"], stores)
    return out

"""The erasure workflow outside Dagster's types: intake, planning a tick, certifying a batch.

The Dagster sensor, the certifier asset, the failure sensor and the CLI all call these, so
there is one code path whether a daemon, ``erasure-pipeline process`` or a test drives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from erasure_pipeline import home, identity, settings
from erasure_pipeline.erasure import plan as pl
from erasure_pipeline.erasure.certificate import build_certificate
from erasure_pipeline.erasure.verify import Stores, verify_subject
from erasure_pipeline.ledger import Ledger, open_ledger, utcnow
from erasure_pipeline.policy import Policy, load_policy

BATCH_TAG = "erasure_pipeline/batch"
REQUESTS_TAG = "erasure_pipeline/requests"
LOCK_TAG = "erasure_pipeline/merge_lock"
MAX_IDS_IN_TAG = 20


def default_ledger(url: str | None = None) -> Ledger:
    return open_ledger(settings.ledger_url(url))


def default_stores(policy: Policy | None = None, ledger: Ledger | None = None) -> Stores:
    policy = policy or load_policy()
    return Stores(
        policy=policy, lake=settings.lake(), landing=settings.landing(), vectors=settings.vector_store(),
        ledger=ledger or default_ledger(), pepper=identity.load_pepper(home.project_home()),
    )


def erase(subject_id: str, reason: str | None = None, *, policy: Policy | None = None, ledger: Ledger | None = None) -> tuple[str, bool]:
    """File an erasure request: validate, hash, tombstone, request. Returns (request id, created).

    The raw id goes no further than this function: only its keyed hash is stored.
    """
    identity.validate_subject_id(subject_id)
    policy = policy or load_policy()
    book = ledger or default_ledger()
    key = identity.subject_key(identity.load_pepper(home.project_home()), subject_id)
    return book.file_request(key, identity.shard_of(key, policy.shards), due_days=policy.erasure_due_days, reason=reason)


@dataclass
class Tick:
    batches: list[pl.Batch]
    """Every batch that should have a run now: planned this tick or planned earlier and not finished."""
    certified_without_run: list[str]
    cursor: int


def tick(book: Ledger, stores: Stores, *, limit: int = 10_000) -> Tick:
    """One sensor evaluation: plan pending requests into batches, claim them, certify no-data requests."""
    policy = stores.policy
    pending = book.requests(status=["pending"])[:limit]
    certified = []
    if pending:
        planned = pl.plan(pending, book.provenance_for([r["subject_key"] for r in pending]), policy.shards)
        by_id = {r["request_id"]: r for r in pending}
        cache: dict = {}
        for rid in planned.no_data:
            if book.claim([rid], "no-data"):
                try:
                    certify(book, stores, by_id[rid], {}, run_id=None, batch_id=None, cache=cache)
                except ErasureNotProven as exc:  # e.g. the subject is only in a landing file not yet ingested
                    book.fail([rid], str(exc))
                    continue
                certified.append(rid)
        for batch in planned.batches:
            won = book.claim(batch.request_ids, batch.batch_id)
            if not won:
                continue
            # Batch ids derive from the planned set, so a process that planned a different set of
            # pending requests gets another id; keep only the requests this process won.
            batch.request_ids = won
            batch.footprints = {r: batch.footprints[r] for r in won}
            batch.assets = pl.assets_for({a for fp in batch.footprints.values() for a in fp})
            book.create_batch(batch.batch_id, batch.shard, {"assets": batch.assets, "footprints": batch.footprints, "requests": batch.request_ids})
    open_batches = [
        pl.Batch(b["batch_id"], b["shard"], b["plan"]["requests"], b["plan"]["assets"], b["plan"]["footprints"])
        for b in book.batches(status="requested")
    ]
    return Tick(open_batches, certified, book.max_seq())


def request_tags(batch: pl.Batch) -> dict[str, str]:
    ids = batch.request_ids
    shown = ",".join(ids[:MAX_IDS_IN_TAG]) + (f",+{len(ids) - MAX_IDS_IN_TAG} more" if len(ids) > MAX_IDS_IN_TAG else "")
    return {BATCH_TAG: batch.batch_id, REQUESTS_TAG: shown, LOCK_TAG: "erasure", "erasure_pipeline/shard": identity.partition_key(batch.shard)}


def erasure_run_config(assets: list[str]) -> dict:
    raw = [a for a in assets if a.startswith("raw_")]
    return {"ops": {a: {"config": {"mode": "erasure"}} for a in raw}}


def certify(
    book: Ledger,
    stores: Stores,
    request: Mapping,
    footprint: Mapping[str, int],
    *,
    run_id: str | None,
    batch_id: str | None,
    versions: Mapping[str, tuple[str | None, str | None]] | None = None,
    details: Mapping[str, str] | None = None,
    cache: dict | None = None,
) -> dict:
    """Verify the subject is gone everywhere, then record actions and issue the certificate.

    Raises ``ErasureNotProven`` (naming request id and claims only) if any claim fails.
    """
    versions, details = versions or {}, details or {}
    shard = identity.shard_of(request["subject_key"], stores.policy.shards)
    part = identity.partition_key(shard)
    touched = set(pl.assets_for(footprint))
    findings = [f.as_dict() for f in verify_subject(request["subject_key"], stores, cache)]
    failed = [f for f in findings if not f["ok"]]
    if failed:
        raise ErasureNotProven(request["request_id"], [f"{f['claim']} ({f['target']}: {f['detail']})" for f in failed])
    actions = []
    for asset in pl.ORDER:
        present = asset in touched
        partition = None if asset in pl.MERGES["cohort_partials"] + pl.MERGES["shard_models"] else part
        before, after = versions.get(asset, (None, None))
        actions.append({
            "asset": asset, "partition": partition, "action": pl.ACTION[asset] if present else "NO_DATA",
            "data_present": present, "before_hash": before, "after_hash": after,
            "detail": details.get(asset, f"{footprint[asset]} rows" if asset in footprint else ""), "run_id": run_id,
        })
    if details.get("landing"):
        actions.append({"asset": "landing", "partition": None, "action": "RAW_REWRITE", "data_present": True,
                        "before_hash": None, "after_hash": None, "detail": details["landing"], "run_id": run_id})
    cert = build_certificate(request, actions, completed_at=utcnow(), findings=findings, run_id=run_id, batch_id=batch_id)
    book.record_actions(request["request_id"], actions)
    book.complete(request["request_id"], cert)
    return cert


class ErasureNotProven(RuntimeError):
    def __init__(self, request_id: str, failed_claims: list[str]):
        self.request_id, self.failed_claims = request_id, failed_claims
        super().__init__(f"erasure of {request_id} not proven: " + "; ".join(failed_claims))


def fail_batch(book: Ledger, batch_id: str, run_id: str | None, error: str) -> None:
    batch = book.get_batch(batch_id)
    if batch is None:
        return
    book.fail(batch["plan"]["requests"], error)
    book.finish_batch(batch_id, "failed", run_id)

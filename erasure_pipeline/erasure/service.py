"""The erasure workflow outside the tick: intake, and certifying a batch at the end of its run.

The CLI, the Python API and the erasure job call these, so there is one code path whether a
daemon, ``erasure-pipeline process`` or a test drives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

from erasure_pipeline import home, identity, settings
from erasure_pipeline.erasure.certificate import build_certificate, to_markdown
from erasure_pipeline.erasure.verify import verify_subject
from erasure_pipeline.graph import graph_for
from erasure_pipeline.ledger import Ledger, open_ledger, utcnow
from erasure_pipeline.nodes import Env
from erasure_pipeline.policy import Policy, load_policy

MAX_CERTIFICATES_IN_METADATA = 10
ANCHOR_SEQ, ANCHOR_HASH = "audit_anchor_seq", "audit_anchor_hash"


def default_ledger(url: str | None = None) -> Ledger:
    return open_ledger(settings.ledger_url(url))


def default_env(policy: Policy | None = None, ledger: Ledger | None = None) -> Env:
    """The stores the environment points at, outside any Dagster run (the CLI's ``verify``)."""
    policy = policy or load_policy()
    return Env(policy=policy, graph=graph_for(policy), lake=settings.lake(), landing=settings.landing(),
               vectors=settings.vector_store(), ledger=ledger or default_ledger(), pepper=identity.load_pepper(home.project_home()))


def erase(subject_id: str, reason: str | None = None, *, policy: Policy | None = None, ledger: Ledger | None = None) -> tuple[str, bool]:
    """File an erasure request: validate, hash, tombstone, request. Returns (request id, created).

    The raw id goes no further than this function: only its keyed hash is stored.
    """
    return erase_many([subject_id], reason, policy=policy, ledger=ledger)[0]


def erase_many(subject_ids: Iterable[str], reason: str | None = None, *, policy: Policy | None = None,
               ledger: Ledger | None = None) -> list[tuple[str, bool]]:
    """Bulk intake: every id validated first (nothing is filed if one is bad), then filed in a few transactions."""
    ids = [identity.validate_subject_id(s) for s in subject_ids]
    policy = policy or load_policy()
    book = ledger or default_ledger()
    keyer = policy.keyer(identity.load_pepper(home.project_home()))
    keys = keyer.keys(ids)
    return book.file_requests([(k, keyer.shard(k)) for k in keys], due_days=policy.erasure_due_days, reason=reason,
                              rule=identity.rule_name(keyer.rule))


class ErasureNotProven(RuntimeError):
    def __init__(self, request_id: str, failed_claims: list[str]):
        self.request_id, self.failed_claims = request_id, failed_claims
        super().__init__(f"erasure of {request_id} not proven: " + "; ".join(failed_claims))


Footprint = Mapping[str, Mapping[str, int]]
"""Node -> partition -> rows of one subject there (provenance when the run claimed it)."""


def affected_nodes(env: Env, footprint: Footprint, outcomes: Mapping[tuple[str, str | None], object], part: str) -> set[str]:
    """Nodes that held the subject in partition ``part`` (provenance) or changed in this run below one that did."""
    affected: set[str] = set()
    for node in env.graph.nodes:
        o = outcomes.get((node.name, part if node.partitioned else None))
        held = part in footprint.get(node.name, {}) if node.partitioned else node.name in footprint
        if held or (o is not None and o.changed and affected.intersection(node.parents)):
            affected.add(node.name)
    return affected


def certify(env: Env, request: Mapping, footprint: Footprint, outcomes: Mapping[tuple[str, str | None], object], *,
            run_id: str | None, batch_id: str | None, cache: dict | None = None, landing_scrubbed: int = 0) -> dict:
    """Verify the subject is gone everywhere, then record actions and issue the certificate.

    Every node is listed for the subject's own shard (with NO_DATA where it held nothing); another
    shard is listed where it held the subject (their e-mail in someone's text) and below that.
    Raises ``ErasureNotProven`` (naming request id and claims only) if any claim fails.
    """
    own = identity.partition_key(identity.shard_of(request["subject_key"], env.policy.shards))
    findings = [f.as_dict() for f in verify_subject(request["subject_key"], env, cache)]
    failed = [f for f in findings if not f["ok"]]
    if failed:
        raise ErasureNotProven(request["request_id"], [f"{f['claim']} ({f['target']}: {f['detail']})" for f in failed])
    elsewhere = sorted({p for parts in footprint.values() for p in parts if p != own})
    affected = {p: affected_nodes(env, footprint, outcomes, p) for p in [own, *elsewhere]}
    actions = []
    scrubbed = landing_scrubbed
    for node in env.graph.nodes:
        for partition in ([own, *elsewhere] if node.partitioned else [None]):
            present = node.name in (affected[partition] if partition else set().union(*affected.values()))
            if partition not in (own, None) and not present:
                continue
            o = outcomes.get((node.name, partition))
            details = o.details if o is not None else {}
            scrubbed += int(details.get("landing_files_scrubbed", 0) or 0)
            detail = []
            held = footprint.get(node.name, {})
            rows = held.get(partition, 0) if partition else sum(held.values())
            if rows:
                unit = "points" if node.kind == "vector_index" else "rows" if partition in (own, None) else "mentions in text"
                detail.append(f"{rows} {unit}")
            if details.get("noncurrent_versions_purged"):
                detail.append(f"{details['noncurrent_versions_purged']} old object versions purged")
            if details.get("points_deleted_by_subject_filter"):
                detail.append(f"{details['points_deleted_by_subject_filter']} points deleted by subject_key filter (batch); store compacted")
            actions.append({
                "asset": node.name, "partition": partition, "action": node.action if present else "NO_DATA", "data_present": present,
                "before_hash": o.before if o is not None else None, "after_hash": o.after if o is not None else None,
                "detail": "; ".join(detail), "run_id": run_id,
            })
    if scrubbed and any(n.table is not None and n.name in footprint for n in env.graph.nodes):
        actions.append({"asset": "landing", "partition": None, "action": "RAW_REWRITE", "data_present": True, "before_hash": None,
                        "after_hash": None, "detail": f"{scrubbed} landing files rewritten without tombstoned subjects", "run_id": run_id})
    env.ledger.record_actions(request["request_id"], actions)
    cert = build_certificate(request, actions, completed_at=utcnow(), findings=findings, run_id=run_id, batch_id=batch_id,
                             audit_anchor=env.ledger.chain_head())
    return env.ledger.complete(request["request_id"], cert)


def certify_batch(context, env: Env, plan, outcomes: list) -> Iterator:
    """The end of an erasure run: certify each request of the batch, report the certificates to Dagster.

    A request whose claims do not all hold is failed with the claims that did not (it is retried by a
    later tick); the others are certified. The run fails if any was not proven.
    """
    import dagster as dg

    from erasure_pipeline.assets import DUE_SOON, STUCK_AFTER, on_time_check

    by_key = {(o.node, o.partition): o for o in outcomes}
    book = env.ledger
    certs, unproven, cache = [], [], {}
    requests = [r for r in book.requests_by_id(plan.request_ids) if r["status"] != "completed"]
    with contextlib.ExitStack() as open_shards:
        # Each subject's proof counts its points in its shard's vector store: open each shard once for the
        # batch, not once per subject (an Edge shard's load was 4.6 s of 100 subjects' 15.8 s of proofs).
        for shard in sorted({identity.shard_of(r["subject_key"], env.policy.shards) for r in requests}):
            open_shards.enter_context(env.vectors.session(shard))
        for request in requests:
            try:
                certs.append(certify(env, request, plan.footprints.get(request["request_id"], {}), by_key, run_id=context.run_id,
                                     batch_id=plan.batch_id, cache=cache, landing_scrubbed=plan.landing_scrubbed))
            except ErasureNotProven as exc:
                unproven.append(exc)
                book.fail_requests([exc.request_id], str(exc), context.run_id)
    book.finish_batch(plan.batch_id, "failed" if unproven else "certified", context.run_id)
    anchor_seq, anchor_hash = book.chain_head()
    shown = "\n\n---\n\n".join(to_markdown(c) for c in certs[:MAX_CERTIFICATES_IN_METADATA])
    context.log.info(f"batch {plan.batch_id}: {len(certs)} certificates issued, {len(unproven)} requests not proven")
    yield dg.AssetMaterialization(
        asset_key=env.graph.certificate_node,
        metadata={
            "batch": plan.batch_id,
            "certificates_issued": len(certs),
            "requests_not_proven": len(unproven),
            "request_ids": ", ".join(c["request_id"] for c in certs[:50]),
            "requests_resumed_from_interrupted_runs": len(plan.resumed),
            "shards": ", ".join(w.partition for w in plan.works) or "none (no data)",
            "certificates": dg.MetadataValue.md(shown or "_(none)_"),
            # A copy of the audit log's head outside the ledger's database (erasure-pipeline audit-log verify).
            ANCHOR_SEQ: anchor_seq,
            ANCHOR_HASH: anchor_hash,
            "ledger_ids": dg.MetadataValue.md("Print one: `erasure-pipeline certificate REQUEST_ID`; re-check: `erasure-pipeline verify REQUEST_ID`."),
        },
    )
    check = on_time_check(book.overdue(utcnow(), within=DUE_SOON, stuck_after=STUCK_AFTER))
    yield dg.AssetCheckEvaluation(asset_key=dg.AssetKey(env.graph.certificate_node), check_name="requests_on_time",
                                  passed=check.passed, metadata=check.metadata, severity=check.severity)
    if unproven:
        raise dg.Failure("erasure not proven for " + "; ".join(str(e) for e in unproven[:5]))

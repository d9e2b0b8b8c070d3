"""Certifying a batch at the end of its run: every claim verified, actions recorded, certificates signed and issued.

No Dagster import: the erasure job's last step calls ``certify_batch`` and reports what it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from erasure_pipeline.core import identity
from erasure_pipeline.erasure.certificate import backup_risks, build_certificate, write_evidence
from erasure_pipeline.erasure.plan import NodeOutcome, RunPlan
from erasure_pipeline.erasure.recipients import build_notices, recipients_section
from erasure_pipeline.erasure.verify import prove_together, verify_subject
from erasure_pipeline.kinds.base import Env
from erasure_pipeline.ledger import utcnow
from erasure_pipeline.ledger.db import as_utc

Footprint = Mapping[str, Mapping[str, int]]
"""Node -> partition -> rows of one subject there (provenance when the run claimed it)."""
Outcomes = Mapping[tuple[str, str | None], NodeOutcome]


class ErasureNotProven(RuntimeError):
    def __init__(self, request_id: str, failed_claims: list[str]):
        self.request_id, self.failed_claims = request_id, failed_claims
        super().__init__(f"erasure of {request_id} not proven: " + "; ".join(failed_claims))


def affected_nodes(env: Env, footprint: Footprint, outcomes: Outcomes, part: str, carried: bool = False) -> set[str]:
    """Nodes that held the subject in partition ``part``: by provenance for nodes that keep a record per subject
    (raw partitions, training sets, the vector index); else a node that changed in this run below one that did
    (a shard model below the training set that held them, the merges). A training set that changed only for
    other subjects of the batch did not hold this one: its certificate row says it was checked and held nothing.
    ``carried``: an earlier run of the request may have rewritten and rebuilt it already, so a node below one that
    held the subject counts as having held them though it did not change (or run) this time; the proof checks
    that it is built from its current inputs."""
    affected: set[str] = set()
    for node in env.graph.nodes:
        o = outcomes.get((node.name, part if node.partitioned else None))
        held = part in footprint.get(node.name, {}) if node.partitioned else node.name in footprint
        below = not node.subject_rows and (carried or (o is not None and o.changed)) and affected.intersection(node.parents)
        if held or below:
            affected.add(node.name)
    return affected


def _detail(env: Env, node, partition: str | None, own: str, footprint: Footprint, details: Mapping) -> str:
    """What a certificate row says was there and what was done: rows (or points, or mentions), purges."""
    detail = []
    held = footprint.get(node.name, {})
    rows = held.get(partition, 0) if partition else sum(held.values())
    if rows:
        unit = env.kinds.get(node.kind).unit if partition in (own, None) else "mentions in text"
        detail.append(f"{rows} {unit}")
    if details.get("noncurrent_versions_purged"):
        detail.append(f"{details['noncurrent_versions_purged']} old object versions purged")
    if details.get("points_deleted_by_subject_filter"):
        detail.append(f"{details['points_deleted_by_subject_filter']} points deleted by subject_key filter (batch); store compacted")
    return "; ".join(detail)


HELD_NOTHING = "checked: held none of the subject's data"


def actions_for(env: Env, request: Mapping, footprint: Footprint, outcomes: Outcomes, run_id: str | None,
                landing_scrubbed: int = 0, carried: bool = False) -> list[dict]:
    """One row per node of the subject's own shard (NO_DATA where it held nothing); another shard's row where
    it held the subject (their e-mail in someone's text) and below that; landing, when scrubbed."""
    own = identity.partition_key(identity.shard_of(request["subject_key"], env.policy.shards))
    elsewhere = sorted({p for parts in footprint.values() for p in parts if p != own})
    affected = {p: affected_nodes(env, footprint, outcomes, p, carried) for p in [own, *elsewhere]}
    actions, scrubbed = [], landing_scrubbed
    for node in (n for n in env.graph.nodes if env.kinds.get(n.kind).personal):
        for partition in ([own, *elsewhere] if node.partitioned else [None]):
            present = node.name in (affected[partition] if partition else set().union(*affected.values()))
            if partition not in (own, None) and not present:
                continue
            o = outcomes.get((node.name, partition))
            details = o.details if o is not None else {}
            scrubbed += int(details.get("landing_files_scrubbed", 0) or 0)
            actions.append({
                "asset": node.name, "partition": partition, "action": node.action if present else "NO_DATA", "data_present": present,
                "before_hash": o.before if o is not None else None, "after_hash": o.after if o is not None else None,
                "detail": _detail(env, node, partition, own, footprint, details) if present else HELD_NOTHING, "run_id": run_id,
            })
    destroyed = _key_erasure(env, request["subject_key"])
    if destroyed is not None:
        actions.append({**destroyed, "run_id": run_id})
    if scrubbed and any(n.table is not None and n.name in footprint for n in env.graph.nodes):
        actions.append({"asset": "landing", "partition": None, "action": "RAW_REWRITE", "data_present": True, "before_hash": None,
                        "after_hash": None, "detail": f"{scrubbed} landing files rewritten without tombstoned subjects", "run_id": run_id})
    return actions


def _key_erasure(env: Env, subject_key: str) -> dict | None:
    """The key store's row: the subject's data key destroyed (first of all), and the rotation after it."""
    if env.keys is None or not any(d.sealed for d in env.policy.datasets.values()):
        return None
    d = env.keys.erasures([subject_key]).get(subject_key)
    if d is None:
        return None
    rotated = f"; key-encryption key rotated to version {d.rotated_to} at {_iso(d.rotated_at)}, earlier versions destroyed in " \
              f"{env.keys.describe()}" if d.rotated_to else ""
    return {"asset": "data_keys", "partition": None, "action": "KEY_DESTROY" if d.had_key else "NO_DATA", "data_present": False,
            "before_hash": None, "after_hash": None, "run_id": None,
            "detail": (f"data key destroyed at {_iso(d.destroyed_at)}" if d.had_key else "no data key was ever made") + rotated}


def _iso(value) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def backups_section(env: Env, subject_key: str) -> list[str] | None:
    """The residual risk of copies we cannot rewrite, when the declaration seals personal fields."""
    sealed = {name: d.sealed for name, d in env.policy.datasets.items() if d.sealed}
    if not sealed or env.keys is None:
        return None
    d = env.keys.erasures([subject_key]).get(subject_key)
    return backup_risks(sealed, _iso(d.destroyed_at) if d is not None and d.had_key else None,
                        _iso(d.rotated_at) if d is not None and d.rotated_to else None, env.policy.landing.keep_days)


def certify(env: Env, request: Mapping, footprint: Footprint, outcomes: Outcomes, *, run_id: str | None, batch_id: str | None,
            cache: dict | None = None, landing_scrubbed: int = 0, carried: bool = False) -> dict:
    """Verify the subject is gone everywhere, then record actions and issue the signed certificate.
    Raises ``ErasureNotProven`` (naming request id and claims only) if any claim fails."""
    # The merges must be built from the current state of the partitions this erasure rewrote; another run's
    # shard step may rewrite an unrelated shard between the step's last look and this proof.
    rewritten = {p for parts in footprint.values() for p in parts}
    findings = [f.as_dict() for f in verify_subject(request["subject_key"], env, cache, rewritten)]
    failed = [f for f in findings if not f["ok"]]
    if failed:
        raise ErasureNotProven(request["request_id"], [f"{f['claim']} ({f['target']}: {f['detail']})" for f in failed])
    actions = actions_for(env, request, footprint, outcomes, run_id, landing_scrubbed, carried)
    env.ledger.certificates.record_actions(request["request_id"], actions)
    present = {a["asset"] for a in actions if a["data_present"]}
    risks = [env.kinds.get(n.kind).residual_risk for n in env.graph.nodes if n.name in present]
    now = utcnow()
    notices = []
    if env.policy.recipients and env.signer is not None:
        notices = build_notices(env.policy, env.graph, request, actions, env.ledger.notices.sealed(request["request_id"]), env.signer, now)
    cert = build_certificate(request, actions, completed_at=now, findings=findings, run_id=run_id, batch_id=batch_id,
                             audit_anchor=env.ledger.audit.head(), kind_risks=[r for r in risks if r],
                             recipients=recipients_section(env.policy, notices), backups=backups_section(env, request["subject_key"]))
    if env.signer is not None:
        cert = env.signer.sign_document(cert)
    return env.ledger.certificates.complete(request["request_id"], cert, notices)


@dataclass
class BatchCertified:
    """What certifying a batch did: the certificates issued, the requests not proven, the audit log's head after."""

    certificates: list[dict] = field(default_factory=list)
    evidence: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Request id -> where its certificate is in the evidence store (JSON, Markdown)."""
    unproven: list[ErasureNotProven] = field(default_factory=list)
    anchor: tuple[int, str] = (0, "")


def certify_batch(env: Env, plan: RunPlan, outcomes: list[NodeOutcome], run_id: str) -> BatchCertified:
    """Certify each request of the batch. A request whose claims do not all hold is failed with the claims
    that did not (a later tick retries it); the others are certified."""
    by_key = {(o.node, o.partition): o for o in outcomes}
    book, out = env.ledger, BatchCertified()
    requests = [r for r in book.requests.by_ids(plan.request_ids) if r["status"] != "completed"]
    cache = prove_together([r["subject_key"] for r in requests], env, {})
    with contextlib.ExitStack() as open_shards:
        # Each subject's proof counts its points in its shard's vector store: open each shard once for the
        # batch, not once per subject (an Edge shard's load was 4.6 s of 100 subjects' 15.8 s of proofs).
        for shard in sorted({identity.shard_of(r["subject_key"], env.policy.shards) for r in requests}):
            open_shards.enter_context(env.vectors.session(shard))
        for request in requests:
            try:
                cert = certify(env, request, plan.footprints.get(request["request_id"], {}), by_key, run_id=run_id,
                               batch_id=plan.batch_id, cache=cache, landing_scrubbed=plan.landing_scrubbed,
                               carried=request["request_id"] in plan.carried)
                out.certificates.append(cert)
                if env.evidence is not None:
                    out.evidence[cert["request_id"]] = write_evidence(env.evidence, cert)
            except ErasureNotProven as exc:
                out.unproven.append(exc)
                book.runs.fail_requests([exc.request_id], str(exc), run_id)
    book.runs.finish_batch(plan.batch_id, "failed" if out.unproven else "certified", run_id)
    out.anchor = book.audit.head()
    return out


@dataclass(frozen=True)
class RunOutcome:
    """What an erasure run did with every request it named: the counts, and one line for the run list."""

    counts: dict[str, int]

    @property
    def erased(self) -> int:
        return self.counts.get("erased", 0)

    @property
    def line(self) -> str:
        shown = ", ".join(f"{OUTCOME_WORDS[k]} {n}" for k, n in self.counts.items() if n)
        if not self.erased and not self.counts.get("no_data"):
            return f"nothing erased: {shown}" if shown else "nothing erased: no request"
        return shown


OUTCOME_WORDS = {"erased": "erased", "no_data": "no data found", "held": "held (not erased)", "in_review": "waiting for review",
                 "not_proven": "not proven (retried)", "already_done": "already completed", "elsewhere": "in another run"}


def run_outcome(book, request_ids: list[str], run_id: str, certificates: list[dict]) -> RunOutcome:
    """Each request the run named, by what became of it: erased (certificate, data present), no data found,
    held, waiting for review, not proven, completed before this run, or taken by another run."""
    issued = {c["request_id"]: c for c in certificates}
    counts = dict.fromkeys(OUTCOME_WORDS, 0)
    for r in book.requests.by_ids(list(dict.fromkeys(request_ids))):
        if r["request_id"] in issued:
            counts["erased" if issued[r["request_id"]]["data_present"] else "no_data"] += 1
        elif r["status"] == "on_hold":
            counts["held"] += 1
        elif r["status"] == "needs_review":
            counts["in_review"] += 1
        elif r["status"] == "completed":
            counts["already_done"] += 1
        elif r["run_id"] == run_id:
            counts["not_proven"] += 1
        else:
            counts["elsewhere"] += 1
    return RunOutcome(counts)

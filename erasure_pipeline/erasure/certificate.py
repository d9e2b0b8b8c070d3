"""Erasure certificates: the documentation an auditor reads, as data and as Markdown.

Fields follow the erasure documentation template: request id, request date, anonymised data
subject, affected dataset and version, data present (yes/no), action taken, completion
date, residual risk, exception. Subjects appear only as their keyed hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from erasure_pipeline.core.signing import canonical_json

REGULATION = "GDPR Art.17; CCPA Cal. Civ. Code §1798.105"


BACKUP_RISK = ("Backups taken before the completion date (Dagster instance database, lake snapshots, Qdrant snapshots) "
               "still hold the subject until their retention expires; restores must replay the tombstone list (deploy/README.md).")
GENERAL_RISKS = (
    BACKUP_RISK,
    ("A tombstone (keyed hash only) stays in the ledger so that the subject is dropped if a source sends them again, "
     "under any case, spacing or Unicode variant of their id the identity rule normalises."),
    ("Where another person's free text quotes the subject's id, that id is replaced by [erased]; other details in "
     "such text (the subject's name, phone number, or an address other than their id) cannot be matched from a "
     "keyed hash and may remain."),
)
NO_DATA_RISK = "No data of the subject was found in any store of this pipeline."


def backup_risks(sealed: Mapping[str, Sequence[str]], destroyed_at: str | None, rotated_at: str | None,
                 landing_days: float | None) -> list[str]:
    """What copies the pipeline cannot rewrite (backups, snapshots, replicas, exports) still hold, when datasets
    declare personal fields: which are now unreadable, which are not."""
    fields = "; ".join(f"{d}: {', '.join(cols)}" for d, cols in sorted(sealed.items()))
    when = f"at {destroyed_at}" if destroyed_at else "(none was ever made: nothing of theirs was sealed)"
    risks = [f"Sealed personal fields ({fields}) in every backup, snapshot and replica of the lake, the ingest staging area "
             f"and the vector store's payloads are unreadable: the subject's data key was destroyed {when}"
             + (f", and the key-encryption key was rotated at {rotated_at} with every earlier version destroyed, so an old copy "
                "of the key store opens nothing either." if rotated_at else "."),
             ("Not sealed, and held by backups taken before the completion date until their retention expires: derived numbers "
             "(training sets, shard models, cohort partials, embedding vectors) and columns not declared personal; the live "
             "stores no longer hold them (rewritten and retrained above). Restores must replay the tombstone list (deploy/README.md).")]
    if landing_days is None:
        risks.append("Landing files are kept as the source sent them (landing.keep_days is not declared): their copies in "
                     "backups taken before the completion date hold the subject's fields in the clear.")
    elif landing_days > 0:
        risks.append(f"Landing files are removed {landing_days:g} days after their ingest: backups taken in that window hold "
                     "the source's files, the subject's fields in the clear.")
    return risks


def residual_risk(actions: Sequence[Mapping[str, Any]], kind_risks: Sequence[str], backups: Sequence[str] | None = None) -> list[str]:
    """The general risks (``backups``: what sealing leaves of the backup risk), then each kind's own
    (``Kind.residual_risk``, of the kinds that held the subject), once each."""
    general = [*backups, *GENERAL_RISKS[1:]] if backups else list(GENERAL_RISKS)
    risks = [*general, *dict.fromkeys(r for r in kind_risks if r)]
    if not any(a["data_present"] for a in actions):
        risks.append(NO_DATA_RISK)
    return risks


def build_certificate(
    request: Mapping[str, Any],
    actions: Sequence[Mapping[str, Any]],
    *,
    completed_at: dt.datetime,
    findings: Sequence[Mapping[str, Any]],
    run_id: str | None,
    batch_id: str | None,
    audit_anchor: tuple[int, str] | None = None,
    exception: str | None = None,
    kind_risks: Sequence[str] = (),
    recipients: Sequence[Mapping[str, Any]] = (),
    backups: Sequence[str] | None = None,
) -> dict:
    """The certificate of one request (``request``: its ledger row), from what its run did (``actions``) and
    every claim checked (``findings``). A request a person reviewed carries their decision."""
    datasets = [
        {
            "dataset": a["asset"] if a.get("partition") in (None, "") else f"{a['asset']}[{a['partition']}]",
            "version_before": a.get("before_hash"),
            "version_after": a.get("after_hash"),
            "data_present": "yes" if a["data_present"] else "no",
            "action": a["action"],
            "detail": a.get("detail") or "",
        }
        for a in actions
    ]
    return {
        "certificate_version": 1,
        "regulation": REGULATION,
        "request_id": request["request_id"],
        "request_date": request["received_at"].isoformat(),
        "due_date": request["due_at"].isoformat(),
        "extended": bool(request.get("extended")),
        "anonymised_data_subject": request["subject_key"],
        "data_present": any(a["data_present"] for a in actions),
        "datasets": datasets,
        "completion_date": completed_at.isoformat(),
        "residual_risk": residual_risk(actions, kind_risks, backups),
        "exception": exception,
        "operator_review": request.get("review"),
        "verification": list(findings),
        "run_id": run_id,
        "batch_id": batch_id,
        # The audit log's head when the certificate was issued: deleting or rewriting any row up to it
        # is detectable from any copy of this certificate (erasure-pipeline audit-log verify).
        "audit_anchor": {"seq": audit_anchor[0], "row_hash": audit_anchor[1]} if audit_anchor else None,
        # Who else was told (GDPR Art.17(2), 19; CCPA §1798.105(c)): amended, as a new revision, as each confirms.
        "recipients": [dict(r) for r in recipients],
        "revision": 1,
    }


def to_markdown(cert: Mapping[str, Any]) -> str:
    lines = [
        f"### Erasure certificate `{cert['request_id']}`",
        "",
        "| field | value |",
        "|---|---|",
        f"| regulation | {cert['regulation']} |",
        f"| request date | {cert['request_date']} |",
        f"| due date | {cert['due_date']}{' (extended)' if cert['extended'] else ''} |",
        f"| anonymised data subject | `{cert['anonymised_data_subject'][:16]}…` |",
        f"| data present | {'yes' if cert['data_present'] else 'no'} |",
        f"| completion date | {cert['completion_date']} |",
        f"| exception (Art.17(3)) | {cert['exception'] or 'none'} |",
        *([f"| operator review | {cert['operator_review']} |"] if cert.get("operator_review") else []),
        f"| run | {cert.get('run_id') or 'none (no data)'} |",
        *([f"| revision | {cert['revision']} (amended as recipients answered) |"] if cert.get("revision", 1) > 1 else []),
        "",
        "| dataset | data present | action | version before | version after | detail |",
        "|---|---|---|---|---|---|",
    ]
    for d in cert["datasets"]:
        before = (d["version_before"] or "")[:12]
        after = (d["version_after"] or "")[:12]
        detail = str(d.get("detail") or "").replace("|", "/")
        lines.append(f"| {d['dataset']} | {d['data_present']} | {d['action']} | {before} | {after} | {detail} |")
    lines += ["", "**Verification**", ""]
    for f in cert["verification"]:
        lines.append(f"- {'✅' if f['ok'] else '❌'} {f['claim']} — {f['target']} {f['detail']}".rstrip())
    if cert.get("recipients"):
        lines += ["", "**Recipients** (processors, service providers, third parties)", "",
                  "| recipient | erase | notified | status | confirmed / dead letter |", "|---|---|---|---|---|"]
        for r in cert["recipients"]:
            settled = r.get("confirmed_at") or r.get("dead_letter_at") or ""
            lines.append(f"| {r['recipient']} ({r.get('role', 'processor')}) | {', '.join(r.get('erase', [])) or '—'} | "
                         f"{r.get('notified_at') or '—'} | {r['status']} | {settled} |")
    lines += ["", "**Residual risk**", ""] + [f"- {r}" for r in cert["residual_risk"]]
    if cert.get("audit_anchor"):
        lines += ["", f"Audit log anchored at row {cert['audit_anchor']['seq']} (`{cert['audit_anchor']['row_hash'][:16]}…`)."]
    if cert.get("signature"):
        sig = cert["signature"]
        lines += [f"Signed {sig['algorithm']}, key `{sig['key_id']}`: check it with `erasure-pipeline verify --certificate FILE`."]
    return "\n".join(lines)


def evidence_names(request_id: str) -> tuple[str, str]:
    """The certificate's objects in the evidence store: ``certificates/<request id>.json`` and ``.md``."""
    return f"certificates/{request_id}.json", f"certificates/{request_id}.md"


def write_evidence(store, cert: Mapping[str, Any]) -> tuple[str, str]:
    """Keep the certificate where an auditor reads it: the signed JSON as ``erasure-pipeline certificate --json``
    prints it (with the sha256 of its canonical body, as the ledger stores it), and its Markdown. Returns
    where each is (a path, or an ``s3://`` URL)."""
    digest = hashlib.sha256(canonical_json(cert).encode()).hexdigest()
    json_name, md_name = evidence_names(cert["request_id"])
    store.write_bytes(json_name, (json.dumps({**cert, "sha256": digest}, indent=2) + "\n").encode())
    store.write_bytes(md_name, (to_markdown(cert) + f"\n\nsha256 of certificate: {digest}\n").encode())
    return store.locate(json_name), store.locate(md_name)

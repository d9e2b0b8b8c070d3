"""Intake and an operator's decisions: a subject id becomes a request and a tombstone, and goes no further.

No Dagster, no pandas. The CLI, the Python API and any HTTP intake call these, so normalisation,
tombstones, dedupe and the cleaning of free text are one code path. The raw id is validated and keyed
here; only its keyed hash (and the keyed hash of its look-alike skeleton) is stored. Free text (a
reason) is stored only after every identifier in it is replaced (``core.freetext``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from erasure_pipeline.core import freetext, identity
from erasure_pipeline.core.policy import Policy, load_policy
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.ledger import Ledger, ledger_for


@dataclass(frozen=True)
class Desk:
    """What intake and an operator's decisions need: the declaration, the ledger, and how ids become keys."""

    policy: Policy
    ledger: Ledger
    keyer: identity.Keyer

    @classmethod
    def open(cls, *, policy: Policy | None = None, ledger: Ledger | None = None, settings: Settings | None = None) -> Desk:
        settings = settings or Settings.from_environ()
        policy = policy or load_policy(settings=settings)
        return cls(policy, ledger or ledger_for(settings), policy.keyer(identity.load_pepper(settings.pepper, settings.home)))

    def clean(self, text: str | None, subject_keys: Iterable[str] = (), subject_ids: Iterable[str] = ()) -> tuple[str | None, int]:
        """Free text with every identifier replaced (the subject's id in any form the rule normalises, e-mails,
        phone numbers), and how many were."""
        if text is None:
            return None, 0
        return freetext.scrub(text, self.keyer, subject_keys, subject_ids)

    def subject_key(self, request_id: str) -> str:
        return self.ledger.requests.get(request_id)["subject_key"]


def erase(subject_id: str, reason: str | None = None, *, policy: Policy | None = None, ledger: Ledger | None = None,
          settings: Settings | None = None) -> tuple[str, bool]:
    """File an erasure request: validate, hash, tombstone, request. Returns (request id, created)."""
    return erase_many([subject_id], reason, policy=policy, ledger=ledger, settings=settings)[0]


def erase_many(subject_ids: Iterable[str], reason: str | None = None, *, policy: Policy | None = None, ledger: Ledger | None = None,
               settings: Settings | None = None) -> list[tuple[str, bool]]:
    """Bulk intake: every id validated first (nothing is filed if one is bad), then filed in a few transactions.
    The reason is stored without the ids (or any e-mail or phone number) it quotes."""
    ids = [identity.validate_subject_id(s) for s in subject_ids]
    desk = Desk.open(policy=policy, ledger=ledger, settings=settings)
    keys = desk.keyer.keys(ids)
    reason, _replaced = desk.clean(reason, keys, ids)
    skeletons = desk.keyer.skeleton_keys(ids)
    return desk.ledger.requests.file_many([(k, desk.keyer.shard(k), s) for k, s in zip(keys, skeletons, strict=True)],
                                          due_days=desk.policy.erasure_due_days, reason=reason, rule=identity.rule_name(desk.keyer.rule))


def hold(desk: Desk, request_id: str, reason: str) -> tuple[str, int]:
    """Put a request on hold (Art.17(3) exception or legal hold); returns the reason as stored and how many
    identifiers were taken out of it."""
    clean, replaced = desk.clean(reason, [desk.subject_key(request_id)])
    desk.ledger.requests.hold(request_id, clean)
    return clean, replaced


def extend(desk: Desk, request_id: str, reason: str):
    """Extend the due date once by ``erasure_extension_days``; returns (new due date, reason as stored, replaced)."""
    clean, replaced = desk.clean(reason, [desk.subject_key(request_id)])
    return desk.ledger.requests.extend(request_id, clean, days=desk.policy.erasure_extension_days), clean, replaced


def review(desk: Desk, request_id: str, *, same_subject: bool, reason: str) -> tuple[list[str], int]:
    """A person's decision on a request in review (no data under the id as filed; data under look-alike ids).

    ``same_subject``: the look-alike ids are the same person: each is filed as an erasure request of its own
    (by key: no raw id is needed), and this request completes as having no data under its own id, naming
    them. Otherwise the look-alikes are other people and this request completes as no data. Returns the
    requests filed for the look-alikes and how many identifiers were taken out of the reason."""
    request = desk.ledger.requests.get(request_id)
    clean, replaced = desk.clean(reason, [request["subject_key"]])
    filed: list[str] = []
    if same_subject and request["skeleton_key"]:
        alikes = sorted(desk.ledger.nodes.look_alikes(request["skeleton_key"], request["subject_key"]))
        results = desk.ledger.requests.file_many(
            [(k, desk.keyer.shard(k), request["skeleton_key"]) for k in alikes], due_days=desk.policy.erasure_due_days,
            reason=f"look-alike of {request_id}, confirmed the same subject by review", rule=identity.rule_name(desk.keyer.rule))
        filed = [rid for rid, _created in results]
    decision = f"same subject: erased as {', '.join(filed)}" if same_subject else "different subject: look-alike ids are other people"
    desk.ledger.requests.review(request_id, decision, clean)
    return filed, replaced

"""Intake and an operator's decisions: a subject id becomes a request and a tombstone, and goes no further.

No Dagster, no pandas. The CLI, the Python API and any HTTP intake call these, so normalisation,
tombstones, dedupe and the cleaning of free text are one code path. The raw id is validated and keyed
here; only its keyed hash (and the keyed hash of its look-alike skeleton) is stored. Free text (a
reason) is stored only after every identifier in it is replaced (``core.freetext``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from erasure_pipeline.core import freetext, identity
from erasure_pipeline.core.settings import Settings, policy_path
from erasure_pipeline.ledger import Ledger, ledger_for

if TYPE_CHECKING:
    from erasure_pipeline.core.policy import Policy


@dataclass(frozen=True)
class IntakeRules:
    """What intake reads of the declaration: how ids become keys and shards, and when requests are due."""

    shards: int
    normalise: tuple[str, ...]
    due_days: int
    extension_days: int
    sealed_for: tuple[tuple[str, str], ...] = ()
    """(recipient, X25519 public key) of each recipient that knows subjects by their id: sealed to it at intake."""

    @classmethod
    def of(cls, policy: Policy) -> IntakeRules:
        return cls(policy.shards, tuple(policy.identity.normalise), policy.erasure_due_days, policy.erasure_extension_days,
                   tuple((r.name, r.public_key) for r in policy.recipients if r.knows_subject_by == "subject_id" and r.public_key))

    def seal(self, subject_ids: list[str]) -> list[list[tuple[str, str]]]:
        """Per id, (recipient, sealed box) for each recipient that knows the subject by it: a libsodium sealed box
        to the recipient's public key, which only its private key opens (this process cannot, once it is sealed)."""
        if not self.sealed_for:
            return [[] for _ in subject_ids]
        import base64

        from nacl.public import PublicKey, SealedBox  # deferred: only where recipients are declared

        boxes = [(name, SealedBox(PublicKey(base64.b64decode(key)))) for name, key in self.sealed_for]
        return [[(name, base64.b64encode(box.encrypt(s.encode())).decode()) for name, box in boxes] for s in subject_ids]

    def keyer(self, pepper: bytes) -> identity.Keyer:
        return identity.Keyer(pepper, self.shards, self.normalise)


RULES_CACHE = ".intake_rules.json"
DECLARATION_CODE = tuple(Path(__file__).resolve().parents[1] / "core" / n for n in ("policy.py", "declaration.py", "identity.py"))
"""The code that gives a declaration's defaults: a change of it invalidates the cache of intake rules."""


def intake_rules(settings: Settings) -> IntakeRules:
    """The declaration's intake rules. Validating the declaration imports pydantic and yaml (a third of a
    second); the rules are kept in ``<home>/.intake_rules.json`` under the hash of the policy file and of
    the code that gives its defaults, so the commands that file and decide requests answer at once. Any
    change of either reads and validates the declaration again (and an invalid one is the same error)."""
    path, _named = policy_path(settings)
    digest = hashlib.sha256()
    for f in ([path] if path is not None and path.is_file() else []) + [f for f in DECLARATION_CODE if f.is_file()]:
        digest.update(f.read_bytes())
    cache = settings.home / RULES_CACHE
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        kept = json.loads(cache.read_text())
        if path is not None and kept["key"] == digest.hexdigest():
            return IntakeRules(kept["shards"], tuple(kept["normalise"]), kept["due_days"], kept["extension_days"],
                               tuple(tuple(pair) for pair in kept["sealed_for"]))
    from erasure_pipeline.core.policy import load_policy  # deferred: pydantic and yaml, only when the declaration changed

    rules = IntakeRules.of(load_policy(settings=settings))
    with contextlib.suppress(OSError):
        settings.home.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{RULES_CACHE}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": digest.hexdigest(), **asdict(rules)}))
        os.replace(tmp, cache)
    return rules


@dataclass(frozen=True)
class Desk:
    """What intake and an operator's decisions need: the declaration's intake rules, the ledger, and how ids become keys."""

    rules: IntakeRules
    ledger: Ledger
    keyer: identity.Keyer

    @classmethod
    def open(cls, *, policy: Policy | None = None, ledger: Ledger | None = None, settings: Settings | None = None) -> Desk:
        settings = settings or Settings.from_environ()
        rules = IntakeRules.of(policy) if policy is not None else intake_rules(settings)
        return cls(rules, ledger or ledger_for(settings), rules.keyer(identity.load_pepper(settings.pepper, settings.home)))

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
               settings: Settings | None = None, desk: Desk | None = None) -> list[tuple[str, bool]]:
    """Bulk intake: every id validated first (nothing is filed if one is bad), then filed in a few transactions.
    The reason is stored without the ids (or any e-mail or phone number) it quotes."""
    ids = [identity.validate_subject_id(s) for s in subject_ids]
    desk = desk or Desk.open(policy=policy, ledger=ledger, settings=settings)
    keys = desk.keyer.keys(ids)
    reason, _replaced = desk.clean(reason, keys, ids)
    skeletons = desk.keyer.skeleton_keys(ids)
    sealed = dict(zip(keys, desk.rules.seal(ids), strict=True))
    return desk.ledger.requests.file_many([(k, desk.keyer.shard(k), s) for k, s in zip(keys, skeletons, strict=True)],
                                          due_days=desk.rules.due_days, reason=reason, rule=identity.rule_name(desk.keyer.rule),
                                          sealed=sealed)


def hold(desk: Desk, request_id: str, reason: str) -> tuple[str, int]:
    """Put a request on hold (Art.17(3) exception or legal hold); returns the reason as stored and how many
    identifiers were taken out of it."""
    clean, replaced = desk.clean(reason, [desk.subject_key(request_id)])
    desk.ledger.requests.hold(request_id, clean)
    return clean, replaced


def revoke(desk: Desk, request_id: str, reason: str | None) -> tuple[str | None, int]:
    """Withdraw a request nothing has acted on yet (``Requests.revoke``); returns the reason as stored."""
    clean, replaced = desk.clean(reason, [desk.subject_key(request_id)])
    desk.ledger.requests.revoke(request_id, clean)
    return clean, replaced


def extend(desk: Desk, request_id: str, reason: str):
    """Extend the due date once by ``erasure_extension_days``; returns (new due date, reason as stored, replaced)."""
    clean, replaced = desk.clean(reason, [desk.subject_key(request_id)])
    return desk.ledger.requests.extend(request_id, clean, days=desk.rules.extension_days), clean, replaced


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
            [(k, desk.keyer.shard(k), request["skeleton_key"]) for k in alikes], due_days=desk.rules.due_days,
            reason=f"look-alike of {request_id}, confirmed the same subject by review", rule=identity.rule_name(desk.keyer.rule))
        filed = [rid for rid, _created in results]
    decision = f"same subject: erased as {', '.join(filed)}" if same_subject else "different subject: look-alike ids are other people"
    desk.ledger.requests.review(request_id, decision, clean)
    return filed, replaced

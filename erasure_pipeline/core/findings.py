"""A claim of a proof, checked: what ``verify``, certificates and the offline checks report. No dependencies."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    """One claim of a proof, checked against the stores (or a certificate file) as they are now."""

    claim: str
    target: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

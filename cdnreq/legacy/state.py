"""What the cron requester's databases say, as plain values.

The old requester ran in two stages, each a recipe with its own `instance`
table: the validation stage (cdninstancenode: JSON checks, DNS proof of
custom_domain, retention) wrote a *validated* table, which the request stage
(instancenode) read to request each valid customer's technical entry under
`request-name-prefix + reference` and wrote a *requested* table, holding in
`json_error` what it last published to the customer. The validation stage
also kept its DNS tokens in `domain_validation` and the hosts it let through
in `used_hosts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

VALID = "valid"
INVALID = "invalid"
STOPPED = "stopped"  # gone from the master, inside the retention delay


@dataclass(frozen=True, slots=True)
class LegacyRow:
    """One row of an `instance` table."""

    reference: str
    parameters: Mapping[str, Any] | None  # None: unreadable JSON
    published: Mapping[str, Any]  # `json_error`: what was published (or the error)
    state: str  # valid, invalid, stopped
    at: float | None  # `timestamp`: last change; for `stopped`, when it left the master; None: unreadable


@dataclass(frozen=True, slots=True)
class LegacyProof:
    """One row of `domain_validation`: the token issued for a custom_domain."""

    reference: str
    domain: str
    token: str
    validated: bool
    at: float | None  # None: unreadable


@dataclass(frozen=True, slots=True)
class LegacySource:
    path: str
    role: str  # requested, validated, source, domains, unused
    rows: int


@dataclass(frozen=True, slots=True)
class LegacyState:
    requested: Mapping[str, LegacyRow] = field(default_factory=dict)
    validated: Mapping[str, LegacyRow] = field(default_factory=dict)
    proofs: Mapping[str, LegacyProof] = field(default_factory=dict)
    used_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sources: tuple[LegacySource, ...] = ()

    def references(self) -> list[str]:
        return sorted(set(self.requested) | set(self.validated) | set(self.proofs))

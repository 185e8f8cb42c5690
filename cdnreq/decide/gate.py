"""The gate between a customer's instance and the technical CDN.

An instance passes only when its parameters are valid and every host it
names (custom_domain and aliases) is proven by DNS to be its own. A host
belongs to the first instance to prove it; a later claimant is refused while
the owner is on the master and names it, and may take the host over by DNS
proof once the owner has been retained (gone from the master) or not named
it for confirm_ticks ticks (its entry still serving it until then). Pure:
the DNS answers and the tokens come in as data, the decisions go out as data.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from cdnreq.model import Challenge, HostClaim, InstanceGuid, Lookup, SharedInstance
from cdnreq.decide.hostindex import Claims, HostIndex
from cdnreq.validate.hosts import challenge_names
from cdnreq.validate.policy import ValidationPolicy
from cdnreq.validate.verdict import Verdict


class Status(str, enum.Enum):
    OK = "ok"  # may be requested on the technical CDN
    INVALID = "invalid"  # parameters refused, or a host belongs to someone else
    PENDING = "pending"  # waiting for DNS proof of some hosts


@dataclass(frozen=True, slots=True)
class Gate:
    status: Status
    forward: Mapping[str, Any] | None = None  # what to request, when OK; None: as listed
    forward_hash: str | None = None  # of what is requested, when OK
    hosts: tuple[str, ...] = ()
    extras: Mapping[str, str] = field(default_factory=dict)  # shown to the customer
    error: str | None = None  # for software_instance_error
    pending: tuple[str, ...] = ()
    reason: str | None = None  # why it waits, for `cdnreq status`, when not for DNS proof
    # a pending gate's inputs (verdict, challenge, policy): the same ones give it back (see _pending)
    made: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def accept(cls, instance: SharedInstance) -> "Gate":
        """No validation: forward the parameters as they are."""
        return cls(Status.OK, None, instance.param_hash)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def why(self) -> str | None:
        """Why the instance is not requested as it is, in one sentence
        (`cdnreq status`, `cdnreq plan`); None when it passes."""
        if self.ok:
            return None
        return self.error or self.reason or f"waiting for DNS proof of {', '.join(self.pending)}"


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    label: str = "_slapos-challenge"
    recheck_interval_s: float = 86400.0
    grace_s: float = 7 * 86400.0
    release_on_recheck_failure: bool = False
    cdn_targets: tuple[str, ...] = ()
    validation: ValidationPolicy = ValidationPolicy()  # a change re-validates every instance


def decide(
    instance: SharedInstance,
    verdict: Verdict,
    *,
    index: HostIndex,
    active: set[str],
    challenge: Challenge | None,
    lookups: Mapping[str, Lookup],
    policy: DomainPolicy,
    now: float,
    last: Gate | None = None,
) -> tuple[Gate, Claims]:
    """The gate for one instance and the claims it makes, decided from
    `index` as it is; the caller applies the claims (HostIndex.apply) before
    deciding the next instance of the tick, which must see them. `last`:
    the instance's gate at the last tick, given back when made the same."""
    guid = instance.guid
    if not verdict.ok:
        return _invalid(verdict, verdict.errors), Claims()
    if not verdict.hosts:
        return _ok(instance, verdict, (), None, policy, index), Claims()
    assert verdict.registrable is not None and verdict.custom_domain is not None
    taken = [h for h in verdict.hosts if index.blocking(h, verdict.registrable, guid, active)]
    if taken:
        errors = tuple(
            f"{_field(verdict, h)}: {json.dumps(h)} is already used by another CDN entry" for h in taken
        )
        return _invalid(verdict, verdict.errors + errors), Claims()
    unproven = [h for h in verdict.hosts if not index.owns(guid, h)]
    if not unproven:
        return _ok(instance, verdict, verdict.hosts, challenge, policy, index), Claims()
    if challenge is None or challenge.domain != verdict.custom_domain:
        # no token for this domain yet: the caller issues one; pending meanwhile
        return Gate(Status.PENDING, hosts=verdict.hosts, pending=tuple(unproven)), Claims()
    still = [h for h in unproven if not _proven(h, verdict.registrable, challenge.token, lookups, policy)] if lookups else unproven
    if still:
        return _pending(verdict, still, challenge, policy, last), Claims()
    upserts: dict[str, HostClaim] = {}
    deletes: dict[str, None] = {}  # in order, once each
    taken_from: set[InstanceGuid] = set()
    for host in unproven:
        for rival in index.rivals(host, verdict.registrable, guid):
            if rival.host in upserts:
                continue  # already replaced by this instance's own claim
            taken_from.add(rival.guid)  # retained, or no longer naming it: blocking ones refused above
            if rival.host not in unproven:
                deletes[rival.host] = None
        upserts[host] = HostClaim(host, guid, verdict.registrable, now, now)
    gate = _ok(instance, verdict, verdict.hosts, challenge, policy, index, upserts)
    return gate, Claims(tuple(upserts.values()), tuple(deletes), tuple(sorted(taken_from)))


def _proven(host: str, registrable: str, token: str, lookups: Mapping[str, Lookup], policy: DomainPolicy) -> bool:
    for name in challenge_names(policy.label, host, registrable):
        lookup = lookups.get(name)
        if lookup is not None and lookup.outcome == "found" and token in lookup.values:
            return True
    return False


def _field(verdict: Verdict, host: str) -> str:
    return "custom_domain" if host == verdict.custom_domain else "server-alias"


def _warnings(
    verdict: Verdict, hosts: Iterable[str], index: HostIndex, policy: DomainPolicy, new: Mapping[str, HostClaim]
) -> list[str]:
    warnings = list(verdict.warnings)
    for host in hosts:
        claim = new.get(host) or index.by_host.get(host)
        if claim is not None and claim.failing_since is not None:
            since = datetime.fromtimestamp(claim.failing_since, timezone.utc).date().isoformat()
            then = "the host will be released after the grace period unless it is restored"
            then = then if policy.release_on_recheck_failure else "please restore it"
            warnings.append(f"{json.dumps(host)}: the DNS proof of ownership is missing since {since}; {then}")
    return warnings


def _record_name(host: str, verdict: Verdict, policy: DomainPolicy) -> str:
    """Where the customer is asked to prove `host`: its own challenge record,
    or its closest parent's when that one would be longer than DNS allows."""
    names = challenge_names(policy.label, host, verdict.registrable or "")
    return names[0] if names else f"{policy.label}.{host.removeprefix('*.')}"


def _base_extras(verdict: Verdict, challenge: Challenge | None, policy: DomainPolicy, warnings: list[str]) -> dict[str, str]:
    extras: dict[str, str] = {}
    if challenge is not None and verdict.custom_domain:
        extras["txt_record"] = _record_name(verdict.custom_domain, verdict, policy)
        extras["txt_value"] = challenge.token
    if warnings:
        extras["warning-list"] = json.dumps(warnings)
    return extras


def _ok(
    instance: SharedInstance,
    verdict: Verdict,
    hosts: tuple[str, ...],
    challenge: Challenge | None,
    policy: DomainPolicy,
    index: HostIndex,
    new: Mapping[str, HostClaim] | None = None,
) -> Gate:
    """Accepted; `new`: the claims just decided, which replace the index's for their hosts."""
    extras = _base_extras(verdict, challenge, policy, _warnings(verdict, hosts, index, policy, new or {}))
    return Gate(Status.OK, verdict.forward, forward_hash(instance, verdict), tuple(hosts), extras)


def forward_hash(instance: SharedInstance, verdict: Verdict) -> str:
    """The hash of what is requested for a valid instance: its parameters as
    listed unless validation respelled or dropped some."""
    return verdict.forward_hash if verdict.forward is not None else instance.param_hash  # type: ignore[return-value]


def waiting(gate: Gate, hosts: Iterable[str]) -> Gate:
    """An OK gate held back: another entry still serves some of its hosts
    (its destroy not yet read back). Shown to the customer as pending."""
    busy = list(hosts)
    extras = dict(gate.extras)
    extras["message"] = (
        f"Waiting for the previous CDN entry of {', '.join(busy)} to be removed;"
        " this entry is requested on the CDN once it is gone."
    )
    extras["pending-host-list"] = json.dumps(busy)
    return Gate(Status.PENDING, extras=extras, hosts=gate.hosts, pending=tuple(busy), reason=extras["message"])


def refused(errors: tuple[str, ...]) -> Gate:
    """The gate of an instance refused before validation (an unusable listing entry)."""
    return _invalid(Verdict(errors=errors), errors)


def _invalid(verdict: Verdict, errors: tuple[str, ...]) -> Gate:
    message = "The CDN could not accept this entry: " + "; ".join(errors)
    extras = {"request-error-list": json.dumps(list(errors)), "message": message}
    if verdict.warnings:
        extras["warning-list"] = json.dumps(list(verdict.warnings))
    return Gate(Status.INVALID, extras=extras, error=message, hosts=verdict.hosts)


def _pending(
    verdict: Verdict, still: list[str], challenge: Challenge, policy: DomainPolicy, last: Gate | None = None
) -> Gate:
    """Waiting for DNS proof of `still`: what the customer is asked to
    publish. A function of its inputs alone, so the last tick's gate made
    of the same (by identity: they are kept between ticks) is given back
    rather than made again: 10,000 pending instances at every tick."""
    made = last.made if last is not None else ()
    if made and made[0] is verdict and made[1] is challenge and made[2] is policy and last.pending == tuple(still):  # type: ignore[union-attr]
        return last  # type: ignore[return-value]
    extras = _base_extras(verdict, challenge, policy, list(verdict.warnings))
    ways = "; ".join(dict.fromkeys(_record_name(h, verdict, policy) for h in still))
    assert verdict.registrable is not None
    extras["message"] = (
        f"To prove that you own {', '.join(still)}, add a DNS TXT record with the value"
        f" {challenge.token} at {ways}, or once at {policy.label}.{verdict.registrable}"
        f" to prove every host under {verdict.registrable}. This entry is requested on"
        " the CDN once every host is proven."
    )
    extras["pending-host-list"] = json.dumps(still)
    return Gate(Status.PENDING, extras=extras, hosts=verdict.hosts, pending=tuple(still), made=(verdict, challenge, policy))

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
from typing import Any, Collection, Iterable, Iterator, Mapping

from cdnreq.model import Challenge, HostClaim, InstanceGuid, Lookup, SharedInstance
from cdnreq.validate.hosts import challenge_names, overlaps
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


class HostIndex:
    """Who owns which host; conflicts can only arise within a registrable domain.

    Hosts by guid and by domain are held as the one host's string when
    there is one (nearly always: a tuple of one costs 72 bytes more, twice
    per host at 100,000 owners), as a tuple when a few, as an ordered dict
    past _FEW (a registrable domain may hold 100,000s: one platform's
    subdomains), so adding or dropping one never copies them all; read them
    through owned() and in_domain(). `_below` files a host under each
    parent of its base strictly between it and its registrable domain
    (only hosts two labels or more below it), so rivals() finds what a
    wildcard covers without walking the domain.
    """

    def __init__(self, claims: Iterable[HostClaim] = ()):
        self.by_host: dict[str, HostClaim] = {}
        self._by_guid: dict[str, _Held] = {}
        self._by_domain: dict[str, _Held] = {}
        self._below: dict[str, _Held] = {}
        self.touched: set[str] = set()  # guids whose claims changed since last taken
        # hosts whose owner has not named them, or not been listed, for
        # confirm_ticks ticks: contestable (set by each tick, see decide/domainstep.contested)
        self.unnamed: frozenset[str] = frozenset()
        # hosts whose owner left the master fewer than confirm_ticks ticks ago: still blocking
        self.recent: frozenset[str] = frozenset()
        for claim in claims:
            self.put(claim)

    def put(self, claim: HostClaim) -> None:
        self.drop(claim.host)
        self.by_host[claim.host] = claim
        _add(self._by_guid, claim.guid, claim.host)
        _add(self._by_domain, claim.registrable, claim.host)
        for parent in _between(claim.host, claim.registrable):
            _add(self._below, parent, claim.host)
        self.touched.add(claim.guid)

    def drop(self, host: str) -> None:
        old = self.by_host.pop(host, None)
        if old is not None:
            _remove(self._by_guid, old.guid, host)
            _remove(self._by_domain, old.registrable, host)
            for parent in _between(host, old.registrable):
                _remove(self._below, parent, host)
            self.touched.add(old.guid)

    def apply(self, claims: "Claims") -> None:
        """What gate.decide decided: the rivals' hosts go, the new claims come,
        contestable no more this tick (a second prover is refused, not given them)."""
        for host in claims.deletes:
            self.drop(host)
        for claim in claims.upserts:
            self.put(claim)
        if claims.upserts and self.unnamed:
            self.unnamed = self.unnamed.difference(c.host for c in claims.upserts)

    def take_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched

    def drop_guid(self, guid: str) -> None:
        for host in self.owned(guid):
            self.drop(host)

    def owned(self, guid: str) -> tuple[str, ...]:
        """The hosts `guid` owns, in the order it proved them."""
        return _hosts(self._by_guid.get(guid))

    def in_domain(self, registrable: str) -> tuple[str, ...]:
        """The hosts claimed under one registrable domain."""
        return _hosts(self._by_domain.get(registrable))

    def owned_by_others(self, guids: Collection[str]) -> Iterator[str]:
        """The hosts of every owner not in `guids`."""
        by_guid = self._by_guid
        for guid in [g for g in by_guid if g not in guids]:  # one comprehension over 100,000 owners, nearly all in `guids`
            yield from _hosts(by_guid[guid])

    def hosts_of(self, guid: str) -> set[str]:
        return set(self.owned(guid))

    def owns(self, guid: str, host: str) -> bool:
        claim = self.by_host.get(host)
        return claim is not None and claim.guid == guid

    def blocking(self, host: str, registrable: str, guid: str, active: set[str]) -> list[HostClaim]:
        """Rivals that make a claim on `host` fail at once: owners on the
        master that name it, and owners gone from it (retained) for fewer than
        confirm_ticks ticks (`recent`). A host its owner has not named, or
        been listed, for longer (`unnamed`) may be taken by DNS proof: one
        listing never hands a live host over."""
        unnamed, recent = self.unnamed, self.recent
        return [
            r for r in self.rivals(host, registrable, guid)
            if (r.guid in active or r.host in recent) and r.host not in unnamed
        ]

    def rivals(self, host: str, registrable: str, guid: str) -> list[HostClaim]:
        """Claims of other instances on this host or overlapping it (wildcards),
        within `registrable`. A domain of a few hosts (nearly all) is walked;
        in a large one, the claims on its base and its wildcard, the wildcards
        above it and, for a wildcard, the hosts below it: what `host` names,
        not what the domain holds (but `*.` the domain itself covers it all)."""
        by_host, held = self.by_host, self._by_domain.get(registrable)
        if held is None:
            return []
        if held.__class__ is not dict:
            return [c for h in _hosts(held) if (c := by_host[h]).guid != guid and overlaps(h, host)]
        base = host[2:] if host.startswith("*.") else host
        found = dict.fromkeys([base, f"*.{base}", *(f"*.{p}" for p in _parents(base, registrable))])
        if host.startswith("*."):
            below = self.in_domain(registrable) if base == registrable else _hosts(self._below.get(base))
            found.update(dict.fromkeys(below))
        return [
            c for h in found
            if (c := by_host.get(h)) is not None and c.registrable == registrable and c.guid != guid and overlaps(h, host)
        ]


_Held = str | tuple[str, ...] | dict[str, None]
_FEW = 16  # past this, hosts are held in an ordered dict: adding or dropping one copies none


def _hosts(held: _Held | None) -> tuple[str, ...]:
    if held is None:
        return ()
    if held.__class__ is str:
        return (held,)  # type: ignore[return-value]
    return held if held.__class__ is tuple else tuple(held)  # type: ignore[return-value]


def _add(index: dict[str, _Held], key: str, host: str) -> None:
    held = index.get(key)
    if held is None:
        index[key] = host
    elif held.__class__ is dict:
        held[host] = None  # type: ignore[index]
    else:
        hosts = (*_hosts(held), host)
        index[key] = hosts if len(hosts) <= _FEW else dict.fromkeys(hosts)


def _remove(index: dict[str, _Held], key: str, host: str) -> None:
    held = index.get(key)
    if held.__class__ is dict:
        held.pop(host, None)  # type: ignore[union-attr]
        if len(held) > 1:  # type: ignore[arg-type]
            return
    rest = tuple(h for h in _hosts(held) if h != host)
    if len(rest) > 1:
        index[key] = rest
    elif rest:
        index[key] = rest[0]
    else:
        index.pop(key, None)


def _parents(base: str, registrable: str) -> Iterator[str]:
    """The parents of `base` down to `registrable`, inclusive, nearest first
    (none when it is not under it)."""
    if not base.endswith(f".{registrable}"):
        return
    name = base
    while name != registrable:
        name = name.split(".", 1)[1]
        yield name


def _between(host: str, registrable: str) -> Iterable[str]:
    """The parents of `host`'s base strictly above `registrable`: where _below
    files it (none for a host one label below it, nearly every host: no work)."""
    base = host[2:] if host.startswith("*.") else host
    if base.count(".") <= registrable.count(".") + 1:
        return ()
    return [p for p in _parents(base, registrable) if p != registrable]


@dataclass(frozen=True, slots=True)
class Claims:
    """What the gate decided about hosts this tick."""

    upserts: tuple[HostClaim, ...] = ()
    deletes: tuple[str, ...] = ()  # rivals' hosts that go (those it claims itself are replaced)
    taken_from: tuple[InstanceGuid, ...] = ()  # retained instances that lost a host


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
) -> tuple[Gate, Claims]:
    """The gate for one instance and the claims it makes, decided from
    `index` as it is; the caller applies the claims (HostIndex.apply) before
    deciding the next instance of the tick, which must see them."""
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
        return _pending(verdict, still, challenge, policy), Claims()
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


def _pending(verdict: Verdict, still: list[str], challenge: Challenge, policy: DomainPolicy) -> Gate:
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
    return Gate(Status.PENDING, extras=extras, hosts=verdict.hosts, pending=tuple(still))

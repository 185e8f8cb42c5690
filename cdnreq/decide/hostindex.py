"""Who owns which host, and what a gate decided about hosts (Claims).

A host belongs to the first instance to prove it (see decide/gate.py); the
index answers who that is, which hosts an instance owns, and which claims
may overlap a host (a wildcard covers the names below it). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Iterator

from cdnreq.model import HostClaim, InstanceGuid
from cdnreq.validate.hosts import overlaps

__all__ = ["Claims", "HostIndex"]


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

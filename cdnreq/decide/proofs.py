"""Which DNS names to ask, and which instances must be decided together.

Pure helpers of the domain step. Instances contend for a host only within
one registrable domain (see HostIndex.rivals), so the step decides them by
groups of registrable domains: a group waits for its own DNS answers only,
and a tick can request the instances of one group while the next group's
names are still being resolved, with the same gates as one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from cdnreq.model import Lookup
from cdnreq.model import HostClaim
from cdnreq.decide.gate import DomainPolicy, HostIndex
from cdnreq.validate.hosts import challenge_names
from cdnreq.validate.verdict import Verdict


def host_names(
    verdict: Verdict, guid: str, index: HostIndex, active: set[str], policy: DomainPolicy
) -> list[tuple[str, ...]]:
    """For each host the instance does not own yet, the TXT names that may
    prove it, most specific first; none when an active rival makes DNS moot
    (gate.decide refuses the same hosts)."""
    if not verdict.ok or not verdict.registrable:
        return []
    wanted: list[tuple[str, ...]] = []
    for host in verdict.hosts:
        if index.owns(guid, host):
            continue
        if index.blocking(host, verdict.registrable, guid, active):
            return []
        wanted.append(tuple(challenge_names(policy.label, host, verdict.registrable)))
    return wanted


def proves(lookup: Lookup | None, token: str | None) -> bool:
    return lookup is not None and lookup.outcome == "found" and token is not None and token in lookup.values


def second_names(
    wanted: Iterable[tuple[str, ...]], token: str | None, answers: Mapping[str, Lookup]
) -> set[str]:
    """The parents to ask for hosts their own name did not prove. A token at
    the host's own name proves it whatever its parents hold, so most hosts
    cost one lookup instead of one per level."""
    names: set[str] = set()
    for candidates in wanted:
        if len(candidates) > 1 and not proves(answers.get(candidates[0]), token):
            names.update(candidates[1:])
    return names


@dataclass(slots=True)
class Group:
    """Instances and re-checks that share registrable domains (slots: a
    first reconcile makes one for each of 100,000 new instances)."""

    order: tuple = ()  # the first member's decision order (created_at, guid), to sort groups
    members: list[str] = field(default_factory=list)  # present instances, to decide
    settled: list[str] = field(default_factory=list)  # settled, decided again if a re-check touches them
    rechecks: list[HostClaim] = field(default_factory=list)
    names: set[str] = field(default_factory=set)  # first-round TXT names (re-checks ask all theirs)


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, key: str) -> None:
        self.parent.setdefault(key, key)

    def find(self, key: str) -> str:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, keys: list[str]) -> str:
        roots = [self.find(k) for k in keys]
        for other in roots[1:]:
            self.parent[other] = roots[0]
        return roots[0]


def domains_of(verdicts: Mapping[str, Verdict], index: HostIndex) -> dict[str, set[str]]:
    """The registrable domains each instance competes in: those of the hosts
    it holds and that of its custom domain (group's keys)."""
    keys: dict[str, set[str]] = {}
    for guid, verdict in verdicts.items():
        keys[guid] = {index.by_host[h].registrable for h in index.hosts_of(guid)}
        if verdict.registrable:
            keys[guid].add(verdict.registrable)
    return keys


def group(
    *,
    asking: Mapping[str, list[tuple[str, ...]]],
    keys: Mapping[str, set[str]],
    order: Mapping[str, tuple],
    rechecks: Iterable[HostClaim],
    settled: Iterable[str] = (),
) -> tuple[list[str], list[Group]]:
    """Split the instances to decide into those needing no DNS answer
    (returned first, in decision order) and groups that wait for DNS.

    asking: guid -> its hosts' names (host_names), for instances to look up;
    keys: guid -> the registrable domains it names or owns hosts in, for
    every instance to decide; order: guid -> its decision order key.
    A registrable domain waits when an instance looks a host up in it or one
    of its claims is re-checked; an instance waits with every such domain it
    touches, so no decision can depend on an answer that is not in yet.
    """
    union = _Union()
    for guid, wanted in asking.items():
        if any(wanted):  # refused anyway when empty: no answer to wait for
            for registrable in keys[guid]:
                union.add(registrable)
    due = list(rechecks)
    for claim in due:
        union.add(claim.registrable)
    touching: dict[str, list[str]] = {}
    for guid, registrables in keys.items():
        hits = [r for r in registrables if r in union.parent]
        if hits:
            touching[guid] = hits
            union.union(hits)  # one instance ties its domains together
    at_once = sorted((g for g in keys if g not in touching), key=order.__getitem__)
    groups: dict[str, Group] = {}

    def of(registrable: str) -> Group:
        return groups.setdefault(union.find(registrable), Group())

    for guid in sorted(touching, key=order.__getitem__):
        found = of(touching[guid][0])
        found.members.append(guid)
        if not found.order:
            found.order = order[guid]
        for candidates in asking.get(guid, ()):
            if candidates:
                found.names.add(candidates[0])
    owners = set(settled)
    for claim in due:
        found = of(claim.registrable)
        found.rechecks.append(claim)
        if claim.guid in owners and claim.guid not in found.settled:
            found.settled.append(claim.guid)
    # groups of re-checks alone first: they may unsettle gates
    return at_once, sorted(groups.values(), key=lambda g: g.order or (float("-inf"), ""))


def chunks(groups: list[Group], size: int, first: int | None = None) -> list[list[Group]]:
    """Whole groups, about `size` first-round names a chunk; the first
    chunks smaller (from `first`, doubling), so requests start early while
    later lookups are shared by many names."""
    out: list[list[Group]] = []
    current: list[Group] = []
    count = 0
    limit = min(size, first or size)
    for found in groups:
        current.append(found)
        count += len(found.names) + len(found.rechecks)
        if count >= limit:
            out.append(current)
            current, count, limit = [], 0, min(size, limit * 2)
    if current:
        out.append(current)
    return out

"""Whether to look a name up now: the one home of that decision.

A pending challenge is looked up less often as it ages; an instance is
asked about only for hosts it does not own and no active rival blocks;
claims due for a re-check add their names (or their addresses); the first
round is cut into chunks of registrable-domain groups, the first ones small
so the first requests need not wait."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cdnreq.decide import recheck
from cdnreq.decide.gate import DomainPolicy, HostIndex
from cdnreq.decide.proofs import Group, host_names
from cdnreq.model import Challenge, HostClaim
from cdnreq.validate.verdict import Verdict

PENDING_MIN_S = 0.0
PENDING_MAX_S = 600.0
CHUNK_NAMES = 1024  # first-round names resolved together before their instances are decided
FIRST_CHUNK_NAMES = 128  # the first chunks are smaller: the first requests need not wait
CHUNKS_IN_FLIGHT = 2
SLOW_CHUNK_S = 0.5  # a chunk not done by then stops holding back the next one


@dataclass
class LookupSchedule:
    """When each pending instance is next looked up: (param_hash, time)."""

    next_lookup: dict[str, tuple[str, float]] = field(default_factory=dict)

    def due(self, guid: str, param_hash: str, now: float, sighting: bool = True) -> bool:
        """A time further ahead than the longest wait is not believed: a
        clock set back, or a store restored onto another host, would
        otherwise defer a customer's proof by as much. A tick started at
        once to take on newcomers (`sighting` false) looks up only what was
        never looked up for these parameters: the earlier slices' pending
        proofs wait for the next scheduled tick."""
        scheduled = self.next_lookup.get(guid)
        if scheduled is not None and scheduled[0] == param_hash and not sighting:
            return False
        return (
            scheduled is None or scheduled[0] != param_hash or not now < scheduled[1] <= now + PENDING_MAX_S
        )

    def defer(self, guid: str, param_hash: str, challenge: Challenge | None, now: float) -> None:
        """Still pending: look again after a tenth of the challenge's age, at
        most PENDING_MAX_S. A customer who has just been told what to add is
        answered at the next tick; a challenge ignored for days costs one
        lookup every ten minutes, not one a tick."""
        age = now - challenge.created_at if challenge is not None else 0.0
        delay = min(PENDING_MAX_S, max(PENDING_MIN_S, age / 10))
        scheduled = self.next_lookup.get(guid)
        if scheduled is not None and scheduled[0] == param_hash:
            param_hash = scheduled[0]  # the string held already: the listing's copy goes with the tick
        self.next_lookup[guid] = (param_hash, now + delay)

    def forget(self, guid: str) -> None:
        self.next_lookup.pop(guid, None)


@dataclass(frozen=True)
class FirstRound:
    challenged: list[str]  # valid, naming a host not owned yet: needs a challenge for its domain
    asking: dict[str, list[tuple[str, ...]]]  # the TXT names to ask now (see proofs.host_names)
    deferred: int  # pending, not due for a lookup this tick


def first_round(
    verdicts: Mapping[str, Verdict],
    param_hashes: Mapping[str, str],
    index: HostIndex,
    active: set[str],
    policy: DomainPolicy,
    schedule: LookupSchedule,
    now: float,
    challenged_for: Mapping[str, str] | None = None,
    sighting: bool = True,
) -> FirstRound:
    """Who needs a proof (even when refused for now: a re-check may free the
    host), and of those, who is asked about this tick. `challenged_for`: the
    domain each instance's challenge was issued for. One whose challenge is
    for another domain than it names gets one for its own even while it
    holds its hosts: the re-checks of those look for that challenge's token,
    and the customer is shown it."""
    challenged: list[str] = []
    asking: dict[str, list[tuple[str, ...]]] = {}
    deferred = 0
    issued = challenged_for or {}
    for guid, verdict in verdicts.items():
        if not verdict.ok:
            continue
        if any(not index.owns(guid, h) for h in verdict.hosts):
            challenged.append(guid)
            if schedule.due(guid, param_hashes[guid], now, sighting):
                asking[guid] = host_names(verdict, guid, index, active, policy)
            else:
                deferred += 1
        elif verdict.custom_domain is not None and issued.get(guid, verdict.custom_domain) != verdict.custom_domain:
            challenged.append(guid)
    return FirstRound(challenged, asking, deferred)


def recheck_lookups(due: Iterable[HostClaim], policy: DomainPolicy) -> tuple[set[str], set[str]]:
    """The TXT names and the hosts (by address) that claims due for a re-check need."""
    names: set[str] = set()
    hosts: set[str] = set()
    for claim in due:
        if recheck.by_address(claim, policy):
            hosts.add(claim.host)
        else:
            names.update(recheck.names(claim, policy))
    return names, hosts


def chunk_lookups(part: Iterable[Group], policy: DomainPolicy) -> tuple[list[HostClaim], set[str], set[str]]:
    """A chunk's re-checks, and the TXT names and hosts to resolve for it."""
    groups = list(part)
    due = [c for found in groups for c in found.rechecks]
    names, hosts = recheck_lookups(due, policy)
    names |= set().union(*(found.names for found in groups))
    return due, names, hosts


def first_round_total(asking: Mapping[str, list[tuple[str, ...]]], due: Iterable[HostClaim], policy: DomainPolicy) -> int:
    """At most how many lookups the step makes (the progress shown during DNS)."""
    names = {n for wanted in asking.values() for candidates in wanted for n in candidates}
    more, hosts = recheck_lookups(due, policy)
    return len(names | more) + len(hosts)

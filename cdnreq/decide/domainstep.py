"""The domain step's decisions that need no DNS answer, and the value it
hands to the tick: which instances keep last tick's gate, which hosts lost
their owner's naming long enough to be contested or released, and what a
stage decided (DomainStep), stored before any request it allows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdnreq.decide.gate import Gate, HostIndex
from cdnreq.decide.guards import release_due
from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceGuid, Record, RequestedState, SharedInstance
from cdnreq.validate.verdict import Verdict


@dataclass
class DomainStep:
    """What the step decided; committed before any request goes out."""

    gates: dict[str, Gate] = field(default_factory=dict)
    host_upserts: dict[str, HostClaim] = field(default_factory=dict)
    host_deletes: set[str] = field(default_factory=set)
    challenges: list[Challenge] = field(default_factory=list)
    challenge_deletes: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    taken_from: set[str] = field(default_factory=set)  # retained instances that lost a host
    decisions: dict[str, Decision] = field(default_factory=dict)  # verdicts and settled gates to keep

    def claim(self, claim: HostClaim) -> None:
        self.host_deletes.discard(claim.host)
        self.host_upserts[claim.host] = claim

    def release(self, host: str) -> None:
        self.host_upserts.pop(host, None)
        self.host_deletes.add(host)

    def merge(self, later: "DomainStep") -> None:
        """Add a later stage's decisions, as if they had been made here."""
        self.gates.update(later.gates)
        for host in later.host_deletes:
            self.release(host)
        for claim in later.host_upserts.values():
            self.claim(claim)
        self.challenges += later.challenges
        self.challenge_deletes |= later.challenge_deletes
        self.events += later.events
        self.counts.update(later.counts)
        self.taken_from |= later.taken_from
        self.decisions.update(later.decisions)


def split_settled(
    instances: Iterable[SharedInstance], cache: Mapping[str, tuple[str, Gate]], gates: dict[str, Gate],
    asleep: Collection[str] = (),
) -> tuple[dict[str, SharedInstance], dict[str, SharedInstance]]:
    """Instances to decide this tick, and those whose gate from the last tick
    still holds (put in `gates`). The first listing of a guid counts, as for
    the planner: one listed first as destroyed gets no gate. An instance
    asleep (decide/dormancy.py: settled, listed as it fell asleep) counts as
    settled, without a gate: the planner skips it."""
    present: dict[str, SharedInstance] = {}
    settled: dict[str, SharedInstance] = {}
    dropped: set[str] = set()
    destroyed = RequestedState.DESTROYED
    for instance in instances:  # the one loop over every instance: kept lean
        guid = instance.guid
        if instance.state is destroyed or guid in settled:
            if guid not in present and guid not in settled:
                dropped.add(guid)
            continue
        if asleep and guid in asleep:
            settled[guid] = instance
            continue
        cached = cache.get(guid)
        if cached is not None and cached[0] == instance.param_hash:
            settled[guid] = instance
            gates[guid] = cached[1]
        else:
            present.setdefault(guid, instance)
    for guid in dropped:
        present.pop(guid, None)
        settled.pop(guid, None)
        gates.pop(guid, None)
    return present, settled


def unnamed_hosts(
    index: HostIndex, verdicts: Mapping[str, Verdict], active: set[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """Hosts owned by a listed instance that no longer names them (settled
    instances name all theirs), and hosts whose owner is not listed: each
    contestable by DNS proof once so for confirm_ticks ticks, see
    contested() and HostIndex.blocking."""
    unnamed: set[str] = set()
    for guid, verdict in verdicts.items():
        owned = index.owned(guid)
        if owned and verdict.ok:
            unnamed.update(h for h in owned if h not in verdict.hosts)
    absent = set(index.owned_by_others(active))
    return frozenset(unnamed), frozenset(absent)


def contested(
    streaks: Mapping[str, int], unnamed: Iterable[str], confirm_ticks: int, step: int = 1
) -> tuple[dict[str, int], frozenset[str]]:
    """Of the hosts their owner does not name this tick (or is not listed),
    those it has not named for `confirm_ticks` consecutive ticks: only these
    may be proven by another. One listing is never enough evidence: a master
    that lists an owner with another custom_domain, or leaves it out, for one
    tick must not hand its live host to a rival. Returns the new streaks too.
    `step` 0: a tick that is no new sighting (started at once to take on
    newcomers, decide/admission.py) starts streaks but advances none."""
    cap = max(1, confirm_ticks)  # a due streak stops changing: idle ticks write nothing
    new = {host: min(cap, max(1, streaks.get(host, 0) + step)) for host in unnamed}
    return new, frozenset(h for h, ticks in new.items() if release_due(ticks, confirm_ticks))


def unlisted_releases(
    index: HostIndex,
    verdicts: Mapping[str, Verdict],
    known: Mapping[InstanceGuid, Record],
    streaks: Mapping[str, int],
    confirm_ticks: int,
    step: int = 1,
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """A present instance keeps only the hosts it names or still serves, and
    a host it stops naming only once it has not named it for `confirm_ticks`
    consecutive ticks: a master that lists everyone without a custom_domain
    for one tick releases no claim. Returns (guid, host) to release and the
    streaks of those still counting. `step` as in contested()."""
    unserved: dict[str, int] = {}
    releases: list[tuple[str, str]] = []
    for guid, verdict in verdicts.items():
        owned = index.hosts_of(guid)
        if not owned or not verdict.ok:
            continue
        record = known.get(InstanceGuid(guid))
        keep = set(verdict.hosts) | set((record.served if record else None) or ())
        for host in sorted(owned - keep):
            ticks = unserved[host] = max(1, streaks.get(host, 0) + step)
            if release_due(ticks, confirm_ticks):
                del unserved[host]
                releases.append((guid, host))
    return releases, unserved


def saved_streaks(saved: Any) -> dict[str, int]:
    """Streaks as stored (JSON): anything unexpected counts as no streak."""
    if not isinstance(saved, Mapping):
        return {}
    return {h: n for h, n in saved.items() if isinstance(h, str) and isinstance(n, int) and n > 0}

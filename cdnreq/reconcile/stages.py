"""The domain step of one tick, in stages (see DomainRun).

Split from cdnreq/reconcile/domains.py, which keeps what lives between ticks
(the host index, the challenges, the caches) and the rules applied here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Iterable, Mapping

from cdnreq.model import Lookup
from cdnreq.model import Challenge, Event, HostClaim, InstanceGuid, Record, RequestedState, SharedInstance
from cdnreq.decide import recheck
from cdnreq.decide.gate import Gate, HostIndex, Status
from cdnreq.decide.proofs import Group, chunks, group, host_names, second_names
from cdnreq.validate.verdict import Verdict

if TYPE_CHECKING:
    from cdnreq.reconcile.domains import Domains

CHUNK_NAMES = 1024  # first-round names resolved together before their instances are decided
FIRST_CHUNK_NAMES = 128  # the first chunks are smaller: the first requests need not wait
CHUNKS_IN_FLIGHT = 2
SLOW_CHUNK_S = 0.5  # a chunk not done by then stops holding back the next one


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


class DomainRun:
    """One tick's domain step in stages. `first` is decided at once (no DNS
    needed); `later` holds the instances that wait for DNS, which
    `resolve()` decides group by group as answers come in; `finish()`
    releases hosts no longer named. Each stage is committed before the
    requests it allows go out."""

    def __init__(
        self,
        domains: Domains,
        instances: Iterable[SharedInstance],
        known: Mapping[InstanceGuid, Record],
        now: float,
        tick: int | None,
    ):
        d = self.domains = domains
        self.known, self.now, self.tick = known, now, tick
        out = self.first = DomainStep()
        if d.policy != d._settled_policy:  # e.g. a reload with another backend deny-list
            d._settled.clear()
            d._verdicts.clear()
            d._settled_policy = d.policy
        for guid in d.index.take_touched():
            d._settled.pop(guid, None)
        gates = out.gates
        present, settled = _split(instances, d._settled, gates)
        active = set(present)
        active.update(settled)
        self.present, self.settled, self.active = present, settled, active
        self.verdicts = {g: d.verdict(i) for g, i in present.items()}
        unnamed, absent = _unnamed(d.index, self.verdicts, active)
        d.index.unnamed = d.contestable(unnamed | absent)
        d.index.recent = absent - d.index.unnamed
        self.decided: dict[str, Verdict] = {}  # for finish()
        self.asked: set[str] = set()
        self.asking: dict[str, list[tuple[str, ...]]] = {}
        index, policy = d.index, d.policy
        for guid, verdict in self.verdicts.items():
            if verdict.ok and any(not index.owns(guid, h) for h in verdict.hosts):
                # even when refused for now: a re-check may free the host
                d._ensure_challenge(InstanceGuid(guid), verdict, now, tick, out)
                if d._due(guid, present[guid].param_hash, now):
                    self.asking[guid] = host_names(verdict, guid, index, active, policy)
                    self.asked.add(guid)
                else:
                    out.counts["dns_deferred"] += 1
        due = recheck.due(index.by_host.values(), active, now, policy)
        keys = {}
        for guid, verdict in self.verdicts.items():
            keys[guid] = {index.by_host[h].registrable for h in index.hosts_of(guid)}
            if verdict.registrable:
                keys[guid].add(verdict.registrable)
        self.order = self._orders(present)
        at_once, groups = group(asking=self.asking, keys=keys, order=self.order, rechecks=due, settled=settled)
        self.held = {g: gates.pop(g) for found in groups for g in found.settled}  # a re-check may change them
        self.later = {g for found in groups for g in found.members} | set(self.held)
        self.chunks = chunks(groups, CHUNK_NAMES, FIRST_CHUNK_NAMES)
        names = {n for wanted in self.asking.values() for candidates in wanted for n in candidates}
        for claim in due:
            if not recheck.by_address(claim, policy):
                names.update(recheck.names(claim, policy))
        self.dns_total = len(names) + sum(1 for c in due if recheck.by_address(c, policy))  # at most
        out.counts[f"gate_{Status.OK.value}"] += len(settled) - len(self.held)
        self._decide(at_once, {}, out)

    def _orders(self, guids: Iterable[str]) -> dict[str, tuple[float, str]]:
        known, now = self.known, self.now
        return {g: (known[g].created_at if g in known else now, g) for g in guids}  # type: ignore[index]

    def _decide(self, order: list[str], lookups: Mapping[str, Lookup], out: DomainStep) -> None:
        self.domains._decide(
            order, self.present, self.verdicts, self.active, self.asked, lookups, self.now, self.tick, out
        )
        for guid in order:
            self.decided[guid] = self.verdicts[guid]

    async def resolve(self) -> AsyncIterator[DomainStep]:
        """The waiting instances' gates, chunk by chunk as answers arrive
        (groups are independent of each other); chunks done meanwhile come
        merged, so they are stored in one transaction."""
        if not self.chunks:
            return
        ready: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(CHUNKS_IN_FLIGHT)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []

        async def run(part: list[Group]) -> None:
            holding = True

            def free() -> None:
                nonlocal holding
                if holding:
                    holding = False
                    slots.release()

            # a chunk held up by a silent name lets the next one start: a
            # timeout then delays its own groups only, as in one big batch
            timer = loop.call_later(SLOW_CHUNK_S, free)
            try:
                ready.put_nowait(await self._chunk(part))
            except Exception as error:  # handed to the consumer, which raises it
                ready.put_nowait(error)
            finally:
                timer.cancel()
                free()

        async def launch() -> None:
            for part in self.chunks:
                await slots.acquire()
                tasks.append(asyncio.create_task(run(part)))

        launcher = asyncio.create_task(launch())
        try:
            left = len(self.chunks)
            while left:
                items = [await ready.get()]
                while not ready.empty():
                    items.append(ready.get_nowait())
                left -= len(items)
                for item in items:
                    if isinstance(item, Exception):
                        raise item
                out = DomainStep()
                for item in items:
                    out.merge(item)
                yield out
        finally:
            launcher.cancel()
            for task in tasks:
                task.cancel()

    async def _chunk(self, part: list[Group]) -> DomainStep:
        d, policy = self.domains, self.domains.policy
        out = DomainStep()
        due = [c for found in part for c in found.rechecks]
        names = set().union(*(found.names for found in part))
        for claim in due:
            if not recheck.by_address(claim, policy):
                names.update(recheck.names(claim, policy))
        txt, addresses = await d._resolve(names, {c.host for c in due if recheck.by_address(c, policy)})
        parents: set[str] = set()
        for found in part:
            for guid in found.members:
                challenge = d.challenges.get(InstanceGuid(guid))
                parents |= second_names(self.asking.get(guid, ()), challenge.token if challenge else None, txt)
        parents.difference_update(txt)
        if parents:
            txt.update(await d.resolver.txt_many(sorted(parents)))
        for lookup in txt.values():
            out.counts[f"dns_{lookup.outcome}"] += 1
        # groups are independent: their re-checks, then their instances, all at once
        d.index.take_touched()  # claims decided before: not this chunk's
        d._rechecks(due, txt, addresses, self.now, self.tick, out)
        touched = d.index.take_touched()
        order = [guid for found in part for guid in found.members]
        for guid in (guid for found in part for guid in found.settled):
            if guid in touched:  # a re-check changed its claims: decide it again
                d._settled.pop(guid, None)
                self.present[guid] = self.settled.pop(guid)
                self.verdicts[guid] = d.verdict(self.present[guid])
                self.order.update(self._orders([guid]))
                order.append(guid)
            else:
                out.gates[guid] = self.held[guid]
                out.counts[f"gate_{Status.OK.value}"] += 1
        self._decide(sorted(order, key=self.order.__getitem__), txt, out)
        return out

    def finish(self) -> DomainStep:
        """Release the hosts decided instances no longer name nor serve."""
        out = DomainStep()
        self.domains._release_unlisted(self.decided, self.known, self.now, self.tick, out)
        return out


def _unnamed(
    index: HostIndex, verdicts: Mapping[str, Verdict], active: set[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """Hosts owned by a listed instance that no longer names them (settled
    instances name all theirs), and hosts whose owner is not listed: each
    contestable by DNS proof once so for confirm_ticks ticks, see
    Domains.contestable and HostIndex.blocking."""
    unnamed: set[str] = set()
    for guid, verdict in verdicts.items():
        owned = index.by_guid.get(guid)
        if owned and verdict.ok:
            unnamed.update(h for h in owned if h not in verdict.hosts)
    absent = {h for guid, owned in index.by_guid.items() if guid not in active for h in owned}
    return frozenset(unnamed), frozenset(absent)


def _split(
    instances: Iterable[SharedInstance], cache: Mapping[str, tuple[str, Gate]], gates: dict[str, Gate]
) -> tuple[dict[str, SharedInstance], dict[str, SharedInstance]]:
    """Instances to decide this tick, and those whose gate from the last tick
    still holds (put in `gates`). The first listing of a guid counts, as for
    the planner: one listed first as destroyed gets no gate."""
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

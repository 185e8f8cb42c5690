"""The domain step of a tick: validate, challenge, look up, decide.

A tick's step runs in stages (DomainRun): what needs no DNS answer is
decided at once, the rest by groups of registrable domains as their answers
come in, so requests start while DNS is still running. What the step keeps
between ticks is Domains' state (cdnreq.reconcile.domainstate). Every
decision is made in cdnreq/decide/ (gate, asking, proofs, recheck,
domainstep); this module looks names up and runs the stages.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Collection, Iterable, Mapping

from cdnreq.decide import recheck
from cdnreq.decide.asking import (
    CHUNK_NAMES, CHUNKS_IN_FLIGHT, FIRST_CHUNK_NAMES, SLOW_CHUNK_S, chunk_lookups, first_round, first_round_total,
)
from cdnreq.decide.domainstep import DomainStep, split_settled
from cdnreq.decide.gate import Status
from cdnreq.decide.proofs import Group, chunks, domains_of, group, second_names
from cdnreq.model import InstanceGuid, Record, SharedInstance
from cdnreq.reconcile.domainstate import DomainState, Lookups
from cdnreq.validate.verdict import Verdict
from cdnreq.validate.version import stamp

__all__ = ["Domains", "DomainRun", "DomainStep", "Lookups"]


class Domains(DomainState):
    """The domain step: its state between ticks, and a tick's stages."""

    def start(
        self, instances: Iterable[SharedInstance], known: Mapping[InstanceGuid, Record], now: float,
        tick: int | None = None, asleep: Collection[str] = (), listed_at: Mapping[str, float] | None = None,
        sighting: bool = True,
    ) -> DomainRun:
        """Validate, issue challenges and decide what needs no DNS answer; see
        DomainRun. `asleep`: listed instances sleeping (decide/dormancy.py),
        settled without a gate in memory. `listed_at`: when each newcomer was
        first listed (decide/admission.py), its place in the decision order.
        `sighting`: whether this tick counts towards the unnamed-host streaks
        (a tick started at once to take on newcomers does not)."""
        return DomainRun(self, instances, known, now, tick, asleep, listed_at, sighting)

    async def step(
        self,
        instances: Iterable[SharedInstance],
        known: Mapping[InstanceGuid, Record],
        now: float,
        tick: int | None = None,
        on_dns: Callable[[int], None] | None = None,
    ) -> DomainStep:
        """Every stage at once: all gates decided (tools and tests)."""
        run = self.start(instances, known, now, tick)
        if on_dns is not None:
            on_dns(run.dns_total)
        out = DomainStep()
        out.merge(run.first)
        async for part in run.resolve():
            out.merge(part)
        out.merge(run.finish())
        return out


class DomainRun:
    """One tick's domain step in stages. `first` is decided at once (no DNS
    needed); `later` holds the instances that wait for DNS, which
    `resolve()` decides group by group as answers come in; `finish()`
    releases hosts no longer named. Each stage is committed before the
    requests it allows go out."""

    def __init__(
        self, domains: Domains, instances: Iterable[SharedInstance], known: Mapping[InstanceGuid, Record],
        now: float, tick: int | None, asleep: Collection[str] = (), listed_at: Mapping[str, float] | None = None,
        sighting: bool = True,
    ):
        d = self.domains = domains
        self.known, self.now, self.tick = known, now, tick
        self.listed_at, self.step = listed_at or {}, 1 if sighting else 0
        out = self.first = DomainStep()
        d.begin_tick()
        if d.policy != d._settled_policy:  # a reload; another deny-list decides all again, a re-check's timing not
            d._settled_policy, before, d._stamp = d.policy, d._stamp, stamp(d.policy)
            if d._stamp != before:
                d._settled.clear()
                d._verdicts.clear()
        for guid in d.index.take_touched():
            d._settled.pop(guid, None)
        self.present, self.settled = split_settled(instances, d._settled, out.gates, asleep)
        for guid in self.present:  # decided afresh: a gate for its earlier parameters must not come back
            d._settled.pop(guid, None)
        self.active = set(self.present) | set(self.settled)
        self.verdicts = {g: d.verdict(i) for g, i in self.present.items()}
        fresh = d.take_fresh()
        d._begin(self.verdicts, self.active, self.step)
        self.decided: dict[str, Verdict] = {}  # for finish()
        index, policy = d.index, d.policy
        hashes = {g: i.param_hash for g, i in self.present.items()}
        issued = {g: c.domain for g in self.present if (c := d.challenges.get(InstanceGuid(g))) is not None}
        asked = first_round(self.verdicts, hashes, index, self.active, policy, d.schedule, now, issued, sighting)
        for guid in asked.challenged:
            d._challenge(InstanceGuid(guid), self.verdicts[guid], now, tick, out)
        if asked.deferred:
            out.counts["dns_deferred"] += asked.deferred
        self.asking = asked.asking
        due = recheck.due(index.by_host.values(), self.active, now, policy)
        self.order = self._orders(self.present)
        at_once, groups = group(asking=self.asking, keys=domains_of(self.verdicts, index), order=self.order,
                                rechecks=due, settled=self.settled)  # fmt: skip
        self.held = {g: out.gates.pop(g) for found in groups for g in found.settled}  # a re-check may change them
        self.later = {g for found in groups for g in found.members} | set(self.held)
        # a verdict is kept in the commit that stores its instance's record:
        # for an instance waiting for DNS, its group's (a stage never
        # committed must leave no row no tick would forget)
        self.fresh = {g: fresh.pop(g) for g in self.later if g in fresh}
        out.decisions.update(d.decisions_of(fresh))  # before the gates: a gate settled below supersedes its verdict
        self.chunks = chunks(groups, CHUNK_NAMES, FIRST_CHUNK_NAMES)
        self.dns_total = first_round_total(self.asking, due, policy)  # at most
        out.counts[f"gate_{Status.OK.value}"] += len(self.settled) - len(self.held)
        # later stages need the settled instances a re-check holds, no other:
        # the rest of the listing is freed when the tick lets go of it, before
        # the collector would walk 100,000s of live objects
        self.settled = {g: self.settled[g] for g in self.held}
        d._decide(self, at_once, {}, out)

    def _orders(self, guids: Iterable[str]) -> dict[str, tuple[float, str]]:
        known, now, listed_at = self.known, self.now, self.listed_at
        return {g: (known[g].created_at if g in known else listed_at.get(g, now), g) for g in guids}  # type: ignore[index]

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
        d = self.domains
        out = DomainStep()
        due, names, hosts = chunk_lookups(part, d.policy)
        txt, addresses = await d._resolve(names, hosts)
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
        d._rechecks(due, txt, addresses, self.now, self.tick, out, self.verdicts)
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
        out.decisions.update(d.decisions_of({g: self.fresh.pop(g) for g in order if g in self.fresh}))
        out.decisions.update(d.decisions_of(d.take_fresh()))
        d._decide(self, sorted(order, key=self.order.__getitem__), txt, out)
        return out

    def finish(self) -> DomainStep:
        """Release the hosts decided instances no longer name nor serve."""
        out = DomainStep()
        self.domains._release_unlisted(self, out)
        return out

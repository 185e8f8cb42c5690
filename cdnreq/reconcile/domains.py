"""The domain step of a tick: validate, challenge, look up, decide.

Domains holds what ownership needs between ticks (the host index, the
challenges, the caches of verdicts and settled gates, the lookup schedule,
the unnamed-host streaks). A tick's step runs in stages (DomainRun): what
needs no DNS answer is decided at once, the rest by groups of registrable
domains as their answers come in, so requests start while DNS is still
running. Every decision is made in cdnreq/decide/ (gate, asking, proofs,
recheck, domainstep); this module looks names up and keeps the state.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Protocol

from cdnreq.decide import recheck
from cdnreq.decide.asking import (
    CHUNK_NAMES, CHUNKS_IN_FLIGHT, FIRST_CHUNK_NAMES, SLOW_CHUNK_S, LookupSchedule, chunk_lookups,
    first_round, first_round_total,
)
from cdnreq.decide.domainstep import (
    DomainStep, contested, saved_streaks, split_settled, unlisted_releases, unnamed_hosts,
)
from cdnreq.decide.gate import DomainPolicy, Gate, HostIndex, Status, decide
from cdnreq.decide.guards import CONFIRM_TICKS
from cdnreq.decide.kept import settled_decision, trusted, verdict_decision
from cdnreq.decide.proofs import Group, chunks, domains_of, group, second_names
from cdnreq.dns.challenge import issue
from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceGuid, Lookup, Record, SharedInstance
from cdnreq.validate.verdict import Verdict, validate
from cdnreq.validate.version import stamp

__all__ = ["Domains", "DomainRun", "DomainStep", "Lookups"]


class Lookups(Protocol):
    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]: ...

    async def addresses(self, name: str) -> Lookup: ...

    async def close(self) -> None: ...


class Domains:
    def __init__(
        self,
        *,
        policy: DomainPolicy,
        secret: bytes,
        resolver: Lookups,
        hosts: Iterable[HostClaim] = (),
        challenges: Mapping[InstanceGuid, Challenge] | None = None,
        confirm_ticks: int = CONFIRM_TICKS,
        streaks: Mapping[str, Any] | None = None,
        kept: Iterable[Decision] = (),
    ):
        self.policy = policy
        self.secret = secret
        self.resolver = resolver
        self.index = HostIndex(hosts)
        self.challenges: dict[InstanceGuid, Challenge] = dict(challenges or {})
        # OK gates of instances owning all their hosts: nothing but their own
        # parameters or claims can change them, so an idle tick reuses them;
        # and the verdicts of the others. A restart reuses those it kept
        # (`kept`, see decide/kept.py), the claims they were made with being
        # the index just loaded.
        self._stamp = stamp(policy)
        reused = trusted(kept, self._stamp, self.index)
        self._settled, self._verdicts = reused.settled, reused.verdicts
        self._settled_policy = policy
        self._fresh: dict[str, Decision] = {}  # verdicts computed since last taken, to keep
        self.index.take_touched()
        # pending challenges are looked up less often as they age
        self.schedule = LookupSchedule(reused.next_lookup)
        # hosts their listed owner stopped naming: consecutive ticks (see
        # decide/domainstep.contested); and of those, the ones it no longer
        # serves either (see unlisted_releases)
        self.confirm_ticks = confirm_ticks
        saved = streaks if isinstance(streaks, Mapping) else {}
        self._unnamed: dict[str, int] = saved_streaks(saved.get("contest"))
        self._unserved: dict[str, int] = saved_streaks(saved.get("release"))

    def verdict(self, instance: SharedInstance) -> Verdict:
        cached = self._verdicts.get(instance.guid)
        if cached is not None and cached[0] == instance.param_hash:
            return cached[1]
        verdict = validate(instance.parameters, self.policy.validation)
        self._verdicts[instance.guid] = (instance.param_hash, verdict)
        self._fresh[instance.guid] = verdict_decision(instance.guid, instance.param_hash, self._stamp, verdict)
        return verdict

    def take_fresh(self) -> dict[str, Decision]:
        """The verdicts computed since the last call, as decisions to keep."""
        fresh, self._fresh = self._fresh, {}
        return fresh

    def forget(self, guid: str) -> None:
        """The store forgot the instance: it owns nothing any more."""
        self.index.drop_guid(guid)
        self.challenges.pop(InstanceGuid(guid), None)
        self.lost_claim(guid)

    def lost_claim(self, guid: str) -> None:
        """The instance lost a claim (taken by a rival, released by a
        re-check or because it no longer names it): nothing cached about it
        holds any more, so it is decided afresh against today's owners and
        can never win a host back on a gate from before."""
        self._verdicts.pop(guid, None)
        self._settled.pop(guid, None)
        self.schedule.forget(guid)

    def leave(self, guids: Iterable[str], now: float, tick: int | None) -> DomainStep:
        """Instances whose entry is being destroyed for good (removed, or
        retention over): their claims and challenges go now, so one that
        returns before the destroy is read back proves its domain again like
        a newcomer, and its hosts are free for whoever proves them first."""
        out = DomainStep()
        for guid in guids:
            for host in sorted(self.index.hosts_of(guid)):
                out.release(host)
                out.events.append(Event(guid, "release", "ok", now, f"{host}: its entry is being destroyed", tick))
            if self.challenges.pop(InstanceGuid(guid), None) is not None:
                out.challenge_deletes.add(guid)
            self.index.drop_guid(guid)
            self.lost_claim(guid)
        return out

    def start(
        self, instances: Iterable[SharedInstance], known: Mapping[InstanceGuid, Record], now: float,
        tick: int | None = None,
    ) -> DomainRun:
        """Validate, issue challenges and decide what needs no DNS answer; see DomainRun."""
        return DomainRun(self, instances, known, now, tick)

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

    def streaks(self) -> dict[str, dict[str, int]] | None:
        """The unnamed-host streaks, stored between ticks (a restart or
        `cdnreq once` must not start them again from nothing); None when empty."""
        if not self._unnamed and not self._unserved:
            return None
        return {"contest": dict(self._unnamed), "release": dict(self._unserved)}

    # -- applying what decide/ decided ------------------------------------------

    def _begin(self, verdicts: Mapping[str, Verdict], active: set[str]) -> None:
        """The index as this tick sees it: which hosts may be contested."""
        unnamed, absent = unnamed_hosts(self.index, verdicts, active)
        self._unnamed, self.index.unnamed = contested(self._unnamed, unnamed | absent, self.confirm_ticks)
        self.index.recent = absent - self.index.unnamed

    def _decide(self, run: DomainRun, order: Iterable[str], lookups: Mapping[str, Lookup], out: DomainStep) -> None:
        """Gates in decision order: the first to prove a host keeps it."""
        for guid in order:
            instance = run.present[guid]
            gate, claims = decide(
                instance, run.verdicts[guid], index=self.index, active=run.active,
                challenge=self.challenges.get(InstanceGuid(guid)), lookups=lookups, policy=self.policy, now=run.now,
            )
            self.index.apply(claims)  # the next instance of the tick sees them
            out.gates[guid] = gate
            out.counts[f"gate_{gate.status.value}"] += 1
            out.taken_from.update(claims.taken_from)
            for host in claims.deletes:
                out.release(host)
            for claim in claims.upserts:
                out.claim(claim)
                out.events.append(Event(guid, "claim", "ok", run.now, claim.host, run.tick))
            for loser in claims.taken_from:
                self.lost_claim(loser)
                out.events.append(Event(loser, "release", "taken", run.now, "a host was proven by another entry", run.tick))
            if gate.status is Status.PENDING and guid in run.asking:
                self.schedule.defer(guid, instance.param_hash, self.challenges.get(InstanceGuid(guid)), run.now)
                out.decisions[guid] = verdict_decision(
                    guid, instance.param_hash, self._stamp, run.verdicts[guid],
                    self.schedule.next_lookup[guid][1],
                )  # fmt: skip
            if gate.ok and self.index.hosts_of(guid) == set(gate.hosts):
                self._settled[guid] = (instance.param_hash, gate)
                out.decisions[guid] = settled_decision(guid, instance.param_hash, self._stamp, gate, self.index)
                self._verdicts.pop(guid, None)  # the gate says all; validated again if unsettled
            run.decided[guid] = run.verdicts[guid]
        self.index.take_touched()  # this step's own claims are in the gates already

    def _challenge(self, guid: InstanceGuid, verdict: Verdict, now: float, tick: int | None, out: DomainStep) -> None:
        current = self.challenges.get(guid)
        if current is not None and current.domain == verdict.custom_domain:
            return
        assert verdict.custom_domain is not None
        challenge = issue(self.secret, guid, verdict.custom_domain, now)
        self.challenges[guid] = challenge
        out.challenges.append(challenge)
        out.events.append(Event(guid, "challenge", "issued", now, f"for {verdict.custom_domain}", tick))

    async def _resolve(self, txt_names: set[str], hosts: set[str]) -> tuple[dict[str, Lookup], dict[str, Lookup]]:
        if not txt_names and not hosts:
            return {}, {}
        ordered = sorted(hosts)
        txt, found = await asyncio.gather(
            self.resolver.txt_many(sorted(txt_names)),
            asyncio.gather(*(self.resolver.addresses(h) for h in ordered)),
        )
        return txt, dict(zip(ordered, found))

    def _rechecks(self, due: list[HostClaim], txt: Mapping[str, Lookup], addresses: Mapping[str, Lookup],
                  now: float, tick: int | None, out: DomainStep) -> None:
        for claim in due:
            result = recheck.verdict(claim, self.challenges.get(claim.guid), txt, addresses.get(claim.host), self.policy)
            out.counts[f"recheck_{result}"] += 1
            after = recheck.apply(claim, result, now, self.policy)
            if after is None:
                self.index.drop(claim.host)
                self.lost_claim(claim.guid)
                out.release(claim.host)
                out.events.append(Event(claim.guid, "release", "ok", now, f"{claim.host}: proof missing past the grace period", tick))
                continue
            if after == claim:
                continue
            if claim.failing_since is None and after.failing_since is not None:
                out.events.append(Event(claim.guid, "recheck", "failing", now, claim.host, tick))
            elif claim.failing_since is not None and after.failing_since is None:
                out.events.append(Event(claim.guid, "recheck", "restored", now, claim.host, tick))
            self.index.put(after)
            out.claim(after)

    def _release_unlisted(self, run: DomainRun, out: DomainStep) -> None:
        releases, self._unserved = unlisted_releases(
            self.index, run.decided, run.known, self._unserved, self.confirm_ticks
        )
        for guid, host in releases:
            self.index.drop(host)
            self.lost_claim(guid)
            out.release(host)
            out.events.append(Event(guid, "release", "ok", run.now, f"{host}: no longer named", run.tick))


class DomainRun:
    """One tick's domain step in stages. `first` is decided at once (no DNS
    needed); `later` holds the instances that wait for DNS, which
    `resolve()` decides group by group as answers come in; `finish()`
    releases hosts no longer named. Each stage is committed before the
    requests it allows go out."""

    def __init__(
        self, domains: Domains, instances: Iterable[SharedInstance], known: Mapping[InstanceGuid, Record],
        now: float, tick: int | None,
    ):
        d = self.domains = domains
        self.known, self.now, self.tick = known, now, tick
        out = self.first = DomainStep()
        if d.policy != d._settled_policy:  # e.g. a reload with another backend deny-list
            d._settled.clear()
            d._verdicts.clear()
            d._settled_policy, d._stamp = d.policy, stamp(d.policy)
        for guid in d.index.take_touched():
            d._settled.pop(guid, None)
        self.present, self.settled = split_settled(instances, d._settled, out.gates)
        self.active = set(self.present) | set(self.settled)
        self.verdicts = {g: d.verdict(i) for g, i in self.present.items()}
        fresh = d.take_fresh()
        d._begin(self.verdicts, self.active)
        self.decided: dict[str, Verdict] = {}  # for finish()
        index, policy = d.index, d.policy
        hashes = {g: i.param_hash for g, i in self.present.items()}
        asked = first_round(self.verdicts, hashes, index, self.active, policy, d.schedule, now)
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
        out.decisions.update(fresh)  # before the gates: a gate settled below supersedes its verdict
        self.chunks = chunks(groups, CHUNK_NAMES, FIRST_CHUNK_NAMES)
        self.dns_total = first_round_total(self.asking, due, policy)  # at most
        out.counts[f"gate_{Status.OK.value}"] += len(self.settled) - len(self.held)
        # later stages need the settled instances a re-check holds, no other:
        # the rest of the listing is freed when the tick lets go of it, before
        # the collector would walk 100,000s of live objects
        self.settled = {g: self.settled[g] for g in self.held}
        d._decide(self, at_once, {}, out)

    def _orders(self, guids: Iterable[str]) -> dict[str, tuple[float, str]]:
        known, now = self.known, self.now
        return {g: (known[g].created_at if g in known else now, g) for g in guids}  # type: ignore[index]

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
        out.decisions.update((g, self.fresh.pop(g)) for g in order if g in self.fresh)
        out.decisions.update(d.take_fresh())
        d._decide(self, sorted(order, key=self.order.__getitem__), txt, out)
        return out

    def finish(self) -> DomainStep:
        """Release the hosts decided instances no longer name nor serve."""
        out = DomainStep()
        self.domains._release_unlisted(self, out)
        return out

"""The domain step of a tick: validate, challenge, look up, decide.

It holds what ownership needs between ticks (the host index, the challenges,
a cache of verdicts by parameter hash) and does the tick's one DNS batch: all
pending challenges and due re-checks are resolved together, with a bounded
number in flight, instead of one domain at a time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

from cdnreq.dns.challenge import issue
from cdnreq.dns.resolver import Lookup
from cdnreq.model import Challenge, Event, HostClaim, InstanceGuid, Record, RequestedState, SharedInstance
from cdnreq.reconcile import recheck
from cdnreq.reconcile.gate import Claims, DomainPolicy, Gate, HostIndex, Status, decide, wanted_names
from cdnreq.validate.verdict import Verdict, validate


PENDING_MIN_S = 0.0
PENDING_MAX_S = 600.0


class Lookups(Protocol):
    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]: ...

    async def addresses(self, name: str) -> Lookup: ...

    async def close(self) -> None: ...


@dataclass
class DomainStep:
    """What the step decided; committed before any request goes out."""

    gates: dict[str, Gate] = field(default_factory=dict)
    host_upserts: dict[str, HostClaim] = field(default_factory=dict)
    host_deletes: set[str] = field(default_factory=set)
    challenges: list[Challenge] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def claim(self, claim: HostClaim) -> None:
        self.host_deletes.discard(claim.host)
        self.host_upserts[claim.host] = claim

    def release(self, host: str) -> None:
        self.host_upserts.pop(host, None)
        self.host_deletes.add(host)


class Domains:
    def __init__(
        self,
        *,
        policy: DomainPolicy,
        secret: bytes,
        resolver: Lookups,
        hosts: Iterable[HostClaim] = (),
        challenges: Mapping[InstanceGuid, Challenge] | None = None,
    ):
        self.policy = policy
        self.secret = secret
        self.resolver = resolver
        self.index = HostIndex(hosts)
        self.challenges: dict[InstanceGuid, Challenge] = dict(challenges or {})
        self._verdicts: dict[str, tuple[str, Verdict]] = {}
        # OK gates of instances owning all their hosts: nothing but their own
        # parameters or claims can change them, so an idle tick reuses them.
        self._settled: dict[str, tuple[str, Gate]] = {}
        self._settled_policy = policy
        # pending challenges are looked up less often as they age: (param_hash, next lookup)
        self._next_lookup: dict[str, tuple[str, float]] = {}

    def verdict(self, instance: SharedInstance) -> Verdict:
        cached = self._verdicts.get(instance.guid)
        if cached is not None and cached[0] == instance.param_hash:
            return cached[1]
        verdict = validate(instance.parameters)
        self._verdicts[instance.guid] = (instance.param_hash, verdict)
        return verdict

    def forget(self, guid: str) -> None:
        """The store forgot the instance: it owns nothing any more."""
        self.index.drop_guid(guid)
        self.challenges.pop(InstanceGuid(guid), None)
        self._verdicts.pop(guid, None)
        self._settled.pop(guid, None)
        self._next_lookup.pop(guid, None)

    async def step(
        self,
        instances: Iterable[SharedInstance],
        known: Mapping[InstanceGuid, Record],
        now: float,
        tick: int | None = None,
        on_dns: Callable[[int], None] | None = None,
    ) -> DomainStep:
        out = DomainStep()
        if self.policy != self._settled_policy:
            self._settled.clear()
            self._settled_policy = self.policy
        for guid in self.index.take_touched():
            self._settled.pop(guid, None)
        present: dict[str, SharedInstance] = {}  # to decide this tick
        settled: dict[str, SharedInstance] = {}  # gate reused from the last tick
        for instance in instances:
            if instance.state is RequestedState.DESTROYED or instance.guid in settled:
                continue
            cached = self._settled.get(instance.guid)
            if cached is not None and cached[0] == instance.param_hash:
                settled[instance.guid] = instance
                out.gates[instance.guid] = cached[1]
            else:
                present.setdefault(instance.guid, instance)
        active = set(present) | set(settled)
        verdicts = {g: self.verdict(i) for g, i in present.items()}

        txt_names: set[str] = set()
        asked: set[str] = set()
        for guid, verdict in verdicts.items():
            if verdict.ok and any(not self.index.owns(guid, h) for h in verdict.hosts):
                # even when refused for now: a re-check below may free the host
                self._ensure_challenge(InstanceGuid(guid), verdict, now, tick, out)
                if self._due(guid, present[guid].param_hash, now):
                    names = wanted_names(verdict, guid, self.index, active, self.policy)
                    txt_names.update(names)
                    asked.add(guid)
                else:
                    out.counts["dns_deferred"] += 1
        due = recheck.due(self.index.by_host.values(), active, now, self.policy)
        by_address = [c for c in due if recheck.by_address(c, self.policy)]
        for claim in due:
            if not recheck.by_address(claim, self.policy):
                txt_names.update(recheck.names(claim, self.policy))
        if on_dns is not None:
            on_dns(len(txt_names) + len(by_address))
        txt, addresses = await self._resolve(txt_names, {c.host for c in by_address})
        for lookup in txt.values():
            out.counts[f"dns_{lookup.outcome}"] += 1

        self._rechecks(due, txt, addresses, now, tick, out)
        for guid in self.index.take_touched() & set(settled):  # a re-check changed its claims
            del self._settled[guid], out.gates[guid]
            present[guid] = settled.pop(guid)
            verdicts[guid] = self.verdict(present[guid])
        order = sorted(present, key=lambda g: (known[g].created_at if g in known else now, g))
        for guid in order:
            gate, claims = decide(
                present[guid],
                verdicts[guid],
                index=self.index,
                active=active,
                challenge=self.challenges.get(InstanceGuid(guid)),
                lookups=txt,
                policy=self.policy,
                now=now,
            )
            out.gates[guid] = gate
            self._record_claims(guid, claims, now, tick, out)
            if gate.status is Status.PENDING and guid in asked:
                self._defer(guid, present[guid].param_hash, now)
            if gate.ok and self.index.hosts_of(guid) == set(gate.hosts):
                self._settled[guid] = (present[guid].param_hash, gate)
        self.index.take_touched()  # this step's own claims are in the gates already
        for gate in out.gates.values():
            out.counts[f"gate_{gate.status.value}"] += 1
        self._release_unlisted(verdicts, known, now, tick, out)
        return out

    def _due(self, guid: str, param_hash: str, now: float) -> bool:
        scheduled = self._next_lookup.get(guid)
        return scheduled is None or scheduled[0] != param_hash or scheduled[1] <= now

    def _defer(self, guid: str, param_hash: str, now: float) -> None:
        """Still pending: look again after a tenth of the challenge's age, at
        most PENDING_MAX_S. A customer who has just been told what to add is
        answered at the next tick; a challenge ignored for days costs one
        lookup every ten minutes, not one a tick."""
        challenge = self.challenges.get(InstanceGuid(guid))
        age = now - challenge.created_at if challenge is not None else 0.0
        delay = min(PENDING_MAX_S, max(PENDING_MIN_S, age / 10))
        self._next_lookup[guid] = (param_hash, now + delay)

    def _ensure_challenge(self, guid: InstanceGuid, verdict: Verdict, now: float, tick: int | None, out: DomainStep) -> None:
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

    def _rechecks(
        self,
        due: list[HostClaim],
        txt: Mapping[str, Lookup],
        addresses: Mapping[str, Lookup],
        now: float,
        tick: int | None,
        out: DomainStep,
    ) -> None:
        for claim in due:
            result = recheck.verdict(claim, self.challenges.get(claim.guid), txt, addresses.get(claim.host), self.policy)
            out.counts[f"recheck_{result}"] += 1
            after = recheck.apply(claim, result, now, self.policy)
            if after is None:
                self.index.drop(claim.host)
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

    def _record_claims(self, guid: str, claims: Claims, now: float, tick: int | None, out: DomainStep) -> None:
        for host in claims.deletes:
            out.release(host)
        for claim in claims.upserts:
            out.claim(claim)
            out.events.append(Event(guid, "claim", "ok", now, claim.host, tick))
        for loser in claims.taken_from:
            out.events.append(Event(loser, "release", "taken", now, "a host was proven by another entry", tick))

    def _release_unlisted(
        self,
        verdicts: Mapping[str, Verdict],
        known: Mapping[InstanceGuid, Record],
        now: float,
        tick: int | None,
        out: DomainStep,
    ) -> None:
        """A present instance keeps only the hosts it names or still serves."""
        for guid, verdict in verdicts.items():
            owned = self.index.hosts_of(guid)
            if not owned or not verdict.ok:
                continue
            record = known.get(InstanceGuid(guid))
            keep = set(verdict.hosts) | set((record.served if record else None) or ())
            for host in sorted(owned - keep):
                self.index.drop(host)
                out.release(host)
                out.events.append(Event(guid, "release", "ok", now, f"{host}: no longer named", tick))

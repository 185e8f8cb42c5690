"""The domain step of a tick: validate, challenge, look up, decide.

It holds what ownership needs between ticks (the host index, the challenges,
a cache of verdicts by parameter hash). A tick's step runs in stages
(DomainRun): what needs no DNS answer is decided at once, the rest by groups
of registrable domains as their answers come in (cdnreq/decide/proofs.py),
so requests start while DNS is still running; lookups are shared by many
names at a time, with a bounded number in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, Mapping, Protocol

from cdnreq.dns.challenge import issue
from cdnreq.model import Lookup
from cdnreq.model import Challenge, Event, HostClaim, InstanceGuid, Record, SharedInstance
from cdnreq.decide import recheck
from cdnreq.decide.guards import CONFIRM_TICKS, release_due
from cdnreq.decide.gate import Claims, DomainPolicy, Gate, HostIndex, Status, decide
from cdnreq.reconcile.stages import DomainRun, DomainStep
from cdnreq.validate.verdict import Verdict, validate

__all__ = ["Domains", "DomainRun", "DomainStep", "Lookups"]


PENDING_MIN_S = 0.0
PENDING_MAX_S = 600.0


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
        # hosts their listed owner stopped naming: consecutive ticks (see
        # contestable); and of those, the ones it no longer serves either
        # (see _release_unlisted)
        self.confirm_ticks = confirm_ticks
        saved = streaks if isinstance(streaks, Mapping) else {}
        self._unnamed: dict[str, int] = _counts(saved.get("contest"))
        self._unserved: dict[str, int] = _counts(saved.get("release"))

    def verdict(self, instance: SharedInstance) -> Verdict:
        cached = self._verdicts.get(instance.guid)
        if cached is not None and cached[0] == instance.param_hash:
            return cached[1]
        verdict = validate(instance.parameters, self.policy.validation)
        self._verdicts[instance.guid] = (instance.param_hash, verdict)
        return verdict

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
        self._next_lookup.pop(guid, None)

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
        self,
        instances: Iterable[SharedInstance],
        known: Mapping[InstanceGuid, Record],
        now: float,
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

    def _decide(
        self,
        order: Iterable[str],
        present: Mapping[str, SharedInstance],
        verdicts: Mapping[str, Verdict],
        active: set[str],
        asked: set[str],
        lookups: Mapping[str, Lookup],
        now: float,
        tick: int | None,
        out: DomainStep,
    ) -> None:
        """Gates in decision order: the first to prove a host keeps it."""
        for guid in order:
            gate, claims = decide(
                present[guid],
                verdicts[guid],
                index=self.index,
                active=active,
                challenge=self.challenges.get(InstanceGuid(guid)),
                lookups=lookups,
                policy=self.policy,
                now=now,
            )
            self.index.apply(claims)  # the next instance of the tick sees them
            out.gates[guid] = gate
            out.counts[f"gate_{gate.status.value}"] += 1
            out.taken_from.update(claims.taken_from)
            self._record_claims(guid, claims, now, tick, out)
            if gate.status is Status.PENDING and guid in asked:
                self._defer(guid, present[guid].param_hash, now)
            if gate.ok and self.index.hosts_of(guid) == set(gate.hosts):
                self._settled[guid] = (present[guid].param_hash, gate)
                self._verdicts.pop(guid, None)  # the gate says all; validated again if unsettled
        self.index.take_touched()  # this step's own claims are in the gates already

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

    def _record_claims(self, guid: str, claims: Claims, now: float, tick: int | None, out: DomainStep) -> None:
        for host in claims.deletes:
            out.release(host)
        for claim in claims.upserts:
            out.claim(claim)
            out.events.append(Event(guid, "claim", "ok", now, claim.host, tick))
        for loser in claims.taken_from:
            self.lost_claim(loser)
            out.events.append(Event(loser, "release", "taken", now, "a host was proven by another entry", tick))

    def streaks(self) -> dict[str, dict[str, int]] | None:
        """The unnamed-host streaks, stored between ticks (a restart or
        `cdnreq once` must not start them again from nothing); None when empty."""
        if not self._unnamed and not self._unserved:
            return None
        return {"contest": dict(self._unnamed), "release": dict(self._unserved)}

    def contestable(self, unnamed: Iterable[str]) -> frozenset[str]:
        """Of the hosts their owner does not name this tick (or is not listed),
        those it has not named for `confirm_ticks` consecutive ticks: only
        these may be proven by another (HostIndex.blocking). One listing is
        never enough evidence: a master that lists an owner with another
        custom_domain, or leaves it out, for one tick must not hand its live
        host to a rival."""
        cap = max(1, self.confirm_ticks)  # a due streak stops changing: idle ticks write nothing
        streaks = {host: min(cap, self._unnamed.get(host, 0) + 1) for host in unnamed}
        self._unnamed = streaks
        return frozenset(h for h, ticks in streaks.items() if release_due(ticks, self.confirm_ticks))

    def _release_unlisted(
        self,
        verdicts: Mapping[str, Verdict],
        known: Mapping[InstanceGuid, Record],
        now: float,
        tick: int | None,
        out: DomainStep,
    ) -> None:
        """A present instance keeps only the hosts it names or still serves,
        and a host it stops naming only once it has not named it for
        `confirm_ticks` consecutive ticks: a master that lists everyone
        without a custom_domain for one tick releases no claim."""
        unserved: dict[str, int] = {}
        for guid, verdict in verdicts.items():
            owned = self.index.hosts_of(guid)
            if not owned or not verdict.ok:
                continue
            record = known.get(InstanceGuid(guid))
            keep = set(verdict.hosts) | set((record.served if record else None) or ())
            for host in sorted(owned - keep):
                ticks = unserved[host] = self._unserved.get(host, 0) + 1
                if not release_due(ticks, self.confirm_ticks):
                    continue
                del unserved[host]
                self.index.drop(host)
                self.lost_claim(guid)
                out.release(host)
                out.events.append(Event(guid, "release", "ok", now, f"{host}: no longer named", tick))
        self._unserved = unserved


def _counts(saved: Any) -> dict[str, int]:
    """Streaks as stored (JSON): anything unexpected counts as no streak."""
    if not isinstance(saved, Mapping):
        return {}
    return {h: n for h, n in saved.items() if isinstance(h, str) and isinstance(n, int) and n > 0}

"""What the domain step keeps between ticks, and applies decisions to.

DomainState holds what ownership needs between ticks: the host index, the
challenges, the caches of verdicts and settled gates, the lookup schedule,
the unnamed-host streaks. It applies to them what cdnreq/decide/ decided
(claims, releases, re-checks, challenges issued), for the stages of a tick
that cdnreq.reconcile.domains runs (Domains, DomainRun).
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping, Protocol

from cdnreq.decide import recheck
from cdnreq.decide.asking import LookupSchedule
from cdnreq.decide.domainstep import DomainStep, contested, saved_streaks, unlisted_releases, unnamed_hosts
from cdnreq.decide.changes import WatchedIndex
from cdnreq.decide.gate import DomainPolicy, Gate, Status, decide
from cdnreq.decide.guards import CONFIRM_TICKS
from cdnreq.decide.kept import settled_decision, trusted, verdict_decision
from cdnreq.dns.challenge import reissue
from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceGuid, Lookup, Record, SharedInstance
from cdnreq.validate.verdict import Verdict, validate
from cdnreq.validate.version import stamp

__all__ = ["DomainState", "Lookups", "Stage"]


class Lookups(Protocol):
    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]: ...

    async def addresses(self, name: str) -> Lookup: ...

    async def close(self) -> None: ...


class Stage(Protocol):
    """What applying a stage's decisions reads of it (domains.DomainRun)."""

    present: dict[str, SharedInstance]
    verdicts: dict[str, Verdict]
    active: set[str]
    asking: Mapping[str, Any]
    decided: dict[str, Verdict]
    known: Mapping[InstanceGuid, Record]
    now: float
    tick: int | None
    step: int  # 1 when the tick counts towards the streaks, 0 when it does not


class DomainState:
    """What ownership needs between ticks, and applying what decide/ decided to it."""

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
        self.index = WatchedIndex(hosts)  # what changed, for the change feed
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
        # verdicts computed since last taken, to keep: (parameter hash, verdict), made
        # a Decision (its text) only when stored; 100,000 new instances wait for DNS with theirs
        self._fresh: dict[str, tuple[str, Verdict]] = {}
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
        # the unsettled gates (pending, invalid) decided at the last tick and at
        # this one: see _same_as_before
        self._gates_before: dict[str, Gate] = {}
        self._gates_now: dict[str, Gate] = {}

    def begin_tick(self) -> None:
        """A tick starts: the gates decided at the last one are the ones to reuse."""
        self._gates_before, self._gates_now = self._gates_now, {}

    def _same_as_before(self, guid: str, gate: Gate) -> Gate:
        """The last tick's gate of `guid` when this one equals it. A pending
        instance is decided again each tick; its gate (the message with the
        token, about a kilobyte) made anew each time, among the tick's
        short-lived objects, scattered what lives between ticks over the
        heap (10,000 pending at 100,000 instances: 10 MB a tick). Kept, it
        also lets the planner's idle cache see the instance unchanged."""
        if gate.ok:
            return gate
        before = self._gates_before.get(guid)
        if before is not None and before == gate:
            gate = before
        self._gates_now[guid] = gate
        return gate

    def verdict(self, instance: SharedInstance) -> Verdict:
        cached = self._verdicts.get(instance.guid)
        if cached is not None and cached[0] == instance.param_hash:
            return cached[1]
        verdict = validate(instance.parameters, self.policy.validation)
        self._verdicts[instance.guid] = (instance.param_hash, verdict)
        self._fresh[instance.guid] = (instance.param_hash, verdict)
        return verdict

    def take_fresh(self) -> dict[str, tuple[str, Verdict]]:
        """The verdicts computed since the last call, to keep (decisions_of)."""
        fresh, self._fresh = self._fresh, {}
        return fresh

    def decisions_of(self, fresh: Mapping[str, tuple[str, Verdict]]) -> dict[str, Decision]:
        """Fresh verdicts as the decisions the store keeps."""
        return {g: verdict_decision(g, h, self._stamp, v) for g, (h, v) in fresh.items()}

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

    def sleep(self, guids: Iterable[str]) -> None:
        """Instances fall asleep: their challenge, settled gate and verdict
        are dropped from memory (the store keeps the challenge; the gate is
        decided again when they wake, see decide/dormancy.py)."""
        for guid in guids:
            self.challenges.pop(InstanceGuid(guid), None)
            self._settled.pop(guid, None)
            self._verdicts.pop(guid, None)

    def wake(self, challenges: Mapping[InstanceGuid, Challenge]) -> None:
        """Woken instances' challenges, read back from the store before the domain step runs."""
        self.challenges.update(challenges)

    @property
    def settled(self) -> Mapping[str, tuple[str, Gate]]:
        """The settled gates by guid, with the parameter hash each was decided for."""
        return self._settled

    def streaks(self) -> dict[str, dict[str, int]] | None:
        """The unnamed-host streaks, stored between ticks (a restart or
        `cdnreq once` must not start them again from nothing); None when empty."""
        if not self._unnamed and not self._unserved:
            return None
        return {"contest": dict(self._unnamed), "release": dict(self._unserved)}

    # -- applying what decide/ decided ------------------------------------------

    def _begin(self, verdicts: Mapping[str, Verdict], active: set[str], step: int = 1) -> None:
        """The index as this tick sees it: which hosts may be contested."""
        unnamed, absent = unnamed_hosts(self.index, verdicts, active)
        self._unnamed, self.index.unnamed = contested(self._unnamed, unnamed | absent, self.confirm_ticks, step)
        self.index.recent = absent - self.index.unnamed

    def _decide(self, run: Stage, order: Iterable[str], lookups: Mapping[str, Lookup], out: DomainStep) -> None:
        """Gates in decision order: the first to prove a host keeps it."""
        for guid in order:
            instance = run.present[guid]
            gate, claims = decide(
                instance, run.verdicts[guid], index=self.index, active=run.active,
                challenge=self.challenges.get(InstanceGuid(guid)), lookups=lookups, policy=self.policy, now=run.now,
                last=self._gates_before.get(guid),
            )
            self.index.apply(claims)  # the next instance of the tick sees them
            out.gates[guid] = gate = self._same_as_before(guid, gate)
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
        # the instance's salt kept: a domain it comes back to gets its token again
        challenge = reissue(self.secret, guid, verdict.custom_domain, now, current)
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
                  now: float, tick: int | None, out: DomainStep, verdicts: Mapping[str, Verdict]) -> None:
        for claim in due:
            result = recheck.verdict(claim, self.challenges.get(claim.guid), txt, addresses.get(claim.host), self.policy,
                                     recheck.named(claim, verdicts))  # fmt: skip
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

    def _release_unlisted(self, run: Stage, out: DomainStep) -> None:
        releases, self._unserved = unlisted_releases(
            self.index, run.decided, run.known, self._unserved, self.confirm_ticks, run.step
        )
        for guid, host in releases:
            self.index.drop(host)
            self.lost_claim(guid)
            out.release(host)
            out.events.append(Event(guid, "release", "ok", run.now, f"{host}: no longer named", run.tick))

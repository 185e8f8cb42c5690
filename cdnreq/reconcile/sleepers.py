"""The instances asleep between ticks, put to sleep and woken by the tick.

decide/dormancy.py decides who sleeps and who wakes; this shell keeps the
Dormant entries, drops a sleeper's record, challenge and settled gate from
memory, and reads the record and challenge back from the store when it
wakes, before the domain step or the planner may read them.
"""

from __future__ import annotations

from typing import Iterable, Iterator, KeysView, Mapping

import structlog

from cdnreq.decide import recheck
from cdnreq.decide.actions import IdleCache, Policy
from cdnreq.decide.dormancy import Dormant, from_store, phases, rest, rules_digest, serving_count, unpack
from cdnreq.decide.plan import read_back_horizon
from cdnreq.model import InstanceGuid, Listing, Record
from cdnreq.reconcile.domains import Domains
from cdnreq.store import TickStore
from cdnreq.validate.version import stamp

log = structlog.get_logger("cdnreq.tick")


class Sleepers(Mapping[str, Dormant]):
    """Sleeping instances by guid, and the rules (plan and domain policies)
    they fell asleep under: other rules wake them all."""

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}  # packed (decide/dormancy.pack)
        self._rules: str | None = None  # decide/dormancy.rules_digest

    def __getitem__(self, guid: str) -> Dormant:
        return unpack(self._entries[guid])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, guid: object) -> bool:  # Mapping's goes through __getitem__ and an exception
        return guid in self._entries

    def keys(self) -> KeysView[str]:
        """The guids, as the dict's own view: a test of membership in it is
        C, where one on this Mapping is a Python call (100,000s a tick)."""
        return self._entries.keys()

    def __len__(self) -> int:
        return len(self._entries)

    def phases(self) -> dict[str, int]:
        return dict(phases(self._entries.values()))

    def serving(self) -> int:
        return serving_count(self._entries.values())

    async def settle(
        self, listing: Listing, now: float, *, store: TickStore, known: dict[InstanceGuid, Record],
        domains: Domains, idle: IdleCache, policy: Policy, keep_absent: bool = False,
    ) -> IdleCache:
        """Before the tick decides anything: wake the sleepers it may touch,
        put to sleep the idle instances it lists unchanged. Returns the idle
        cache without the new sleepers (it would keep their objects alive).
        `keep_absent`: see decide/dormancy.rest."""
        rules = rules_digest(policy, stamp(domains.policy))
        candidates = set(self._entries) | set(idle.entries)
        due = {c.guid for c in recheck.due(domains.index.by_host.values(), candidates, now, domains.policy)}
        decided = rest(listing.instances, self._entries, idle, known, domains.settled, due, now, rules=rules,
                       same_rules=rules == self._rules, keep_absent=keep_absent, unusable=listing.unusable,
                       horizon=read_back_horizon(policy))  # fmt: skip
        self._rules = rules
        if decided.wake:
            await self.wake(decided.wake, store=store, known=known, domains=domains)
        if not decided.sleep:
            return idle
        await store.commit(asleep=decided.marks.items())
        self._entries.update(decided.sleep)
        for guid in decided.sleep:
            del known[InstanceGuid(guid)]
        domains.sleep(decided.sleep)
        return IdleCache({g: e for g, e in idle.entries.items() if g not in decided.sleep}, idle.policy)

    async def restore(
        self, store: TickStore, known: dict[InstanceGuid, Record], domains: Domains, policy: Policy
    ) -> None:
        """At a load: the instances that fell asleep before, kept asleep
        while their marks hold; the others read awake."""
        rules = rules_digest(policy, stamp(domains.policy))
        self._entries, awake = {}, []
        async for page in store.asleep_pages():  # a page's rows are let go of before the next is read
            asleep, woken = from_store(page, stamp(domains.policy), rules, domains.index)
            self._entries.update(asleep)
            awake += woken
        self._rules = rules
        if awake:
            known.update(await store.records_of(awake))
            domains.wake(await store.challenges_of(awake))
        domains.sleep(self._entries)

    async def wake(
        self, guids: Iterable[str], *, store: TickStore, known: dict[InstanceGuid, Record], domains: Domains
    ) -> None:
        """Read the sleepers' records and challenges back: they are awake."""
        wanted = [g for g in guids if g in self._entries]
        if not wanted:
            return
        records = await store.records_of(wanted)
        challenges = await store.challenges_of(wanted)
        for guid in wanted:
            del self._entries[guid]
        missing = [g for g in wanted if g not in records]
        if missing:  # the store lost them under the daemon: planned as new (requests are keyed by title)
            log.error("sleeping instances missing from the store", count=len(missing), guids=missing[:20])
        known.update(records)
        domains.wake(challenges)

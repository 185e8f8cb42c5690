"""The planner: what one tick must do, decided from data alone.

`plan()` is a pure function of the master's listing, the stored records, the
gates (validation and proof of ownership), the host index, the clock and the
policy. It never calls anything: every rule (hash diff, guards against mass
removal, retention, backoff, poll-instead-of-request) is a case in a unit
test. What it must never do: destroy on a doubtful listing, leave a host
served by an instance that no longer owns it, or request a host while another
instance's entry may still serve it (a destroy counts once read back gone).
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Collection, Iterable, Mapping

from cdnreq.decide.actions import READ_BACK, Action, Draft, IdleCache, Kind, Ownership, Plan, Policy
from cdnreq.decide.dormancy import Dormant
from cdnreq.decide.gate import Gate, refused, waiting
from cdnreq.decide.guards import Departures
from cdnreq.decide.removals import Listed, confirm, destroy_sent, has_entry, lost_host, plan_removals
from cdnreq.decide.transitions import REJECTED, longest_backoff_s, needs_publish, resumed
from cdnreq.model import InstanceGuid, Listing, Phase, Record, RequestedState, SharedInstance, digest
from cdnreq.decide.served import ServedHosts
from cdnreq.decide.titles import technical_title




def spec_hash(software_release_uri: str, software_type: str, sla: Mapping[str, str]) -> str:
    return digest({"sr": software_release_uri, "type": software_type, "sla": dict(sla)})


def new_record(guid: InstanceGuid, prefix: str, now: float, created_at: float | None = None) -> Record:
    return Record(
        guid=guid, title=technical_title(prefix, guid), phase=Phase.NEW,
        created_at=now if created_at is None else created_at, updated_at=now,
    )


def plan(
    listing: Listing,
    known: Mapping[InstanceGuid, Record],
    now: float,
    policy: Policy,
    *,
    gates: Mapping[str, Gate] | None = None,
    ownership: Ownership | None = None,
    idle: IdleCache | None = None,
    later: Collection[str] = frozenset(),
    recent: Iterable[Departures] = (),
    approved_removals: Collection[str] = frozenset(),
    asleep: Mapping[str, Dormant] | None = None,
    listed_at: Mapping[str, float] | None = None,
    held_before: Collection[str] = frozenset(),
) -> Plan:
    """The tick's plan. Instances in `later` wait for DNS: they count as
    listed (never gone) but get no action here; `plan_decided` plans them.
    `asleep`: instances sleeping (decide/dormancy.py), each listed as it fell
    asleep: unchanged, without a record in `known`; their entries count in
    the fleet and their served hosts are held.
    `idle`: the cache the last plan returned (Plan.idle).
    `recent`: departures decided inside the removal guard's window.
    `approved_removals`: the held removals an operator approved; they go
    ahead when every removal the guard would hold is among them.
    `held_before`: the removals the last tick held (removals._destroys_held).
    `listed_at`: when each newcomer was first listed (its record's created_at)."""
    draft = Draft(now, listed_at)
    asleep = asleep or {}
    served = ServedHosts(known, asleep)
    listed, next_idle = _plan_listed(draft, listing, known, policy, gates, ownership, idle, later, asleep, served)
    _plan_unusable(draft, listing, known, policy)
    removals = plan_removals(draft, listing, known, listed, policy, ownership, list(recent), approved_removals,
                             held_before)
    return Plan(
        tuple(draft.actions), tuple(draft.updates), removals.held, removals.hold_reason,
        draft.counted(), removals.fleet, removals.withheld, removals.departed, idle=next_idle,
    )




def _plan_listed(
    draft: Draft,
    listing: Listing,
    known: Mapping[InstanceGuid, Record],
    policy: Policy,
    gates: Mapping[str, Gate] | None,
    ownership: Ownership | None,
    idle: IdleCache | None,
    later: Collection[str],
    asleep: Mapping[str, Dormant],
    served: ServedHosts,
) -> tuple[Listed, IdleCache]:
    """Each listed instance, once: skipped when asleep or when the idle
    cache says nothing changed, else planned from its record and its gate."""
    counts, now = draft.counts, draft.now
    horizon = now + read_back_horizon(policy)  # one cached further: planned under a clock since stepped back
    seen = _counted(counts, listing)
    destroyed: list[Record] = []
    last = idle.entries if idle is not None and idle.policy == policy else {}
    still: dict[str, tuple[Record, Gate, float]] = {}
    unchecked = gates is None  # tools and tests: every instance as listed
    gates = gates or {}
    unchanged = 0
    sleeping = asleep.keys()  # a dict's view (reconcile/sleepers.Sleepers.keys): membership in C
    for instance in listing.instances:
        guid = instance.guid
        if guid in seen:
            counts["duplicate"] += 1
            continue
        seen.add(guid)
        if guid in sleeping:
            unchanged += 1
            continue
        record = known.get(guid)
        if instance.state is RequestedState.DESTROYED:
            if record is not None:
                destroyed.append(record)
            continue
        if later and guid in later:
            continue
        hit = last.get(guid)
        if (
            hit is not None
            and hit[0] is record
            and hit[1] is gates.get(guid)
            and (record.requested_state is instance.state or not hit[1].ok)
            and now < hit[2] <= horizon  # its read-back time, kept with it
        ):
            still[guid] = hit
            unchanged += 1
            continue
        gate = gates.get(guid)
        if gate is None:
            if not unchecked:  # not judged by the domain step: nothing unvalidated reaches the CDN
                counts["ungated"] += 1
                continue
            gate = Gate.accept(instance)
        record = _current(instance, record, draft, policy)
        action = _paced(_for_present(instance, gate, record, policy, ownership, now), draft, policy)
        action, held_back = _after_previous(action, served, counts, ownership)
        draft.add(action, record)
        if action is None and not held_back and gate is gates.get(guid):
            still[guid] = (record, gate, _read_back_at(record, policy, now))
    counts["unchanged"] += unchanged
    return Listed(seen, destroyed, len(asleep), _not_named(asleep, seen)), IdleCache(still, policy)


def _not_named(asleep: Mapping[str, Dormant], seen: set[str]) -> tuple[str, ...]:
    """The sleepers the listing does not name: kept asleep because it holds
    every removal (decide/dormancy.rest), they are among what it holds."""
    return tuple(sorted(asleep.keys() - seen))


def _counted(counts: Counter[str], listing: Listing) -> set[str]:
    """The listing's own counts; the guids it names unusable, as seen."""
    counts["unusable"] = len(listing.unusable)
    counts["anonymous"] = listing.anonymous
    counts["duplicate"] = listing.duplicates
    return set(listing.unusable)


def _plan_unusable(draft: Draft, listing: Listing, known: Mapping[InstanceGuid, Record], policy: Policy) -> None:
    """An entry the master listed in a form cdnreq cannot use: its customer is told why, once."""
    for guid, reason in listing.unusable.items():
        record = known.get(InstanceGuid(guid)) or _reserved(InstanceGuid(guid), draft, policy)
        if (told := _told(record, reason)) is not None:
            draft.add(told, record)


def plan_decided(
    instances: Iterable[SharedInstance],
    known: Mapping[InstanceGuid, Record],
    now: float,
    policy: Policy,
    *,
    gates: Mapping[str, Gate],
    ownership: Ownership | None = None,
    losers: Iterable[Record] = (),
    asleep: Mapping[str, Dormant] | None = None,
    listed_at: Mapping[str, float] | None = None,
    read_backs: int = 0,
) -> Plan:
    """The part of the plan `plan(..., later=...)` left out: instances whose
    gates DNS has just decided, and retained entries (`losers`, without an
    action yet) that may have lost a host to one of them. `read_backs`: the
    periodic read-backs the tick's earlier stages planned (the cap,
    Policy.read_backs_per_tick, is the tick's, not each stage's)."""
    draft = Draft(now, listed_at)
    draft.read_backs = read_backs
    served = ServedHosts(known, asleep)
    decided: set[str] = set()
    for instance in instances:
        decided.add(instance.guid)
        record = _current(instance, known.get(instance.guid), draft, policy)
        action = _paced(_for_present(instance, gates[instance.guid], record, policy, ownership, now), draft, policy)
        draft.add(_after_previous(action, served, draft.counts, ownership)[0], record)
    for record in losers:  # retained, or listed and no longer naming the host (planned before)
        if record.guid in decided or destroy_sent(record) or record.phase not in _GONE:
            continue  # a listed one is planned with its gate at the next tick (see _for_present)
        if has_entry(record) and lost_host(record, ownership):
            draft.add(Action(Kind.DESTROY, record, "a host it served was proven by another entry", forget=False), record)
    return Plan(tuple(draft.actions), tuple(draft.updates), counts=draft.counted())


_GONE = (Phase.RETAINED, Phase.REMOVING)  # not listed: retained, or its removal held


def _current(instance: SharedInstance, record: Record | None, draft: Draft, policy: Policy) -> Record:
    """The record a listed instance is planned with: a new one, one back from
    removal or retention (both stored before any call), or the known one."""
    if record is None:
        record = new_record(instance.guid, policy.request_prefix, draft.now, draft.created_at(instance.guid))
        draft.updates.append(record)
        draft.counts["added"] += 1
    elif record.phase in (Phase.REMOVING, Phase.RETAINED):
        record = resumed(record, draft.now)
        draft.updates.append(record)
        draft.counts["back"] += 1
    return record


def _reserved(guid: InstanceGuid, draft: Draft, policy: Policy) -> Record:
    """A record for an unusable entry never seen before: what it was told is kept."""
    record = new_record(guid, policy.request_prefix, draft.now, draft.created_at(guid))
    draft.updates.append(record)
    return record


def _told(record: Record, reason: str) -> Action | None:
    """An entry the listing could not use: its customer is told why, once;
    nothing else happens to it (a live entry keeps running as it was)."""
    gate = refused((reason,))
    return Action(Kind.PUBLISH, record, "unusable listing entry", gate=gate) if needs_publish(record, gate) else None


def _for_present(
    instance: SharedInstance,
    gate: Gate,
    record: Record,
    policy: Policy,
    ownership: Ownership | None,
    now: float,
) -> Action | None:
    if destroy_sent(record):  # nothing is requested before the old entry is read back gone
        return confirm(record, gate)
    # its entry may serve a host it no longer owns: destroyed, unless its gate
    # is OK (it owns every host it names, so it no longer names that one): then
    # the request for the gate drops it, and a destroy could take down a live
    # site whose update was applied unanswered; the entry counts as serving
    # it until a read-back finds the request kept (transitions.polled). A
    # request the master refused (not applied), or held back behind another
    # entry (_after_previous), cannot drop it: destroyed.
    stale = _lost(record, ownership)
    if stale and (not gate.ok or record.last_action == REJECTED):
        return _lost_destroy(record, instance, gate)
    if not gate.ok:
        if needs_publish(record, gate):
            return Action(Kind.PUBLISH, record, gate.status.value, instance, gate)
        if record.published is not None and now >= _read_back_at(record, policy, now):
            return Action(Kind.PUBLISH, record, READ_BACK, instance, gate)  # told, but does it still hold it?
        return None
    if record.param_hash is None:
        return Action(Kind.REQUEST, record, "added" if record.last_action is None else "not requested yet", instance, gate)
    if record.param_hash != gate.forward_hash:
        return Action(Kind.UPDATE, record, "parameters changed", instance, gate)
    if record.requested_state is not instance.state:
        return Action(Kind.UPDATE, record, f"state changed to {instance.state.value}", instance, gate)
    if record.spec_hash != policy.spec_hash:
        return Action(Kind.UPDATE, record, "technical CDN settings changed", instance, gate)
    if record.phase is not Phase.LIVE or not record.connection or stale:
        if record.tech_guid is None:
            return Action(Kind.REQUEST, record, "no technical entry known", instance, gate)
        # read back once after each request, until the CDN answers, and until it holds the request
        return Action(Kind.POLL, record, "waiting for the technical CDN's answer", instance, gate)
    if needs_publish(record, gate):
        return Action(Kind.PUBLISH, record, "new information for the customer", instance, gate)
    if now >= _read_back_at(record, policy, now):
        # a technical CDN may lose an entry long after it went live
        return Action(Kind.POLL, record, READ_BACK, instance, gate)
    return None


_NEVER = float("inf")


def read_backs_in(actions: Iterable[Action]) -> int:
    """The periodic read-backs among a stage's actions (see _paced)."""
    return sum(1 for a in actions if a.reason == READ_BACK)


def _paced(action: Action | None, draft: Draft, policy: Policy) -> Action | None:
    """At most Policy.read_backs_per_tick periodic read-backs a tick: after a
    long stop (or a shorter verify_interval_s) every live entry is due, and
    one tick reading 100,000 back would keep every customer's change waiting
    behind it. The others stay due: a later tick takes them (the idle cache
    keeps them with their due time, which it never skips)."""
    if action is None or action.reason != READ_BACK:
        return action
    if draft.read_backs >= policy.read_backs_per_tick:
        draft.counts["read_back_later"] += 1
        return None
    draft.read_backs += 1
    return action


def _read_back_at(record: Record, policy: Policy, now: float) -> float:
    if not policy.verify_interval_s:
        return _NEVER
    if record.failures and record.retry_at is not None:
        return record.retry_at  # a failed read-back is retried after its backoff, not a period later
    if record.updated_at > now:  # written under a clock since stepped back: no proof of a recent read
        return now
    return record.updated_at + policy.verify_interval_s * _spread(record.guid)


def read_back_horizon(policy: Policy) -> float:
    """How far from now a read-back is ever planned, a failed one's retry
    included (its backoff may lie further than an interval): one further (a
    sleeper's) was planned under a clock since stepped back."""
    if not policy.verify_interval_s:
        return _NEVER
    return max(policy.verify_interval_s * _MAX_SPREAD, longest_backoff_s(policy.retry_max_s))


_MAX_SPREAD = 1.1


def _spread(guid: str) -> float:
    """1.0 to 1.1, fixed per instance, so read-backs do not all fall on one tick."""
    return 1.0 + (zlib.crc32(guid.encode("utf-8", "surrogatepass")) % 1000) / 10000


def _lost(record: Record, ownership: Ownership | None) -> bool:
    return has_entry(record) and lost_host(record, ownership)


def _lost_destroy(record: Record, instance: SharedInstance | None, gate: Gate | None) -> Action:
    return Action(Kind.DESTROY, record, "a host it serves is no longer proven for it", instance, gate, forget=False)


def _after_previous(
    action: Action | None, served: ServedHosts, counts: Counter[str], ownership: Ownership | None
) -> tuple[Action | None, bool]:
    """A request naming a host that another instance's entry still serves
    waits until that entry is read back gone: two technical entries never
    name one host. The customer is told why; returns (action, held back).
    One whose own entry serves a host it lost cannot drop it by waiting:
    its entry is destroyed instead (two instances swapping hosts would
    each wait for the other's entry for ever)."""
    if action is None or action.kind not in (Kind.REQUEST, Kind.UPDATE) or action.gate is None:
        return action, False
    busy = served.others(action.gate.hosts, action.guid)
    if not busy:
        return action, False
    if _lost(action.record, ownership):
        return _lost_destroy(action.record, action.instance, action.gate), False
    counts["waiting_previous"] += 1
    gate = waiting(action.gate, busy)
    if not needs_publish(action.record, gate):
        return None, True
    return Action(Kind.PUBLISH, action.record, "waiting for a previous entry to be removed", action.instance, gate), True



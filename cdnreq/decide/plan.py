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

import enum
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Collection, Iterable, Mapping, Protocol

from cdnreq.model import Listing
from cdnreq.model import (
    InstanceGuid,
    Phase,
    Record,
    RequestedState,
    SharedInstance,
    digest,
)
from cdnreq.decide.gate import Gate, refused, waiting
from cdnreq.decide.guards import Departures, counted, removal_guard
from cdnreq.decide.transitions import destroy_pending, may_serve, needs_publish, resumed
from cdnreq.decide.served import ServedHosts
from cdnreq.decide.titles import technical_title


READ_BACK = "periodic read-back"  # also reads the customer's instance: see records.still_shown


class Kind(str, enum.Enum):
    REQUEST = "request"  # first request of a new instance on the technical CDN
    UPDATE = "update"  # request again: parameters, state or CDN settings changed
    POLL = "poll"  # read the technical entry's answer, which is still pending
    PUBLISH = "publish"  # tell the customer something new, no request needed
    DESTROY = "destroy"  # destroy the technical entry


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    record: Record
    reason: str
    instance: SharedInstance | None = None  # as listed; None when gone
    gate: Gate | None = None  # what to request (OK) or to show the customer
    forget: bool = True  # DESTROY: forget the instance after, or keep it without entry

    @property
    def guid(self) -> InstanceGuid:
        return self.record.guid


@dataclass(frozen=True, slots=True)
class Policy:
    """The configuration the planner depends on, and nothing else."""

    request_prefix: str
    spec_hash: str  # digest of the technical CDN's release, type and SLA
    allow_empty: bool = False
    max_destroy_fraction: float = 0.5
    retention_s: float = 0.0
    verify_interval_s: float = 0.0  # read live entries back this often (0: never)


class Ownership(Protocol):
    def owns(self, guid: str, host: str) -> bool: ...

    def hosts_of(self, guid: str) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    updates: tuple[Record, ...] = ()  # stored before any call (new, held, retained, back)
    forgets: tuple[InstanceGuid, ...] = ()  # gone without a technical entry: no call needed
    held: tuple[Record, ...] = ()  # gone from the master, removal held back
    hold_reason: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    fleet: int | None = None  # instances the removal guard judged against (None: no removal planned)
    withheld: tuple[InstanceGuid, ...] = ()  # every removal held (held, and retained entries listed destroyed)
    departed: tuple[InstanceGuid, ...] = ()  # the removals decided (counts["removed"]), for the guard's window


class Quiet:
    """Instances the last plan found with nothing to do, with the record and
    the gate it saw.

    Records are frozen and the domain step hands back the very same gate
    while nothing about an instance's hosts changed, so the same record, gate
    and requested state give the same answer again. An idle tick then skips
    the publication digest and host checks for most instances. Rebuilt by
    every plan, so it holds nothing of instances that left.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Record, Gate]] = {}
        self.policy: Policy | None = None


def spec_hash(software_release_uri: str, software_type: str, sla: Mapping[str, str]) -> str:
    return digest({"sr": software_release_uri, "type": software_type, "sla": dict(sla)})


def new_record(guid: InstanceGuid, prefix: str, now: float) -> Record:
    return Record(
        guid=guid, title=technical_title(prefix, guid), phase=Phase.NEW, created_at=now, updated_at=now
    )


def destroy_sent(record: Record) -> bool:
    """A destroy was sent (acknowledged, or timed out): done once read back gone."""
    return destroy_pending(record)


def has_entry(record: Record) -> bool:
    """Whether a technical entry may exist for this record: requested, or a
    request was sent whose answer was lost (a crash, a timeout the master
    did not notice)."""
    return (
        record.param_hash is not None
        or record.tech_guid is not None
        or record.last_action in ("requesting", "request")
        or may_serve(record)
    )


def plan(
    listing: Listing,
    known: Mapping[InstanceGuid, Record],
    now: float,
    policy: Policy,
    *,
    gates: Mapping[str, Gate] | None = None,
    ownership: Ownership | None = None,
    quiet: Quiet | None = None,
    later: Collection[str] = frozenset(),
    recent: Iterable[Departures] = (),
    approved_removals: Collection[str] = frozenset(),
) -> Plan:
    """The tick's plan. Instances in `later` wait for DNS: they count as
    listed (never gone) but get no action here; `plan_decided` plans them.
    `recent`: departures decided inside the removal guard's window.
    `approved_removals`: the held removals an operator approved; they go
    ahead when every removal the guard would hold is among them."""
    counts: Counter[str] = Counter()
    actions: list[Action] = []
    updates: list[Record] = []
    seen: set[str] = set(listing.unusable)
    counts["unusable"] = len(listing.unusable)
    counts["anonymous"] = listing.anonymous
    counts["duplicate"] = listing.duplicates
    destroyed: list[Record] = []  # the customer asked for it

    def add(action: Action | None, record: Record) -> None:
        _sort(action, record, now, actions, counts)

    last: dict[str, tuple[Record, Gate]] = {}
    still: dict[str, tuple[Record, Gate]] = {}
    if quiet is not None and quiet.policy == policy:
        last = quiet.entries
    unchecked = gates is None  # tools and tests: every instance as listed
    gates = gates or {}
    served = ServedHosts(known)
    unchanged = 0
    for instance in listing.instances:
        guid = instance.guid
        if guid in seen:
            counts["duplicate"] += 1
            continue
        seen.add(guid)
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
            and _read_back_at(record, policy) > now
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
        record = _current(instance, record, now, policy, updates, counts)
        action = _for_present(instance, gate, record, policy, ownership, now)
        action, held_back = _after_previous(action, served, counts)
        add(action, record)
        if action is None and not held_back and gate is gates.get(guid):
            still[guid] = (record, gate)
    for guid, reason in listing.unusable.items():
        record = known.get(InstanceGuid(guid)) or _reserved(InstanceGuid(guid), now, policy, updates)
        if (told := _told(record, reason)) is not None:
            add(told, record)
    counts["unchanged"] += unchanged
    if quiet is not None:
        quiet.entries, quiet.policy = still, policy

    gone = destroyed + [r for g, r in known.items() if g not in seen]
    confirming = [r for r in gone if destroy_sent(r)]
    departing = [r for r in gone if r.phase is not Phase.RETAINED and not destroy_sent(r)]
    retained = [r for r in gone if r.phase is Phase.RETAINED and not destroy_sent(r)]
    explicit = {r.guid for r in destroyed}
    # a retained entry the master lists destroyed loses its retention now, on
    # the master's word: guarded like a departure
    ending = [r for r in retained if r.guid in explicit and has_entry(r)]
    # the fleet the master can still remove: entries already gone (retained
    # for 90 days, destroys awaiting read-back) must not dilute the guard
    fleet = len(known) - len(confirming) - len(retained) + len(ending)
    held: tuple[Record, ...] = ()
    recent = list(recent)
    leaving = [r.guid for r in (*departing, *ending)]
    again = len(counted(recent, leaving))  # decided at an earlier tick, not done yet
    hold_reason = removal_guard(listing, fleet, len(leaving), policy, recent, again)
    withheld: tuple[InstanceGuid, ...] = ()
    if hold_reason is not None:
        withheld = tuple(r.guid for r in (*departing, *ending))
        if approved_removals and all(g in approved_removals for g in withheld):
            hold_reason, withheld = None, ()
            counts["approved_removals"] = len(departing) + len(ending)
    forgets: list[InstanceGuid] = []
    departed: tuple[InstanceGuid, ...] = ()
    if hold_reason is not None:
        held = tuple(departing)
        counts["held"] = len(held) + len(ending)
        departing = []
        explicit -= {r.guid for r in ending}  # kept retained
    else:
        counts["removed"] += len(ending)
        departed = tuple(leaving)
    for record in departing:
        counts["removed"] += 1
        action = _departure(record, record.guid in explicit, now, policy, ownership, updates, forgets)
        if action is not None:
            add(action, record)
    for record in retained:
        action = _retention(record, record.guid in explicit, now, policy, ownership, forgets)
        if action is not None:
            add(action, record)
    for record in confirming:  # a destroy counts once read back: a master may drop one
        add(_confirm(record, None), record)
    for action in actions:
        counts[action.kind.value] += 1
    counts["forget"] = len(forgets)
    return Plan(
        tuple(actions), tuple(updates), tuple(forgets), held, hold_reason, dict(counts), fleet, withheld, departed
    )


def plan_decided(
    instances: Iterable[SharedInstance],
    known: Mapping[InstanceGuid, Record],
    now: float,
    policy: Policy,
    *,
    gates: Mapping[str, Gate],
    ownership: Ownership | None = None,
    losers: Iterable[Record] = (),
) -> Plan:
    """The part of the plan `plan(..., later=...)` left out: instances whose
    gates DNS has just decided, and retained entries (`losers`, without an
    action yet) that may have lost a host to one of them."""
    counts: Counter[str] = Counter()
    actions: list[Action] = []
    updates: list[Record] = []

    def add(action: Action | None, record: Record) -> None:
        _sort(action, record, now, actions, counts)

    served = ServedHosts(known)
    decided: set[str] = set()
    for instance in instances:
        decided.add(instance.guid)
        record = _current(instance, known.get(instance.guid), now, policy, updates, counts)
        action = _for_present(instance, gates[instance.guid], record, policy, ownership, now)
        add(_after_previous(action, served, counts)[0], record)
    for record in losers:  # retained, or listed and no longer naming the host (planned before)
        if record.guid in decided or destroy_sent(record):
            continue
        if has_entry(record) and _lost_host(record, ownership):
            add(Action(Kind.DESTROY, record, "a host it served was proven by another entry", forget=False), record)
    for action in actions:
        counts[action.kind.value] += 1
    return Plan(tuple(actions), tuple(updates), counts=dict(counts))


def _sort(action: Action | None, record: Record, now: float, actions: list[Action], counts: Counter[str]) -> None:
    """An action goes to the plan unless there is none, or its record is backing off."""
    if action is None:
        counts["unchanged"] += 1
    elif record.retry_at is not None and record.retry_at > now:
        counts["backoff"] += 1
    else:
        actions.append(action)


def _current(
    instance: SharedInstance,
    record: Record | None,
    now: float,
    policy: Policy,
    updates: list[Record],
    counts: Counter[str],
) -> Record:
    """The record a listed instance is planned with: a new one, one back from
    removal or retention (both stored before any call), or the known one."""
    if record is None:
        record = new_record(instance.guid, policy.request_prefix, now)
        updates.append(record)
        counts["added"] += 1
    elif record.phase in (Phase.REMOVING, Phase.RETAINED):
        record = resumed(record, now)
        updates.append(record)
        counts["back"] += 1
    return record


def _reserved(guid: InstanceGuid, now: float, policy: Policy, updates: list[Record]) -> Record:
    """A record for an unusable entry never seen before: what it was told is kept."""
    record = new_record(guid, policy.request_prefix, now)
    updates.append(record)
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
        return _confirm(record, gate)
    if has_entry(record) and _lost_host(record, ownership):
        return Action(Kind.DESTROY, record, "a host it serves is no longer proven for it", instance, gate, forget=False)
    if not gate.ok:
        return Action(Kind.PUBLISH, record, gate.status.value, instance, gate) if needs_publish(record, gate) else None
    if record.param_hash is None:
        return Action(Kind.REQUEST, record, "added" if record.last_action is None else "not requested yet", instance, gate)
    if record.param_hash != gate.forward_hash:
        return Action(Kind.UPDATE, record, "parameters changed", instance, gate)
    if record.requested_state is not instance.state:
        return Action(Kind.UPDATE, record, f"state changed to {instance.state.value}", instance, gate)
    if record.spec_hash != policy.spec_hash:
        return Action(Kind.UPDATE, record, "technical CDN settings changed", instance, gate)
    if record.phase is not Phase.LIVE or not record.connection:
        if record.tech_guid is None:
            return Action(Kind.REQUEST, record, "no technical entry known", instance, gate)
        # read back once after each request, and until the CDN answers
        return Action(Kind.POLL, record, "waiting for the technical CDN's answer", instance, gate)
    if needs_publish(record, gate):
        return Action(Kind.PUBLISH, record, "new information for the customer", instance, gate)
    if now >= _read_back_at(record, policy):
        # a technical CDN may lose an entry long after it went live
        return Action(Kind.POLL, record, READ_BACK, instance, gate)
    return None


_NEVER = float("inf")


def _read_back_at(record: Record, policy: Policy) -> float:
    if not policy.verify_interval_s:
        return _NEVER
    if record.failures and record.retry_at is not None:
        return record.retry_at  # a failed read-back is retried after its backoff, not a period later
    return record.updated_at + policy.verify_interval_s * _spread(record.guid)


def _spread(guid: str) -> float:
    """1.0 to 1.1, fixed per instance, so read-backs do not all fall on one tick."""
    return 1.0 + (zlib.crc32(guid.encode("utf-8", "surrogatepass")) % 1000) / 10000


def _confirm(record: Record, gate: Gate | None) -> Action:
    """Read back a destroyed entry (the instance is not passed: the executor
    confirms, it does not request); a listed instance is kept after."""
    return Action(Kind.POLL, record, "confirm the destroy", None, gate, forget=record.phase is Phase.REMOVING)


def _after_previous(action: Action | None, served: ServedHosts, counts: Counter[str]) -> tuple[Action | None, bool]:
    """A request naming a host that another instance's entry still serves
    waits until that entry is read back gone: two technical entries never
    name one host. The customer is told why; returns (action, held back)."""
    if action is None or action.kind not in (Kind.REQUEST, Kind.UPDATE) or action.gate is None:
        return action, False
    busy = served.others(action.gate.hosts, action.guid)
    if not busy:
        return action, False
    counts["waiting_previous"] += 1
    gate = waiting(action.gate, busy)
    if not needs_publish(action.record, gate):
        return None, True
    return Action(Kind.PUBLISH, action.record, "waiting for a previous entry to be removed", action.instance, gate), True


def _lost_host(record: Record, ownership: Ownership | None) -> bool:
    return ownership is not None and any(not ownership.owns(record.guid, h) for h in record.served or ())


def _departure(
    record: Record,
    explicit: bool,
    now: float,
    policy: Policy,
    ownership: Ownership | None,
    updates: list[Record],
    forgets: list[InstanceGuid],
) -> Action | None:
    """An instance that just left the master (or was destroyed by its customer)."""
    owns = ownership is not None and bool(ownership.hosts_of(record.guid))
    if policy.retention_s > 0 and (has_entry(record) or owns):
        kept = replace(record, phase=Phase.RETAINED, gone_at=now, last_action="retain", updated_at=now)
        if explicit and has_entry(record):
            return Action(Kind.DESTROY, kept, "destroyed by the customer", forget=False)
        updates.append(kept)
        return None
    if has_entry(record):
        return Action(Kind.DESTROY, record, "removed from the master")
    return _by_title(record, "removed from the master")


def _retention(
    record: Record,
    explicit: bool,
    now: float,
    policy: Policy,
    ownership: Ownership | None,
    forgets: list[InstanceGuid],
) -> Action | None:
    """An instance already gone: destroyed when its retention ends, or sooner
    when its customer asks or another entry proved one of its hosts."""
    gone_at = record.gone_at if record.gone_at is not None else record.updated_at
    if now >= gone_at + policy.retention_s:
        if has_entry(record):
            return Action(Kind.DESTROY, record, "retention period over")
        return _by_title(record, "retention period over")
    if has_entry(record) and explicit:
        return Action(Kind.DESTROY, record, "destroyed by the customer", forget=False)
    if has_entry(record) and _lost_host(record, ownership):
        return Action(Kind.DESTROY, record, "a host it served was proven by another entry", forget=False)
    return None


def _by_title(record: Record, reason: str) -> Action:
    """No entry known, but a restore or a lost store may hide one that still
    serves the hosts: destroyed by title (a no-op when there is none), then
    forgotten."""
    return Action(Kind.DESTROY, record, f"{reason}; no technical entry known, destroyed by title")


def held_records(plan_: Plan, now: float) -> Iterable[Record]:
    """Held records, marked REMOVING; unchanged ones already were."""
    error = f"removal held: {plan_.hold_reason}"
    for record in plan_.held:
        if record.phase is not Phase.REMOVING or record.last_error != error:
            yield replace(
                record, phase=Phase.REMOVING, last_action="hold", last_error=error, updated_at=now
            )

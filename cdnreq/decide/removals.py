"""What the planner decides for instances that left the listing, or whose
customer asked for them destroyed: departures behind the removal guard
(which keeps what it holds, Plan.held and Plan.withheld, for /status and
`cdnreq approve`), retention, and destroys still to be read back gone."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from cdnreq.decide.actions import Action, Draft, Kind, Ownership, Plan, Policy
from cdnreq.decide.gate import Gate
from cdnreq.decide.guards import Departures, counted, explicit_destroy_guard, removal_guard
from cdnreq.decide.transitions import destroy_pending, may_serve
from cdnreq.model import InstanceGuid, Listing, Phase, Record


@dataclass(frozen=True)
class Listed:
    """What the pass over the listing saw."""

    seen: set[str]  # every guid the listing names, usable or not
    destroyed: list[Record]  # listed with state destroyed: the customer asked for it
    asleep: int = 0  # sleeping (decide/dormancy.py): live, without a record in `known`
    absent: tuple[str, ...] = ()  # sleepers not listed, kept asleep: the listing holds every removal


@dataclass(frozen=True)
class Removals:
    held: tuple[Record, ...]
    hold_reason: str | None
    fleet: int
    withheld: tuple[InstanceGuid, ...]
    departed: tuple[InstanceGuid, ...]


def plan_removals(
    draft: Draft,
    listing: Listing,
    known: Mapping[InstanceGuid, Record],
    listed: Listed,
    policy: Policy,
    ownership: Ownership | None,
    recent: list[Departures],
    approved_removals: Collection[str],
    held_before: Collection[str] = frozenset(),
) -> Removals:
    """What left the listing, or asked to be destroyed: departures behind
    the removal guard (which keeps what it holds), retention, and destroys
    still to be read back gone. `held_before`: the removals the last tick
    held (see _destroys_held)."""
    counts, now = draft.counts, draft.now
    gone = listed.destroyed + [r for g, r in known.items() if g not in listed.seen]
    confirming = [r for r in gone if destroy_sent(r)]
    departing = [r for r in gone if r.phase is not Phase.RETAINED and not destroy_sent(r)]
    retained = [r for r in gone if r.phase is Phase.RETAINED and not destroy_sent(r)]
    explicit = {r.guid for r in listed.destroyed}
    # a retained entry the master lists destroyed loses its retention now, on
    # the master's word: guarded like a departure
    ending = [r for r in retained if r.guid in explicit and has_entry(r)]
    # the fleet the master can still remove: entries already gone (retained
    # for 90 days, destroys awaiting read-back) must not dilute the guard
    fleet = len(known) + listed.asleep - len(confirming) - len(retained) + len(ending)
    leaving = [r.guid for r in (*departing, *ending)]
    again = len(counted(recent, leaving))  # decided at an earlier tick, not done yet
    hold_reason = removal_guard(listing, fleet, len(leaving) + len(listed.absent), policy, recent, again)
    holding = [*departing, *ending]  # what a hold keeps
    if hold_reason is None:  # many live entries listed destroyed: those are held, not the others' departures
        destroys = [r for r in departing if r.guid in explicit and has_entry(r)] + ending
        holding, hold_reason = _destroys_held(destroys, fleet, policy, held_before)
    withheld: tuple[InstanceGuid, ...] = ()
    if hold_reason is not None:
        withheld = tuple(r.guid for r in holding) + tuple(InstanceGuid(g) for g in listed.absent)
        if approved_removals and all(g in approved_removals for g in withheld):
            hold_reason, withheld = None, ()
            counts["approved_removals"] = len(holding)
    held: tuple[Record, ...] = ()
    if hold_reason is not None:
        kept = set(withheld)
        held = tuple(r for r in departing if r.guid in kept)
        counts["held"] = len(withheld)
        departing = [r for r in departing if r.guid not in kept]
        explicit -= {r.guid for r in ending if r.guid in kept}  # kept retained
        ending = [r for r in ending if r.guid not in kept]
    counts["removed"] += len(ending)
    departed = tuple(r.guid for r in (*departing, *ending))
    for record in departing:
        counts["removed"] += 1
        action = _departure(record, record.guid in explicit, now, policy, ownership, draft.updates)
        if action is not None:
            draft.add(action, record)
    for record in retained:
        action = _retention(record, record.guid in explicit, now, policy, ownership)
        if action is not None:
            draft.add(action, record)
    for record in confirming:  # a destroy counts once read back: a master may drop one
        draft.add(confirm(record, None), record)
    return Removals(held, hold_reason, fleet, withheld, departed)


def _destroys_held(
    destroys: list[Record], fleet: int, policy: Policy, held_before: Collection[str]
) -> tuple[list[Record], str | None]:
    """The explicit destroys to hold this tick, and why. Those the last tick
    held stay held while the listing asks; the others, new this tick, are
    judged on their own: a customer destroying its one entry while a mass
    destroy is held goes at once, as on any other tick, instead of waiting
    with it (and changing the held set an operator may be approving)."""
    reason = explicit_destroy_guard(len(destroys), fleet, policy)
    if reason is None:
        return [], None
    new = [r for r in destroys if r.guid not in held_before]
    if len(new) < len(destroys) and explicit_destroy_guard(len(new), fleet, policy) is None:
        return [r for r in destroys if r.guid in held_before], reason
    return destroys, reason


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


def confirm(record: Record, gate: Gate | None) -> Action:
    """Read back a destroyed entry (the instance is not passed: the executor
    confirms, it does not request); a listed instance is kept after."""
    return Action(Kind.POLL, record, "confirm the destroy", None, gate, forget=record.phase is Phase.REMOVING)


def lost_host(record: Record, ownership: Ownership | None) -> bool:
    return ownership is not None and any(not ownership.owns(record.guid, h) for h in record.served or ())


def _departure(
    record: Record,
    explicit: bool,
    now: float,
    policy: Policy,
    ownership: Ownership | None,
    updates: list[Record],
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
    if has_entry(record) and lost_host(record, ownership):
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

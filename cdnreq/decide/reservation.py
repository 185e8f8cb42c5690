"""What a tick stores before any call goes out, decided from the plan.

New titles are stored first so that a crash never requests one instance
under two titles; a request may reach the master before a crash, so the
hosts it asks for count as served from then on; held removals are
recorded with their events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from cdnreq.decide.actions import Kind, Plan
from cdnreq.decide.removals import has_entry, held_records
from cdnreq.decide.transitions import requesting
from cdnreq.model import Event, Record


@dataclass(frozen=True)
class Reservation:
    upserts: Sequence[Record]
    events: Sequence[Event]

    def __bool__(self) -> bool:
        return bool(self.upserts or self.events)


def reservation(the_plan: Plan, now: float, tick: int) -> Reservation:
    held = list(held_records(the_plan, now))
    updates = {r.guid: r for r in the_plan.updates}
    for action in the_plan.actions:
        if action.kind in (Kind.REQUEST, Kind.UPDATE) and action.gate is not None:
            record = updates.get(action.guid, action.record)
            widened = requesting(record, action.gate)  # its hosts count as served from now on
            if not has_entry(action.record):
                updates[action.guid] = replace(widened, last_action="requesting")
            elif widened is not record:
                updates[action.guid] = widened
    events = [Event(r.guid, "hold", "held", now, r.last_error, tick) for r in held]
    return Reservation(upserts=[*updates.values(), *held], events=events)

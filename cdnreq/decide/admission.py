"""Admission: how many never-seen instances one tick takes on.

A tick that meets 100,000 new instances holds every one's verdict,
challenge, DNS group and plan at once: the first reconcile's memory grows
with the burst, not with the fleet (600 MB at 100,000). Taking at most
`limit` never-seen instances a tick, the next tick starting at once while
some wait, bounds that to one slice; the work done is the same.

Rules, and why:
- Only never-seen instances wait: one the store knows (awake or asleep) is
  always planned, so a burst of newcomers never delays a change to a live
  site, its destruction or a customer's fix.
- First seen, first taken (then by guid): a newcomer listed after another
  is never taken before it, so no stream of newcomers keeps one waiting for
  ever, and of two newcomers naming one host the one first seen is decided
  first, as it would be in one tick.
- A waiting instance no longer listed is forgotten: it was never told
  anything and nothing was stored for it.
- A never-seen instance listed destroyed never waits: nothing is done for
  it nor stored, so counted it would take a slot at every tick for ever.
- The next tick starts at once only while the queue shrinks (`again`): were
  the taken not to become known, the daemon must not spin.

Pure: no I/O. The tick keeps the queue (`Admitted.waiting`) between ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Container, Mapping

from cdnreq.model import Listing, RequestedState

__all__ = ["Admitted", "admit"]


@dataclass(frozen=True, slots=True)
class Admitted:
    """The listing this tick plans, and who waits: guid -> the tick that first listed it."""

    listing: Listing
    waiting: Mapping[str, int] = field(default_factory=dict)
    taken: int = 0  # never-seen instances taken on this tick
    again: bool = False  # some wait, fewer than before: the next tick should start at once


def admit(
    listing: Listing,
    known: Container[str],
    asleep: Container[str],
    waiting: Mapping[str, int],
    tick: int,
    limit: int,
) -> Admitted:
    """The listing with at most `limit` never-seen instances (0: no limit)."""
    new = [i.guid for i in listing.instances
           if i.guid not in known and i.guid not in asleep and i.state is not RequestedState.DESTROYED]
    if limit <= 0 or len(new) <= limit:
        return Admitted(listing, {}, len(new))
    queue = sorted(new, key=lambda guid: (waiting.get(guid, tick), guid))
    left = {guid: waiting.get(guid, tick) for guid in queue[limit:]}
    instances = tuple(i for i in listing.instances if i.guid not in left)
    again = not waiting or len(left) < len(waiting)
    return Admitted(replace(listing, instances=instances), left, limit, again)

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
- First listed, first taken (then by guid), and a newcomer taken keeps its
  place in the domain step: of two newcomers naming one host the one listed
  first proves it first, as it would had both been taken in one tick. So no
  stream of newcomers keeps one waiting for ever either.
- Its place is kept until it is known: a tick that fails after taking it
  does not send it to the back. An unusable entry waits like any other (its
  customer is told at its turn): told, it would be known and jump the queue.
- One listing is never enough evidence: a newcomer the master leaves out
  keeps its place for `keep_unlisted` scheduled listings before it is
  forgotten (it was never told anything and nothing was stored for it); a
  tick started at once (`sighting` false) is no new evidence of its going.
- A taken newcomer's record is created with its first-listed time
  (`created_at`), its place in the domain step's order from then on.
- A never-seen instance listed destroyed takes no slot: nothing is done for
  it nor stored, so counted it would take a slot at every tick for ever.
- The next tick starts at once only while the queue shrinks (`again`):
  were the taken not to become known, the daemon must not spin.

Pure: no I/O. The tick keeps the Queue between ticks, in memory: after a
restart (or in `cdnreq plan`) those still waiting are taken by guid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Container, Mapping

from cdnreq.model import Listing, RequestedState

__all__ = ["Admitted", "Queue", "admit", "place"]


@dataclass(frozen=True, slots=True)
class Queue:
    """What admission keeps between ticks: when each newcomer not yet known
    was first listed, and for how many scheduled listings in a row it has
    been missing."""

    listed_at: Mapping[str, float] = field(default_factory=dict)
    missing: Mapping[str, int] = field(default_factory=dict)
    left: tuple[str, ...] = ()  # listed, left for a later tick by the last admission, in the order taken


def place(queue: Queue, guid: str) -> tuple[float, int] | None:
    """A waiting newcomer's first-listed time and how many wait before it
    (`cdnreq explain`); None when it does not wait."""
    try:
        ahead = queue.left.index(guid)  # a walk in C: about a millisecond at 80,000
    except ValueError:
        return None
    return queue.listed_at[guid], ahead


@dataclass(frozen=True, slots=True)
class Admitted:
    """The listing this tick plans, and the queue it leaves."""

    listing: Listing
    queue: Queue = field(default_factory=Queue)
    taken: int = 0  # never-seen instances taken on this tick
    again: bool = False  # some wait, fewer than before: the next tick should start at once

    @property
    def waiting(self) -> int:
        return len(self.queue.left)


def admit(
    listing: Listing,
    known: Container[str],
    asleep: Container[str],
    queue: Queue,
    now: float,
    limit: int,
    keep_unlisted: int = 3,
    sighting: bool = True,
    left_before: tuple[str, ...] | None = None,
) -> Admitted:
    """The listing with at most `limit` never-seen instances (0: no limit).
    `left_before`: who waited after the last tick that succeeded (the queue
    must shrink from there for `again`), by default `queue.left`."""

    def new(guid: str) -> bool:
        return guid not in known and guid not in asleep

    listed = [i.guid for i in listing.instances if i.state is not RequestedState.DESTROYED and new(i.guid)]
    listed += [guid for guid in listing.unusable if new(guid)]
    first = queue.listed_at
    listed_at = {guid: first.get(guid, now) for guid in listed}
    missing: dict[str, int] = {}
    for guid, at in first.items():
        if guid in listed_at or not new(guid):
            continue
        n = max(1, queue.missing.get(guid, 0) + (1 if sighting else 0))
        if n < keep_unlisted:
            listed_at[guid], missing[guid] = at, n  # left out of this listing: its place is kept
    if limit <= 0 or len(listed) <= limit:
        return Admitted(listing, Queue(listed_at, missing), len(listed))
    order = sorted(listed, key=lambda guid: (listed_at[guid], guid))
    left = tuple(order[limit:])
    waits = set(left)
    instances = tuple(i for i in listing.instances if i.guid not in waits)
    unusable = {g: why for g, why in listing.unusable.items() if g not in waits}
    titles = {g: t for g, t in listing.unusable_titles.items() if g not in waits}
    before = queue.left if left_before is None else left_before
    again = not before or len(left) < len(before)
    kept = replace(listing, instances=instances, unusable=unusable, unusable_titles=titles)
    return Admitted(kept, Queue(listed_at, missing, left), limit, again)

"""Guards against a glitching master: mass removals and mass changes.

A master that hiccups may list a fraction of the fleet, or list everyone
stopped or with an emptied `url`/`custom_domain`. Acting on such a listing
would break live sites, so both kinds of mass decision are held back:

- removals, when the instances gone (this tick plus the departures decided
  over the last `removal_window_s`) reach `max_destroy_fraction` of the
  largest known count of that window; the set held is kept, and an
  operator may approve it (`cdnreq approve`): the next tick removes them if
  every removal it would hold is in the approved set;
- updates of live entries asked by the master (new parameters or a new
  state), when they reach `max_update_fraction` of the live entries (those
  with a technical entry, LIVE or REQUESTED) and at
  least `min_update_hold` of them. Each held update is applied once the same
  target has been seen for `confirm_ticks` consecutive ticks, or at once when
  an operator approved the held set (`cdnreq approve`, by fingerprint).

Pure: the previous state comes in as data (the store keeps it between ticks
and across restarts), the decisions and the next state go out as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from cdnreq.model import Phase, digest

if TYPE_CHECKING:
    from cdnreq.model import Listing

SAMPLE = 5  # held updates named in the status, the log and `cdnreq approve`
CONFIRM_TICKS = 3  # [daemon].confirm_ticks' default


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    allow_empty: bool = False
    max_destroy_fraction: float = 0.5
    removal_window_s: float = 3600.0
    max_update_fraction: float = 0.2
    min_update_hold: int = 2
    confirm_ticks: int = CONFIRM_TICKS


# -- removals -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Departures:
    """Departures decided in one tick: `gone` of `known`, at `at`; `guids`
    are the instances first counted then (empty in a window stored before
    they were kept: those cannot be told apart and count in full)."""

    at: float
    gone: int
    known: int
    guids: frozenset[str] = frozenset()

    def to_json(self) -> list[Any]:
        return [self.at, self.gone, self.known, sorted(self.guids)]

    @classmethod
    def from_json(cls, data: list[Any]) -> "Departures":
        """[at, gone, known, guids]; a window stored before guids were kept has no fourth."""
        return cls(data[0], data[1], data[2], frozenset(data[3]) if len(data) > 3 else frozenset())


def window(history: Iterable[Departures], now: float, policy: GuardPolicy) -> list[Departures]:
    """The departures still inside the sliding window. One dated after `now`
    (the clock stepped back) counts as made now: dropped, it would let a
    shrinking listing start over."""
    return [
        d if d.at <= now else replace(d, at=now)
        for d in history
        if now - d.at < policy.removal_window_s
    ]


def counted(recent: Iterable[Departures], leaving: Iterable[str]) -> frozenset[str]:
    """The instances leaving this tick that the window already counts.

    A departure whose destroy did not go out (the process was killed before,
    the call failed and waits in backoff) is decided again at the next tick;
    counted again, the same few instances would add up tick after tick until
    the guard holds every removal of a fleet that lost only those (issue 11)."""
    leaving = set(leaving)
    return frozenset(g for d in recent for g in d.guids if g in leaving)


def mass_removal(gone: int, base: int, policy: Any) -> bool:
    """The mass-removal bar, one home for the tick and `cdnreq orphans`:
    `gone` of `base` reaches [daemon].max_destroy_fraction."""
    return gone >= policy.max_destroy_fraction * base


def listing_hold(listing: "Listing", known: int, policy: Any) -> str | None:
    """Why this listing holds every removal, whatever is gone: it has entries
    without a guid, or it is empty (unless [daemon].allow_empty). The tick
    then keeps the sleepers it does not name asleep (decide/dormancy.rest):
    reading them back would only mark them held, and back again."""
    if listing.anonymous:
        return (
            f"the master listed {listing.anonymous} entries without an instance_guid;"
            " a missing instance may be one of them"
        )
    if not listing.instances and not listing.unusable and not policy.allow_empty:
        return (
            f"the master listed no instance while {known} are known;"
            " set [daemon].allow_empty = true if that is really so"
        )
    return None


def removal_guard(
    listing: "Listing",
    known: int,
    gone: int,
    policy: Any,
    recent: Iterable[Departures] = (),
    again: int = 0,
) -> str | None:
    """Why removals must be held this tick, or None when they may go ahead.

    `recent` are the departures decided inside the window: a listing that
    shrinks a little each tick is judged on the sum, against the largest
    fleet the window saw, not against the shrinking current one. `again`
    of the `gone` are already in that sum (see `counted`): each instance
    counts once."""
    if gone == 0:
        return None
    if (held := listing_hold(listing, known, policy)) is not None:
        return held
    if not listing.instances and not listing.unusable:
        return None  # the operator said an empty list may be true ([daemon].allow_empty)
    recent = list(recent)
    before = sum(d.gone for d in recent) - again
    base = max([known, *(d.known for d in recent)])
    if mass_removal(gone + before, base, policy):
        since = f" (and {before} more within [daemon].removal_window_s)" if before else ""
        return (
            f"{gone} of {known} known instances are gone{since}, at least"
            f" [daemon].max_destroy_fraction = {policy.max_destroy_fraction:g} of {base}"
        )
    return None


def explicit_destroy_guard(count: int, fleet: int, policy: Any) -> str | None:
    """Why the entries the master lists `destroyed` must be held this tick,
    or None. A destroy takes a site down for good: listing many live
    entries destroyed at once is held at the bar of a mass update (a stop
    is), not only at the removal bar, until the listing stops asking or the
    operator approves. One customer's own destroy is never held."""
    if count < policy.min_update_hold or count < policy.max_update_fraction * fleet:
        return None
    return (
        f"{count} of {fleet} known instances with an entry are listed destroyed in one tick, at least"
        f" [daemon].max_update_fraction = {policy.max_update_fraction:g}; a master that lists live entries"
        " destroyed by mistake would take their sites down"
    )


@dataclass(frozen=True, slots=True)
class HeldRemovals:
    """The removals the last tick held, kept so an operator can approve
    exactly that set (`cdnreq approve`): the next tick applies them if every
    removal it would hold is in it."""

    guids: tuple[str, ...] = ()
    fingerprint: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, guids: Iterable[str], reason: str | None) -> "HeldRemovals":
        held = tuple(sorted(set(guids)))
        return cls(held, digest(["removals", list(held)])[:16], reason) if held else cls()

    def to_json(self) -> dict[str, Any] | None:
        if not self.guids:
            return None
        return {"guids": list(self.guids), "fingerprint": self.fingerprint, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "HeldRemovals":
        if not data or not data.get("guids"):
            return cls()
        return cls(tuple(str(g) for g in data["guids"]), data.get("fingerprint"), data.get("reason"))


# -- updates ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """An update the master asks for on a live entry: its target is the
    forwarded parameters' hash and the requested state."""

    guid: str
    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class HeldUpdates:
    """What the update guard holds, kept between ticks (and restarts)."""

    streaks: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # guid: (target, ticks seen)
    fingerprint: str | None = None  # of the held set, for `cdnreq approve`
    reason: str | None = None
    sample: tuple[tuple[str, str], ...] = ()  # (guid, reason) of the first held

    @property
    def count(self) -> int:
        return len(self.streaks)

    def to_json(self) -> dict[str, Any]:
        return {
            "streaks": {g: list(v) for g, v in self.streaks.items()},
            "fingerprint": self.fingerprint,
            "reason": self.reason,
            "sample": [list(s) for s in self.sample],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "HeldUpdates":
        if not data:
            return cls()
        streaks = {str(g): (str(v[0]), int(v[1])) for g, v in (data.get("streaks") or {}).items()}
        sample = tuple((str(a), str(b)) for a, b in data.get("sample") or ())
        return cls(streaks, data.get("fingerprint"), data.get("reason"), sample)


def held_for(guid: str, removals: HeldRemovals, updates: HeldUpdates) -> dict[str, Any] | None:
    """What the guards hold of one instance (`cdnreq explain`): its removal
    or its update, why, and the fingerprint `cdnreq approve` takes."""
    if guid in removals.guids:
        return {"kind": "removal", "reason": removals.reason, "fingerprint": removals.fingerprint}
    if guid in updates.streaks:
        return {"kind": "update", "reason": updates.reason, "fingerprint": updates.fingerprint,
                "seen_ticks": updates.streaks[guid][1]}
    return None


def fingerprint(changes: Iterable[Change]) -> str:
    """The same held set gives the same fingerprint, whatever the order."""
    return digest(sorted([c.guid, c.target] for c in changes))[:16]


def is_mass(count: int, live: int, policy: GuardPolicy) -> bool:
    """Whether `count` updates of `live` entries in one tick is a mass change."""
    return count >= policy.min_update_hold and count >= policy.max_update_fraction * live


class UpdateGuard:
    """One tick's update guard. `sift` is called once per planning stage; the
    count runs over the whole tick, so a stage cannot slip under the bar by
    coming after another. Once the tick's count is a mass change, every
    further change is held unless confirmed or approved. An instance held at
    the last tick stays held, mass change or not, until confirmed or
    approved: a glitch that recedes below the bar does not apply what is
    left of it on less evidence."""

    def __init__(self, previous: HeldUpdates, approved: str | None, live: int, policy: GuardPolicy, step: int = 1):
        self.previous = previous
        self.step = step  # 0: this tick is no new sighting (started at once for admission)
        self.approved = approved is not None and approved == previous.fingerprint
        self.live = live
        self.policy = policy
        self.seen = 0
        self.held: dict[str, Change] = {}
        self.streaks: dict[str, tuple[str, int]] = {}
        self.applied_on_approval = 0
        self.confirmed = 0

    def _streak(self, change: Change) -> int:
        target, count = self.previous.streaks.get(change.guid, ("", 0))
        return max(1, count + self.step) if target == change.target else 1

    def sift(self, changes: Iterable[Change]) -> set[str]:
        """The guids whose change is held this tick."""
        changes = list(changes)
        self.seen += len(changes)
        mass = is_mass(self.seen, self.live, self.policy)
        if not mass and not self.previous.streaks:
            return set()
        held: set[str] = set()
        for change in changes:
            if not mass and change.guid not in self.previous.streaks:
                continue
            streak = self._streak(change)
            if self.approved and self.previous.streaks.get(change.guid, ("", 0))[0] == change.target:
                self.applied_on_approval += 1
                continue
            if streak >= self.policy.confirm_ticks:
                self.confirmed += 1
                continue
            self.held[change.guid] = change
            self.streaks[change.guid] = (change.target, streak)
            held.add(change.guid)
        return held

    def state(self) -> HeldUpdates:
        """What to keep for the next tick (empty when nothing is held)."""
        if not self.held:
            return HeldUpdates()
        changes = sorted(self.held.values(), key=lambda c: c.guid)
        least = min(s for _, s in self.streaks.values())
        bar = f"[daemon].max_update_fraction = {self.policy.max_update_fraction:g}"
        why = (
            f"{self.seen} of {self.live} live instances would be updated in one tick, at least {bar}"
            if is_mass(self.seen, self.live, self.policy)
            else f"{len(changes)} updates held since a mass change (at least {bar}) are still asked for"
        )
        reason = (
            f"{why}; held until seen for {self.policy.confirm_ticks} ticks (seen {least}) or `cdnreq approve`"
        )
        sample = tuple((c.guid, c.reason) for c in changes[:SAMPLE])
        return HeldUpdates(dict(self.streaks), fingerprint(changes), reason, sample)


def serving(record: Any) -> bool:
    """A technical entry exists and is on its way or live: an update of it
    changes a site that may be serving (an entry updated a moment ago is
    REQUESTED until the CDN answers again)."""
    return record.tech_guid is not None and record.phase in (Phase.LIVE, Phase.REQUESTED)


def live_count(records: Iterable[Any]) -> int:
    return sum(1 for r in records if serving(r))


def changes(actions: Iterable[Any]) -> list[Change]:
    """The updates of live entries the master asked for: new forwarded
    parameters (an emptied `url` or `custom_domain` among them) or a new
    state (stopped). A change of the technical CDN's own settings comes from
    the operator's configuration, not from the master, and is not counted."""
    out = []
    for a in actions:
        if a.kind.value != "update" or not serving(a.record) or a.instance is None or a.gate is None:
            continue
        record, state = a.record, a.instance.state
        if record.param_hash != a.gate.forward_hash or record.requested_state is not state:
            out.append(Change(a.guid, f"{a.gate.forward_hash}:{state.value}", a.reason))
    return out


def release_due(unnamed_ticks: int, confirm_ticks: int) -> bool:
    """A claim an instance stops naming is released only after it has not
    been named for `confirm_ticks` consecutive ticks: one listing is never
    enough evidence."""
    return unnamed_ticks >= confirm_ticks

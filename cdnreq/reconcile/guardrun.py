"""One tick's guards, between the store and the pure rules of guards.py.

Loads the guards' state at the start of the tick, takes held updates out of
each stage's plan, and stores the next state before any call of the tick is
made, so a crash or a restart never resets a confirmation streak or the
removal window (a lost write errs on the side of holding). The ticks each
host has gone unnamed by its owner are stored at the end of the tick, so
`cdnreq once` from cron releases a dropped host as the daemon does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

import structlog

from cdnreq.config import Config
from cdnreq.decide import changes as feed
from cdnreq.model import Event, InstanceGuid, Listing, Record
from cdnreq.decide.guards import (
    Departures,
    GuardPolicy,
    HeldRemovals,
    HeldUpdates,
    UpdateGuard,
    changes,
    counted,
    listing_hold,
    live_count,
    window,
)
from cdnreq.decide.plan import Kind, Plan
from cdnreq.store import TickStore

log = structlog.get_logger("cdnreq.guards")

UPDATES, REMOVALS, APPROVAL = "updates", "removals", "approval"
HELD_REMOVALS = "held_removals"  # the removal set held at the last tick, for `cdnreq approve`


def guard_policy_of(config: Config) -> GuardPolicy:
    d = config.daemon
    return GuardPolicy(
        allow_empty=d.allow_empty,
        max_destroy_fraction=d.max_destroy_fraction,
        removal_window_s=d.removal_window_s,
        max_update_fraction=d.max_update_fraction,
        min_update_hold=d.min_update_hold,
        confirm_ticks=d.confirm_ticks,
    )


def held_view(state: HeldUpdates, policy: GuardPolicy) -> dict[str, Any] | None:
    """Held updates as /status, the tick summary and `cdnreq approve` show them."""
    if not state.count:
        return None
    return {
        "count": state.count,
        "reason": state.reason,
        "fingerprint": state.fingerprint,
        "streak": min(s for _, s in state.streaks.values()),
        "needed": policy.confirm_ticks,
        "sample": [{"guid": g, "reason": r} for g, r in state.sample],
    }


class GuardRun:
    def __init__(self, store: TickStore, policy: GuardPolicy, saved: Mapping[str, Any], live: int | None, now: float,
                 sighting: bool = True):
        self.store, self.policy, self.now = store, policy, now
        self.saved = dict(saved)  # as stored: an idle tick writes nothing
        history = [Departures.from_json(d) for d in saved.get(REMOVALS) or ()]
        self.recent = window(history, now, policy)
        self.previous = HeldUpdates.from_json(saved.get(UPDATES))
        approval = saved.get(APPROVAL)
        self.approval_saved = approval if isinstance(approval, dict) else None
        self.approval = self.approval_saved.get("fingerprint") if self.approval_saved else None
        held_removals_ = HeldRemovals.from_json(saved.get(HELD_REMOVALS))
        self.held_before = frozenset(held_removals_.guids)  # the removals the last tick held
        approved = self.approval_saved.get("removals") if self.approval_saved else None
        # the removals approved for this tick: exactly the set the operator saw held
        self.approved_removals = (
            frozenset(held_removals_.guids) if approved and approved == held_removals_.fingerprint else frozenset()
        )
        self.updates = UpdateGuard(self.previous, self.approval, live or 0, policy, 1 if sighting else 0)
        self._live_of: Mapping[InstanceGuid, Record] | None = None  # counted when first needed
        self._asleep: Any = None  # reconcile/sleepers.Sleepers: counted with them
        self.held_count = 0
        self.known = 0  # instances known when the tick was planned
        self.removals_fingerprint: str | None = None  # of the removals held this tick, for `cdnreq approve`
        self._announced: set[str] = set()  # held guids with an event this tick
        self._logged = False

    @classmethod
    async def start(
        cls, store: TickStore, config: Config, known: Mapping[InstanceGuid, Record], now: float, asleep: Any = None,
        sighting: bool = True,
    ) -> "GuardRun":
        """`asleep`: the sleeping instances (reconcile/sleepers.Sleepers), known too.
        `sighting`: whether this tick counts towards a held update's streak."""
        run = cls(store, guard_policy_of(config), await store.load_guards(), None, now, sighting)
        run.known, run._live_of, run._asleep = len(known) + len(asleep or ()), known, asleep
        return run

    def keeps_absent(self, listing: Listing) -> bool:
        """Whether this tick's listing holds every removal, with no approval
        to let them through: the sleepers it does not name then sleep on."""
        return listing_hold(listing, self.known, self.policy) is not None and not self.approved_removals

    def sift(self, the_plan: Plan) -> Plan:
        """The plan without the updates the guard holds this tick."""
        found = changes(the_plan.actions)
        if not found:
            return the_plan
        if self._live_of is not None:  # an idle tick at 100,000 need not count them
            asleep = self._asleep.serving() if self._asleep is not None else 0
            self.updates.live, self._live_of = live_count(self._live_of.values()) + asleep, None
        held = self.updates.sift(found)
        if not held:
            return the_plan
        self.held_count += len(held)
        actions = tuple(a for a in the_plan.actions if not (a.kind is Kind.UPDATE and a.guid in held))
        counts = dict(the_plan.counts)
        counts["update"] = counts.get("update", 0) - len(held)
        counts["held_updates"] = counts.get("held_updates", 0) + len(held)
        return replace(the_plan, actions=actions, counts=counts)

    def view(self) -> dict[str, Any] | None:
        return held_view(self.updates.state(), self.policy)

    async def save(self, first: Plan | None, tick: int) -> None:
        """Store the window (with this tick's departures) and the held updates;
        log a hold when it starts and when it ends. The approval read at the
        start of the tick is used up here even when the held set it named has
        gone: kept, it would approve the same glitch when it comes back."""
        state = self.updates.state()
        values: dict[str, Any] = {UPDATES: state.to_json() if state.count else None}
        if first is not None:
            history = [d.to_json() for d in self.recent]
            # each departure once: one decided again (its destroy never went out) is in already
            gone = set(first.departed) - counted(self.recent, first.departed)
            if gone:
                fleet = self.known if first.fleet is None else first.fleet
                history.append(Departures(self.now, len(gone), fleet, frozenset(gone)).to_json())
            values[REMOVALS] = history or None
            removals = HeldRemovals.of(first.withheld, first.hold_reason)
            self.removals_fingerprint = removals.fingerprint
            values[HELD_REMOVALS] = removals.to_json()
        changed = {k: v for k, v in values.items() if v != self.saved.get(k)}
        if changed:
            await self.store.save_guards(changed, self.now)
            self.saved.update(changed)
        if self.approval_saved is not None:  # used or not, an approval is for this tick only
            await self.store.clear_guard(APPROVAL, self.approval_saved)
            self.approval_saved = self.approval = None
        fresh = [Event(g, "hold", "held", self.now, state.reason, tick)
                 for g, (_, streak) in state.streaks.items() if streak == 1 and g not in self._announced]  # fmt: skip
        if fresh:
            await self.store.commit(events=fresh, changes=feed.held(fresh, "update"))
            self._announced.update(e.instance_guid for e in fresh)
        if self._logged:
            return
        self._logged = True
        if state.count and not self.previous.count:
            log.error("updates held", **(held_view(state, self.policy) or {}))
        elif self.previous.count and not state.count:
            log.warning(
                "held updates released",
                confirmed=self.updates.confirmed,
                approved=self.updates.applied_on_approval,
            )


def held_removals(report: Any) -> dict[str, Any] | None:
    """Held removals of a TickReport, as /status shows them."""
    if report is None or not report.hold_reason:
        return None
    view = {"count": report.held_removals, "reason": report.hold_reason}
    if getattr(report, "removals_fingerprint", None):
        view["fingerprint"] = report.removals_fingerprint
    return view


def held_reason(report: Any) -> str | None:
    """What the last tick held, in one sentence for /readyz; None when nothing."""
    if report is None:
        return None
    parts = []
    if report.hold_reason:
        parts.append(f"removals held: {report.hold_reason}")
    if report.held_updates:
        parts.append(f"updates held: {report.held_updates['reason']}")
    return "; ".join(parts) or None

"""The guards against a glitching master (issue 10, properties 12 and 13), as
pure rules: cdnreq/decide/guards.py, and the planner that calls them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from cdnreq.model import Listing
from cdnreq.model import Phase, Record, SharedInstance, shown_digest
from cdnreq.operator import apply
from cdnreq.reconcile.guardrun import GuardRun
from cdnreq.decide.guards import (
    Change,
    Departures,
    GuardPolicy,
    HeldRemovals,
    HeldUpdates,
    UpdateGuard,
    changes,
    fingerprint,
    is_mass,
    removal_guard,
    window,
)
from cdnreq.decide.plan import Kind, Policy, new_record, plan
from cdnreq.decide.removals import held_records
from cdnreq.decide.operator import OperatorAction
from cdnreq.store import Store


async def approve(store: Store, policy: GuardPolicy, fingerprint: str | None, now: float):
    """`cdnreq approve [--fingerprint F]` on the store, as the command runs it with no daemon."""
    action = OperatorAction("approve", fingerprints=(fingerprint,) if fingerprint else (), by="by test (uid 0)")
    return await apply(store, None, action, policy=policy, now=now)

NOW = 1_000_000.0
POLICY = Policy(request_prefix="cdnreq-", spec_hash="spec-1")
GUARDS = GuardPolicy()


def inst(guid: str, state: str = "started", **params: str) -> SharedInstance:
    return SharedInstance.of(guid, params or {"url": f"https://{guid}.example"}, state=state)


def live(instance: SharedInstance) -> Record:
    return replace(
        new_record(instance.guid, POLICY.request_prefix, NOW - 100),
        phase=Phase.LIVE, param_hash=instance.param_hash, requested_state=instance.state,
        spec_hash=POLICY.spec_hash, tech_guid=f"tech-{instance.guid}",
        connection={"domain": "x.cdn"}, published=shown_digest({"domain": "x.cdn"}),
    )  # fmt: skip


def listing(*instances: SharedInstance) -> Listing:
    return Listing(tuple(instances), {}, 0)


# -- removals: strict at the threshold, over a sliding window --------------------


@pytest.mark.parametrize(
    ("known", "gone", "held"),
    [
        (10, 4, False),  # below 0.5
        (10, 5, True),  # at: held (>=)
        (10, 6, True),  # above
        (2, 1, True),  # 1 of 2 is half the fleet
        (3, 1, False),
        (1, 0, False),
    ],
)
def test_removal_guard_is_strict_at_the_threshold(known: int, gone: int, held: bool) -> None:
    instances = [inst(f"I{i}") for i in range(known - gone)]
    reason = removal_guard(listing(*instances), known, gone, POLICY)
    assert (reason is not None) == held
    if held:
        assert f"{gone} of {known}" in reason and "max_destroy_fraction" in reason


def test_removal_guard_counts_the_departures_of_the_window() -> None:
    # 3 of 20 now is fine alone, but 11 more left 10 minutes ago, when 31 were known: 14 >= 15.5? no
    recent = [Departures(NOW - 600, 11, 31)]
    assert removal_guard(listing(*(inst(f"I{i}") for i in range(17))), 20, 3, POLICY, recent) is None
    recent = [Departures(NOW - 600, 12, 32)]  # 15 of the 32 the window saw, and 3 more: 16 >= 16
    reason = removal_guard(listing(*(inst(f"I{i}") for i in range(16))), 20, 4, POLICY, recent)
    assert reason is not None and "12 more" in reason and "of 32" in reason
    # outside the window, they no longer count
    assert window(recent, NOW + 3600, GUARDS) == []
    assert removal_guard(listing(*(inst(f"I{i}") for i in range(17))), 20, 3, POLICY, ()) is None


def test_departures_from_a_clock_that_stepped_back_still_count() -> None:
    """The window is kept in wall-clock time (it survives restarts). When the
    clock steps back past the last departures (NTP, a VM restored), those
    departures are not dropped from the window, which a drip would use to
    start over (#13): they count as if made now, for one window."""
    ahead = [Departures(NOW + 7200, 18, 40)]
    assert window(ahead, NOW, GUARDS) == [Departures(NOW, 18, 40)]
    assert window(window(ahead, NOW, GUARDS), NOW + 3600, GUARDS) == []  # stored as clamped: one window


def shrinking(recent_of) -> int:
    """A master whose listing shrinks by 45 % per tick, 8 ticks at 60 s,
    retention 0, max_destroy_fraction 0.5: how many of 40 are destroyed.
    `recent_of(history, now)` is the window given to the planner."""
    instances = [inst(f"I{i:02}") for i in range(40)]
    records = {i.guid: live(i) for i in instances}
    listed, destroyed, history = 40, 0, []
    for tick in range(8):
        now = NOW + 60 * tick
        listed = math.floor(listed * 0.55 + 0.5)
        p = plan(listing(*instances[:listed]), records, now, POLICY, recent=recent_of(history, now))
        gone = [a.guid for a in p.actions if a.kind is Kind.DESTROY]
        destroyed += len(gone)
        if p.counts.get("removed"):
            history.append(Departures(now, p.counts["removed"], len(records)))
        for guid in gone:  # destroyed, read back, forgotten
            del records[guid]
        for record in held_records(p, now):
            records[record.guid] = record
    return destroyed


def test_a_listing_shrinking_45_percent_a_tick_cannot_destroy_the_fleet() -> None:
    destroyed = shrinking(lambda history, now: window(history, now, GUARDS))
    assert destroyed < 20  # less than max_destroy_fraction of the 40, over the window
    # the same master judged one tick at a time loses most of the fleet
    # (36 of 40 with >=; 39 with the old strict >, as the issue says)
    assert shrinking(lambda history, now: ()) > 30


async def test_the_removal_window_survives_a_restart(tmp_path: Path) -> None:
    """The departures of the window are stored: a new process keeps counting them."""
    store = await Store.open(tmp_path / "x.db")
    try:
        run = GuardRun(store, GUARDS, {}, live=0, now=NOW)
        run.known = 40
        fleet = {f"I{i}": live(inst(f"I{i}")) for i in range(40)}
        p = plan(listing(*(inst(f"I{i}") for i in range(22))), fleet, NOW, POLICY)  # 18 of 40 leave
        await run.save(p, tick=1)
    finally:
        await store.close()
    store = await Store.open(tmp_path / "x.db")
    try:
        again = GuardRun(store, GUARDS, await store.load_guards(), live=0, now=NOW + 60)
        assert [(d.at, d.gone, d.known) for d in again.recent] == [(NOW, 18, 40)]
        assert again.recent[0].guids == {f"I{i}" for i in range(22, 40)}
    finally:
        await store.close()


async def test_a_departure_decided_again_counts_once_in_the_window(tmp_path: Path) -> None:
    """Issue 11: 4 of 40 leave, and their destroys never go out (the daemon is
    killed after the guard's save, each time, or the calls fail). Every tick
    decides the same 4 departures again; counted each time, they added up to
    half the fleet at the fifth tick and every removal was held for the rest
    of the window. Each instance counts once; a new one still adds to them."""
    store = await Store.open(tmp_path / "x.db")
    fleet = {f"I{i:02}": live(inst(f"I{i:02}")) for i in range(40)}
    try:
        for tick in range(12):
            now = NOW + 60 * tick
            run = GuardRun(store, GUARDS, await store.load_guards(), live=0, now=now)
            run.known = len(fleet)
            p = plan(listing(*(inst(f"I{i:02}") for i in range(36))), fleet, now, POLICY, recent=run.recent)
            assert p.hold_reason is None, f"tick {tick}: {p.hold_reason}"
            assert sorted(a.guid for a in p.actions if a.kind is Kind.DESTROY) == ["I36", "I37", "I38", "I39"]
            await run.save(p, tick=tick)  # ... and the destroys are lost: the fleet is unchanged
        run = GuardRun(store, GUARDS, await store.load_guards(), live=0, now=now + 60)
        assert sum(d.gone for d in run.recent) == 4
        # the 4 destroyed at last, then 16 more leave: 20 of the 40 in the window, held
        for guid in ("I36", "I37", "I38", "I39"):
            del fleet[guid]
        p = plan(listing(*(inst(f"I{i:02}") for i in range(20))), fleet, now + 60, POLICY, recent=run.recent)
        assert p.hold_reason is not None and "(and 4 more" in p.hold_reason and p.counts["held"] == 16
    finally:
        await store.close()


# -- updates: held when massive, applied when confirmed or approved --------------


@pytest.mark.parametrize(
    ("count", "live_", "mass"),
    [
        (1, 20, False),  # an operator's change
        (3, 20, False),  # below 0.2
        (4, 20, True),  # at 0.2: held (>=)
        (20, 20, True),
        (1, 3, False),  # under the floor of min_update_hold = 2: one customer's own edit
        (1, 1, False),
        (2, 3, True),  # a fleet of 2 or 3 is not stopped by one bad listing
        (2, 2, True),
        (3, 3, True),
    ],
)
def test_mass_change_threshold(count: int, live_: int, mass: bool) -> None:
    assert is_mass(count, live_, GUARDS) is mass


def stopped_fleet(n: int = 20, stopped: int = 20) -> tuple[list[Change], dict[str, Record]]:
    """The master lists `stopped` of `n` live instances as stopped."""
    instances = [inst(f"I{i:02}") for i in range(n)]
    records = {i.guid: live(i) for i in instances}
    listed = [inst(i.guid, state="stopped") if k < stopped else i for k, i in enumerate(instances)]
    p = plan(listing(*listed), records, NOW, POLICY)
    return changes(p.actions), records


def test_a_master_that_stops_everyone_is_held_for_confirm_ticks() -> None:
    found, records = stopped_fleet()
    assert len(found) == 20 and all(c.reason == "state changed to stopped" for c in found)
    state = HeldUpdates()
    for tick in range(1, 3):  # seen once, twice: held
        guard = UpdateGuard(state, None, live=20, policy=GUARDS)
        assert guard.sift(found) == {c.guid for c in found}
        state = guard.state()
        assert state.count == 20 and min(s for _, s in state.streaks.values()) == tick
        assert "20 of 20 live instances" in state.reason and "max_update_fraction" in state.reason
    guard = UpdateGuard(state, None, live=20, policy=GUARDS)  # the third tick: confirmed
    assert guard.sift(found) == set() and guard.confirmed == 20
    assert guard.state() == HeldUpdates()


def test_a_different_change_restarts_the_streak() -> None:
    found, _ = stopped_fleet()
    guard = UpdateGuard(HeldUpdates(), None, live=20, policy=GUARDS)
    guard.sift(found)
    guard = UpdateGuard(guard.state(), None, live=20, policy=GUARDS)
    guard.sift(found)
    # the third listing sends I00 somewhere else: its streak starts again, the rest go
    other = [Change(c.guid, "other:started", c.reason) if c.guid == "I00" else c for c in found]
    guard = UpdateGuard(guard.state(), None, live=20, policy=GUARDS)
    assert guard.sift(other) == {"I00"}
    assert guard.state().streaks == {"I00": ("other:started", 1)}


def test_an_operator_approval_applies_the_held_set_at_once() -> None:
    found, _ = stopped_fleet()
    guard = UpdateGuard(HeldUpdates(), None, live=20, policy=GUARDS)
    guard.sift(found)
    held = guard.state()
    assert held.fingerprint == fingerprint(found)
    # an approval of another set changes nothing
    assert UpdateGuard(held, "something-else", live=20, policy=GUARDS).sift(found) == {c.guid for c in found}
    approved = UpdateGuard(held, held.fingerprint, live=20, policy=GUARDS)
    assert approved.sift(found) == set() and approved.applied_on_approval == 20


def test_a_small_change_is_applied_at_once() -> None:
    found, _ = stopped_fleet(20, stopped=1)
    guard = UpdateGuard(HeldUpdates(), None, live=20, policy=GUARDS)
    assert len(found) == 1 and guard.sift(found) == set() and guard.state() == HeldUpdates()


def test_the_count_runs_over_the_stages_of_a_tick() -> None:
    found, _ = stopped_fleet()
    guard = UpdateGuard(HeldUpdates(), None, live=20, policy=GUARDS)
    assert guard.sift(found[:3]) == set()  # the first stage alone is not a mass change
    assert guard.sift(found[3:]) == {c.guid for c in found[3:]}  # the later ones bring it there


def test_emptied_url_and_custom_domain_count_and_settings_do_not() -> None:
    a, b = inst("A", url="https://a.example", custom_domain="a.example"), inst("B")
    records = {a.guid: live(a), b.guid: live(b)}
    p = plan(listing(inst("A", url="https://a.example"), inst("B", enable_cache="true")), records, NOW, POLICY)
    assert sorted(c.guid for c in changes(p.actions)) == ["A", "B"]
    p = plan(listing(a, b), records, NOW, replace(POLICY, spec_hash="spec-2"))
    assert [x.kind for x in p.actions] == [Kind.UPDATE] * 2 and changes(p.actions) == []
    pending = {g: replace(r, phase=Phase.NEW, tech_guid=None) for g, r in records.items()}  # no entry: not counted
    p = plan(listing(inst("A", state="stopped"), inst("B", state="stopped")), pending, NOW, POLICY)
    assert changes(p.actions) == []


async def test_approve_writes_the_held_fingerprint(tmp_path: Path) -> None:
    found, _ = stopped_fleet()
    store = await Store.open(tmp_path / "x.db")
    try:
        nothing = await approve(store, GUARDS, None, NOW)
        assert not nothing.ok and "nothing is held" in nothing.message
        run = GuardRun(store, GUARDS, {}, live=20, now=NOW)
        run.updates.sift(found)
        await run.save(None, tick=1)
        stale = await approve(store, GUARDS, "stale", NOW)
        assert not stale.ok and "--fingerprint stale is not a held set" in stale.message
        shown = await approve(store, GUARDS, None, NOW)
        assert shown.ok and "approved 20 update(s)" in shown.message and "seen 1 of 3 ticks" in shown.message
        saved = await store.load_guards()
        assert saved["approval"] == {"fingerprint": fingerprint(found)}
        # the next tick applies them, and the approval is used up
        run = GuardRun(store, GUARDS, saved, live=20, now=NOW + 60)
        assert run.updates.sift(found) == set()
        await run.save(None, tick=2)
        assert "approval" not in await store.load_guards() and "updates" not in await store.load_guards()
    finally:
        await store.close()


def test_held_state_round_trips_through_json() -> None:
    state = HeldUpdates({"A": ("h:stopped", 2)}, "f", "why", (("A", "state changed to stopped"),))
    assert HeldUpdates.from_json(state.to_json()) == state
    assert HeldUpdates.from_json(None) == HeldUpdates()


# -- a tick: one glitching listing changes nothing ---------------------------------


async def test_one_listing_without_any_custom_domain_changes_nothing(tmp_path: Path) -> None:
    """A master that lists the whole fleet without custom_domain for one tick:
    no update is sent, no claim released; the next normal listing finds
    everything as it was."""
    from test_tick_stages import Dns, customer, reconciler, title
    from test_tick_stages import config as tick_config

    opened: list[Store] = []
    try:
        fleet = [customer(f"C{i}", f"www.c{i}.example") for i in range(10)]
        r, master = await reconciler(opened, tick_config(tmp_path), fleet, Dns({}), proven={c.guid for c in fleet})
        for _ in range(3):  # requested, read back, live
            assert (await r.tick()).ok
        store = opened[0]
        records = await store.load()
        assert all(rec.phase is Phase.LIVE and rec.served for rec in records.values()), records
        hosts = set(await store.load_hosts())
        assert len(hosts) == 10
        requests = list(master.requests)

        master.instances = tuple(customer(c.guid) for c in fleet)  # the glitch
        report = await r.tick()
        assert report.ok, report.error
        assert master.requests == requests  # nothing updated
        assert report.held_updates is not None and report.held_updates["count"] == 10
        assert report.planned["held_updates"] == 10 and report.planned.get("update", 0) == 0
        assert set(await store.load_hosts()) == hosts and await store.load() == records

        master.instances = tuple(fleet)  # the master is itself again
        report = await r.tick()
        assert report.ok and report.held_updates is None
        assert master.requests == requests and set(await store.load_hosts()) == hosts
        assert "updates" not in await store.load_guards()
        assert {title(c.guid) for c in fleet} == {rec.title for rec in (await store.load()).values()}
    finally:
        for store in opened:
            await store.close()


async def test_an_approval_is_used_up_by_the_next_tick_even_when_the_held_set_went_away(tmp_path: Path) -> None:
    """An approval names one held set; the master recovers before the next
    tick, so nothing is applied. When the same glitch comes back weeks later
    (everyone stopped again: same guids, same targets, same fingerprint), the
    old approval must not apply it on its second tick (#12: held until
    confirmed or approved again)."""
    found, _ = stopped_fleet()
    store = await Store.open(tmp_path / "x.db")
    try:
        run = GuardRun(store, GUARDS, {}, live=20, now=NOW)
        run.updates.sift(found)
        await run.save(None, tick=1)
        assert (await approve(store, GUARDS, None, NOW)).ok
        # tick 2: the master lists everyone started again, nothing to change
        run = GuardRun(store, GUARDS, await store.load_guards(), live=20, now=NOW + 60)
        await run.save(None, tick=2)
        assert "approval" not in await store.load_guards()
        # ticks 3 and 4: the same glitch is back; seen twice, it is still held
        for tick in (3, 4):
            run = GuardRun(store, GUARDS, await store.load_guards(), live=20, now=NOW + 60 * tick)
            assert run.updates.sift(found) == {c.guid for c in found}, f"tick {tick}"
            await run.save(None, tick=tick)
    finally:
        await store.close()


def test_retained_entries_the_master_then_lists_destroyed_count_against_the_removal_guard() -> None:
    """Retention keeps the entries of instances the master stopped listing. A
    master that then lists them destroyed (the same glitch, gone one way then
    the other) must not cut their retention short for all at once: a destroy
    of a retained entry asked by the master is a departure like any other
    for max_destroy_fraction and its window (#13)."""
    retain = replace(POLICY, retention_s=3600.0)
    instances = [inst(f"I{i}") for i in range(10)]
    records = {i.guid: live(i) for i in instances}
    first = plan(listing(*instances[4:]), records, NOW, retain)  # 4 of 10 unlisted: retained
    assert first.hold_reason is None and first.actions == () and first.counts["removed"] == 4
    records.update({r.guid: r for r in first.updates})
    back_destroyed = listing(*(inst(i.guid, state="destroyed") for i in instances[:4]), *instances[4:])
    second = plan(back_destroyed, records, NOW + 60, retain, recent=[Departures(NOW, 4, 10)])
    assert [a.guid for a in second.actions if a.kind is Kind.DESTROY] == []
    assert second.hold_reason is not None and "4 of 10" in second.hold_reason and second.counts["held"] == 4
    # one customer's destroy of its retained entry still goes at once
    one = listing(inst("I0", state="destroyed"), *instances[4:])
    alone = plan(one, records, NOW + 60, retain)
    assert [a.guid for a in alone.actions if a.kind is Kind.DESTROY] == ["I0"] and alone.hold_reason is None


def test_a_held_update_stays_held_when_the_glitch_shrinks_below_the_threshold() -> None:
    """The master lists all 20 stopped, then 2 of them still stopped: those 2
    were held as part of a mass change and have been seen twice, not
    confirm_ticks times. A glitch that recedes below the threshold must not
    apply its remainder at once (#12); an unrelated small change still goes."""
    found, _ = stopped_fleet()
    guard = UpdateGuard(HeldUpdates(), None, live=20, policy=GUARDS)
    assert guard.sift(found) == {c.guid for c in found}
    other = Change("OTHER", "h:started", "parameters changed")  # never held
    guard = UpdateGuard(guard.state(), None, live=20, policy=GUARDS)
    assert guard.sift([*found[:2], other]) == {c.guid for c in found[:2]}
    state = guard.state()
    assert state.count == 2 and "max_update_fraction" in (state.reason or "")
    guard = UpdateGuard(state, None, live=20, policy=GUARDS)  # seen a third time: confirmed
    assert guard.sift(found[:2]) == set() and guard.confirmed == 2


async def test_a_host_no_longer_named_is_released_under_cron_style_ticks(tmp_path: Path) -> None:
    """`cdnreq once` from cron starts a new process each tick. The ticks a
    host has gone unnamed are counted towards confirm_ticks across them (as
    held updates' streaks are), or a host its owner dropped would be kept for
    ever and nobody else could ever prove it (#12 with #9)."""
    from test_tick_stages import Dns, customer, reconciler
    from test_tick_stages import config as tick_config

    opened: list[Store] = []
    try:
        owner = customer("C0", "www.c0.example")
        r, master = await reconciler(opened, tick_config(tmp_path), [owner], Dns({}), proven={owner.guid})
        for _ in range(3):  # requested, read back, live
            assert (await r.tick()).ok
        store = opened[0]
        assert set(await store.load_hosts()) == {"www.c0.example"}
        master.instances = (customer("C0"),)  # its customer drops the custom domain
        for tick in range(10):
            await r.load()  # a new process, as `cdnreq once` is
            report = await r.tick()
            assert report.ok, report.error
            if not await store.load_hosts():
                break
        else:
            raise AssertionError("www.c0.example is never released")
        assert tick >= 3  # not on one tick's evidence: updated, read back, then 3 unnamed ticks
    finally:
        for store in opened:
            await store.close()


def test_entries_already_gone_do_not_dilute_the_removal_guard() -> None:
    """Retention (90 days by default) keeps the entries of customers who
    left. They are not part of the fleet a glitching master can remove: a
    listing naming 6 of 10 live instances destroyed must be held even with
    20 retained entries known (6 of 30 would pass max_destroy_fraction)."""
    retain = replace(POLICY, retention_s=90 * 86400.0)
    instances = [inst(f"I{i}") for i in range(10)]
    records = {i.guid: live(i) for i in instances}
    for k in range(20):
        left = live(inst(f"R{k:02}"))
        records[left.guid] = replace(left, phase=Phase.RETAINED, gone_at=NOW - 86400)
    glitch = listing(*(inst(i.guid, state="destroyed") for i in instances[:6]), *instances[6:])
    p = plan(glitch, records, NOW, retain)
    assert [a.guid for a in p.actions if a.kind is Kind.DESTROY] == []
    assert p.hold_reason is not None and "6 of 10" in p.hold_reason
    # and the window remembers departures against the same fleet
    ok = plan(listing(inst("I0", state="destroyed"), *instances[1:]), records, NOW, retain)
    assert ok.hold_reason is None and ok.counts["removed"] == 1 and ok.fleet == 10


def test_approved_removals_go_ahead_only_when_they_cover_every_held_one() -> None:
    """Issue 11 #4 (`cdnreq approve` of held removals): the approved set is
    the one the operator saw held; a listing that lost one more instance
    since is held again, with a new fingerprint."""
    instances = [inst(f"I{i}") for i in range(4)]
    records = {i.guid: live(i) for i in instances}
    held = plan(listing(instances[0]), records, NOW, POLICY)
    assert held.hold_reason is not None and sorted(held.withheld) == ["I1", "I2", "I3"]
    approved = plan(listing(instances[0]), records, NOW, POLICY, approved_removals=set(held.withheld))
    assert approved.hold_reason is None and approved.counts["approved_removals"] == 3
    assert sorted(a.guid for a in approved.actions if a.kind is Kind.DESTROY) == ["I1", "I2", "I3"]
    one_more = plan(listing(), records, NOW, replace(POLICY, allow_empty=False), approved_removals=set(held.withheld))
    assert one_more.hold_reason is not None and sorted(one_more.withheld) == ["I0", "I1", "I2", "I3"]
    assert HeldRemovals.of(one_more.withheld, None).fingerprint != HeldRemovals.of(held.withheld, None).fingerprint


def test_a_window_stored_without_guids_still_counts_in_full() -> None:
    """A store written before the window named its instances: its departures
    cannot be matched to this tick's, so they all count (erring on holding)."""
    old = Departures.from_json([NOW - 60, 16, 40])
    assert old == Departures(NOW - 60, 16, 40, frozenset())
    fleet = {f"I{i:02}": live(inst(f"I{i:02}")) for i in range(40)}
    p = plan(listing(*(inst(f"I{i:02}") for i in range(36))), fleet, NOW, POLICY, recent=[old])
    assert p.hold_reason is not None and "(and 16 more" in p.hold_reason

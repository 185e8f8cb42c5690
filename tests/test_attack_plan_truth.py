"""What `cdnreq plan` shows against what the daemon's next tick does.

A long-running Reconciler (the daemon: its sleepers, caches and queue kept
between ticks) and, before each of its ticks, the dry tick `cdnreq plan`
runs on a snapshot of the same store (tests/planharness.py), on an
in-memory master and DNS. The plan must list the actions the tick then
hands to its executor, and write nothing."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from cdnreq.decide.actions import READ_BACK
from tests.planharness import L, Clock, Daemon, Dns, FakeMaster, config, customer, dry_plan, dump, pairs


@pytest.fixture
async def started() -> AsyncIterator[list[Daemon]]:
    """Daemons to stop at the end of the test, whatever happened."""
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        await d.stop()


async def proven_and_asleep(tmp_path: Path, started: list[Daemon], **daemon: object) -> tuple[Daemon, FakeMaster, Dns, Clock]:
    """A (proven www.a.example) and P (no custom domain), live and asleep."""
    cfg = config(tmp_path, {"verify_interval_s": 3600, **daemon})
    clock = Clock(1_800_000_000.0)
    master, dns = FakeMaster([customer("A", "www.a.example"), customer("P")]), Dns()
    d = Daemon(cfg, master, dns, clock)
    started.append(d)
    await d.start()
    await d.tick()
    assert d.store is not None
    dns.txt[f"{L}.www.a.example"] = (await d.store.load_challenges())["A"].token
    for _ in range(6):
        clock.now += 60
        master.answer_all()
        report, _ = await d.tick()
        assert report.ok, report.error
    assert d.r is not None and set(d.r.sleepers) == {"A", "P"}
    return d, master, dns, clock


async def test_periodic_read_backs_are_capped_per_tick_not_per_dns_stage(tmp_path: Path, started: list[Daemon]) -> None:
    """[daemon].read_backs_per_tick bounds a tick's periodic read-backs; each
    DNS stage of the tick planned with a cap of its own, so a tick with one
    DNS group read back up to twice the cap (A, woken, is decided with the
    group of B, a newcomer waiting for its proof in a.example), and `cdnreq
    plan` showed one read-back, and one left for later, where the tick
    read back both."""
    d, master, dns, clock = await proven_and_asleep(tmp_path, started, read_backs_per_tick=1)
    master.instances.append(customer("B", "shop.a.example"))
    clock.now += 3600 * 1.2  # both read-backs due
    report, actions = await d.tick()
    assert report.ok, report.error
    read_backs = sorted(a.guid for a in actions if a.reason == READ_BACK)
    assert len(read_backs) == 1, read_backs
    assert report.planned.get("read_back_later") == 1, report.planned


async def test_plan_reads_back_the_instances_the_tick_reads_back(tmp_path: Path, started: list[Daemon]) -> None:
    """`cdnreq plan` started every instance awake, so A, asleep in the
    daemon, was a settled instance of the plan's first stage, where the
    daemon wakes it and decides it afresh, with the group of B (waiting for
    its proof in a.example): under [daemon].read_backs_per_tick the plan
    showed A read back and P left for later, and the tick read back P."""
    d, master, dns, clock = await proven_and_asleep(tmp_path, started, read_backs_per_tick=1)
    master.instances.append(customer("B", "shop.a.example"))
    clock.now += 3600 * 1.2
    assert d.store is not None
    before = await dump(d.store.path)
    shown, _, _, _, doc = await dry_plan(d.cfg, master, dns, clock)
    assert await dump(d.store.path) == before
    report, actions = await d.tick()
    assert report.ok, report.error
    assert pairs(shown) == pairs(actions), (sorted(pairs(shown)), sorted(pairs(actions)))
    assert [r["instance_guid"] for r in doc["would"]["poll"]] == [a.guid for a in actions if a.reason == READ_BACK]


async def test_plan_shows_the_retained_entries_whose_destroy_the_guard_holds(
    tmp_path: Path, started: list[Daemon]
) -> None:
    """Three customers gone one at a time (their entries retained), then
    listed `destroyed` at once: the guard holds the three destroys (the bar
    of a mass update) and the tick stores them as the held set `cdnreq
    approve` takes. `cdnreq plan` listed only the held records it marks
    removing (Plan.held), not retained entries: it showed no held removal
    at all, its counts said 0, and the operator had nothing to approve."""
    from cdnreq.model import SharedInstance
    from cdnreq.reconcile.guardrun import HELD_REMOVALS

    cfg = config(tmp_path, {"removal_window_s": 0}, retention_s=86400)
    clock = Clock(1_800_000_000.0)
    master, dns = FakeMaster([customer(f"C{i}") for i in range(6)]), Dns()
    d = Daemon(cfg, master, dns, clock)
    started.append(d)
    await d.start()
    for _ in range(3):
        clock.now += 60
        master.answer_all()
        assert (await d.tick())[0].ok
    gone = []
    for guid in ("C0", "C1", "C2"):
        gone.append(next(i for i in master.instances if i.guid == guid))
        master.instances = [i for i in master.instances if i.guid != guid]
        clock.now += 60
        assert (await d.tick())[0].ok
    master.instances += [SharedInstance.of(i.guid, i.parameters, state="destroyed") for i in gone]
    clock.now += 60
    assert d.store is not None
    shown, _, _, _, doc = await dry_plan(d.cfg, master, dns, clock)
    report, actions = await d.tick()
    assert report.ok and report.hold_reason, report
    held = (await d.store.load_guards())[HELD_REMOVALS]["guids"]
    assert sorted(held) == ["C0", "C1", "C2"]
    assert doc["held"]["removals"]["instances"] == sorted(held), doc["held"]
    assert doc["counts"]["held_removals"] == report.held_removals == 3
    assert pairs(shown) == pairs(actions)


async def test_plan_shows_the_sleepers_an_empty_listing_holds(tmp_path: Path, started: list[Daemon]) -> None:
    """The master lists nothing: every removal is held, the sleepers it
    does not name stay asleep and count in the held set. The plan lists
    them with the others, as the tick keeps them for `cdnreq approve`."""
    from cdnreq.reconcile.guardrun import HELD_REMOVALS

    d, master, dns, clock = await proven_and_asleep(tmp_path, started)
    master.instances.append(customer("N"))
    clock.now += 60
    assert (await d.tick())[0].ok  # N requested, awake
    master.instances = []
    clock.now += 60
    _, _, _, _, doc = await dry_plan(d.cfg, master, dns, clock)
    report, actions = await d.tick()
    assert report.ok and report.hold_reason and not actions
    assert d.store is not None
    held = (await d.store.load_guards())[HELD_REMOVALS]["guids"]
    assert sorted(held) == ["A", "N", "P"]
    assert doc["held"]["removals"]["instances"] == sorted(held), doc["held"]

"""A master that lists nothing (or entries without a guid) holds every
removal: the sleepers it does not name now sleep on instead of being read
back, marked held, and marked back again (at 100,000 instances, every record
read and written twice, and the records' memory kept by the heap, for one
empty listing). What the guard holds still counts them, and an approval of
the held set wakes and removes them all."""

from __future__ import annotations

from pathlib import Path

from cdnreq.model import Phase
from cdnreq.store import Store
from tests.test_attack_master_lies import PLAIN, breaking, entry, fleet, full, ok_tick, settle_back
from tests.test_tick_stages import opened  # noqa: F401

EVERY = {"A", *PLAIN}


async def stamps(store: Store) -> dict[str, float]:
    return {g: (await store.get(g)).updated_at for g in EVERY}  # type: ignore[union-attr]


async def test_an_empty_listing_keeps_the_sleepers_asleep_and_holds_them(tmp_path: Path, opened: list[Store]) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    before = await stamps(r.store)
    master.entries = []
    report = await ok_tick(r, clock)
    assert report.hold_reason is not None and "listed no instance" in report.hold_reason
    assert report.held_removals == len(EVERY)  # the sleepers count in what is held
    assert set(r.sleepers) == EVERY and not r.known  # none read back
    held = (await r.store.load_guards())["held_removals"]
    assert sorted(held["guids"]) == sorted(EVERY), held
    assert await stamps(r.store) == before  # no record marked held, nor back
    master.entries = full()
    await settle_back(r, clock)
    assert breaking(master) == [] and set(r.sleepers) == EVERY
    assert await stamps(r.store) == before


async def test_approving_the_held_set_removes_the_sleepers_too(tmp_path: Path, opened: list[Store]) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    master.entries = []
    await ok_tick(r, clock)
    fingerprint = (await r.store.load_guards())["held_removals"]["fingerprint"]
    await r.store.save_guards({"approval": {"removals": fingerprint}}, clock.now)
    report = await ok_tick(r, clock)
    assert report.hold_reason is None, report.hold_reason
    for guid in EVERY:  # departed: retained (the retention period keeps their entries)
        record = await r.store.get(guid)
        assert record is not None and record.phase is Phase.RETAINED, (guid, record)


async def test_entries_without_a_guid_keep_the_unnamed_asleep_and_wake_the_unusable(
    tmp_path: Path, opened: list[Store]
) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    anonymous = {"state": "started", "parameters": {"url": "https://x.example"}, "title": "no guid"}
    unusable = {**entry(PLAIN[0]), "state": "no-such-state"}
    master.entries = [entry("A"), unusable, anonymous]
    report = await ok_tick(r, clock)
    assert report.hold_reason is not None and "without an instance_guid" in report.hold_reason
    assert PLAIN[0] not in r.sleepers  # woken: its customer is told why its entry is unusable
    assert set(r.sleepers) == EVERY - {PLAIN[0]}
    assert breaking(master) == []
    master.entries = full()
    await settle_back(r, clock)
    assert breaking(master) == [] and set(r.sleepers) == EVERY


async def test_a_re_check_falling_due_during_the_hold_wakes_no_absent_sleeper(
    tmp_path: Path, opened: list[Store]
) -> None:
    """An owner the listing does not name is not re-checked (only listed
    owners are): woken, it would only be marked held and back."""
    r, master, clock = await fleet(tmp_path, opened, domain={"recheck_interval_s": 100})
    clock.now += 1000  # A's claim is due for its re-check
    before = await stamps(r.store)
    master.entries = []
    report = await ok_tick(r, clock)
    assert report.held_removals == len(EVERY) and set(r.sleepers) == EVERY and not r.known
    assert await stamps(r.store) == before
    master.entries = full()
    report = await ok_tick(r, clock)  # listed again: A wakes for its re-check, which passes
    assert report.ok and report.planned.get("recheck_ok") == 1, report.planned
    assert breaking(master) == []

"""A master that lists live entries `destroyed` by mistake, once.

A stop of many live entries in one tick is held by the update guard; an
explicit destroy, which takes a site down for good, was guarded only by the
removal bar (max_destroy_fraction, 0.5): one listing naming 3 of 10 live
instances `destroyed` destroyed them at once. Explicit destroys of entries
that exist are now held at the update bar too (max_update_fraction and
min_update_hold), with the removals, until the listing stops asking or the
operator approves; one customer's own destroy still goes at once.
"""

from __future__ import annotations

from pathlib import Path

from cdnreq.decide.actions import Draft, Policy
from cdnreq.decide.guards import explicit_destroy_guard, GuardPolicy
from cdnreq.decide.removals import Listed, plan_removals
from cdnreq.model import InstanceGuid, Listing, Phase, Record, SharedInstance
from cdnreq.store import Store
from tests.test_attack_master_lies import PLAIN, breaking, entry, fleet, full, ok_tick, settle_back
from tests.test_tick_stages import opened  # noqa: F401


def listing(destroyed: set[str]) -> list[dict[str, object]]:
    return [entry(e["instance_guid"], "destroyed") if e["instance_guid"] in destroyed else e for e in full()]


async def test_three_of_ten_live_entries_listed_destroyed_once_are_held(tmp_path: Path, opened: list[Store]) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    master.entries = listing(set(PLAIN[:3]))
    report = await ok_tick(r, clock)
    assert breaking(master) == [], master.requests
    assert report.hold_reason is not None and "listed destroyed" in report.hold_reason, report.hold_reason
    assert "max_update_fraction" in report.hold_reason
    master.entries = full()
    await settle_back(r, clock)
    assert breaking(master) == []
    assert set(r.sleepers) == {"A", *PLAIN}
    for guid in PLAIN[:3]:
        record = await r.store.get(guid)
        assert record is not None and record.phase is Phase.LIVE and record.tech_guid is not None


async def test_only_the_destroys_are_held_not_another_customers_departure(tmp_path: Path, opened: list[Store]) -> None:
    """A customer with many entries destroying them at once (or a master
    saying so) holds those destroys, not the rest of the fleet's removals."""
    r, master, clock = await fleet(tmp_path, opened)
    master.entries = [e for e in listing(set(PLAIN[:3])) if e["instance_guid"] != PLAIN[8]]
    report = await ok_tick(r, clock)
    assert report.hold_reason is not None and "listed destroyed" in report.hold_reason
    assert breaking(master) == []
    gone = await r.store.get(PLAIN[8])
    assert gone is not None and gone.phase is Phase.RETAINED  # departed as usual (retention keeps its entry)
    for guid in PLAIN[:3]:
        record = await r.store.get(guid)
        assert record is not None and record.phase is not Phase.RETAINED and record.tech_guid is not None


async def test_held_while_the_listing_keeps_asking(tmp_path: Path, opened: list[Store]) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    master.entries = listing(set(PLAIN[:3]))
    for _ in range(5):  # held until the operator approves, as any held removal
        await ok_tick(r, clock)
    assert breaking(master) == []


async def test_one_customers_destroy_goes_at_once(tmp_path: Path, opened: list[Store]) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    master.entries = listing({PLAIN[0]})
    report = await ok_tick(r, clock)
    assert report.hold_reason is None
    assert [s for _, s in breaking(master)] == ["destroyed"]


def record(guid: str) -> Record:
    return Record(InstanceGuid(guid), f"t-{guid}", Phase.LIVE, 1.0, 1.0, param_hash="h", tech_guid=f"T-{guid}")


def test_the_bar_counts_only_entries_that_exist() -> None:
    policy = GuardPolicy()
    assert explicit_destroy_guard(1, 10, policy) is None  # below min_update_hold
    assert explicit_destroy_guard(2, 100, policy) is None  # 2 % of the fleet
    held = explicit_destroy_guard(2, 10, policy)
    assert held is not None and "2 of 10" in held
    known = {InstanceGuid(g): record(g) for g in "ABCDEFGHIJ"}
    known.update({InstanceGuid(g): Record(InstanceGuid(g), f"t-{g}", Phase.NEW, 1.0, 1.0) for g in "KL"})
    listed = Listed(set(known), [known[InstanceGuid(g)] for g in "KL"])  # never requested: nothing to take down
    policy = Policy("cdnreq-", "s", retention_s=10.0)
    every = Listing(tuple(SharedInstance.of(g, {}) for g in known))
    removals = plan_removals(Draft(now=2.0), every, known, listed, policy, None, [], frozenset())
    assert removals.hold_reason is None
    live = Listed(set(known), [known[InstanceGuid(g)] for g in "ABC"])  # 3 live entries of 12
    removals = plan_removals(Draft(now=2.0), every, known, live, policy, None, [], frozenset())
    assert removals.hold_reason is not None and removals.withheld == ("A", "B", "C")

"""Review attacks on the explicit-destroy hold and the sleepers a held
listing keeps asleep."""

from __future__ import annotations

from pathlib import Path

from cdnreq.model import Phase
from cdnreq.store import Store
from tests.test_attack_explicit_destroys import listing
from tests.test_attack_master_lies import PLAIN, breaking, fleet, ok_tick
from tests.test_tick_stages import opened  # noqa: F401


async def test_a_held_mass_destroy_does_not_hold_another_customers_later_destroy(
    tmp_path: Path, opened: list[Store]
) -> None:
    """One customer (or a lying master) lists 3 of 10 entries destroyed:
    those are held, for as long as the listing asks. Another customer who
    destroys its one entry a tick later is not held with them: judged alone
    its destroy is below the bar, as it would be on any other tick."""
    r, master, clock = await fleet(tmp_path, opened)
    master.entries = listing(set(PLAIN[:3]))
    first = await ok_tick(r, clock)
    assert first.hold_reason is not None
    fingerprint = (await r.store.load_guards())["held_removals"]["fingerprint"]
    master.entries = listing(set(PLAIN[:4]))
    report = await ok_tick(r, clock)
    assert [s for _, s in breaking(master)] == ["destroyed"], master.requests  # P3's, not the held three
    assert report.hold_reason is not None and report.held_removals == 3
    held = (await r.store.load_guards())["held_removals"]
    assert held["fingerprint"] == fingerprint  # an approval of what the operator saw still applies
    for guid in PLAIN[:3]:
        record = await r.store.get(guid)
        assert record is not None and record.tech_guid is not None and record.phase is not Phase.RETAINED

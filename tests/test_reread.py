"""Reconciler.reread() (an operator action, a new leader's term) frees the
in-memory copy it drops before the next tick reads the store again."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from tests.planharness import Daemon
from tests.test_attack_plan_truth import proven_and_asleep, started  # noqa: F401  (the fixture)


async def test_a_read_again_frees_the_copy_it_replaces_and_changes_nothing(
    tmp_path: Path, started: list[Daemon]
) -> None:
    """reread() let the domain state, its host index and the sleepers live
    on until the next load had built their replacements (two copies held
    at the load's peak), and the one it dropped stayed frozen, cycles and
    all. The next tick reads the store and acts exactly as the copy it
    replaced would have: one list call."""
    d, master, _, clock = await proven_and_asleep(tmp_path, started)
    assert d.r is not None and d.r.domains is not None
    shown = dict(master.shown)
    old = [weakref.ref(d.r.domains), weakref.ref(d.r.domains.index), weakref.ref(d.r.sleepers)]
    d.r.reread()
    gc.collect()
    assert [ref() for ref in old] == [None, None, None]
    before = master.calls.copy()
    clock.now += 60
    done, actions = await d.tick()
    assert done.ok, done.error
    assert actions == []
    assert master.calls - before == {"list": 1}
    assert master.shown == shown
    assert set(d.r.sleepers) == {"A", "P"}

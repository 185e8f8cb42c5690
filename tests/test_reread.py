"""Reconciler.reread() (an operator action, a new leader's term) frees the
in-memory copy it drops before the next tick reads the store again."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.planharness import L, Clock, Daemon, Dns, FakeMaster, config, customer


@pytest.fixture
async def started() -> AsyncIterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        await d.stop()


async def converged(tmp_path: Path, started: list[Daemon]) -> tuple[Daemon, FakeMaster, Clock]:
    cfg = config(tmp_path, {"verify_interval_s": 3600})
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
        done, _ = await d.tick()
        assert done.ok, done.error
    return d, master, clock


async def test_a_read_again_frees_the_copy_it_replaces_and_changes_nothing(
    tmp_path: Path, started: list[Daemon]
) -> None:
    """reread() let the domain state, its host index and the sleepers live
    on until the next load had built their replacements (two copies held
    at the load's peak), and the one it dropped stayed frozen, cycles and
    all. The next tick reads the store and acts
    exactly as the copy it replaced would have: one list call."""
    d, master, clock = await converged(tmp_path, started)
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

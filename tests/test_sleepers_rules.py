"""Which configuration wakes the sleepers (decide/dormancy.rules_digest):
the plan's policy and the domain step's stamp, but not the guard bars. An
operator who moves max_destroy_fraction in an incident must not wake
100,000 instances (a slow tick, and the records' memory, kept by the heap)."""

from __future__ import annotations

from pathlib import Path

from cdnreq.config import Config
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from tests.test_sleepers import settled
from tests.test_tick_stages import opened  # noqa: F401


def moved(config: Config, **daemon: object) -> Config:
    return config.model_copy(update={"daemon": config.daemon.model_copy(update=daemon)})


async def tick(r: Reconciler) -> None:
    report = await r.tick()
    assert report.ok, report.error
    r.clock.now += 1  # type: ignore[attr-defined]


async def test_moving_a_guard_bar_keeps_the_sleepers_asleep(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    assert set(r.sleepers) == {"A", "PLAIN"}
    await r.reconfigure(moved(r.config, max_destroy_fraction=0.9, allow_empty=True, max_update_fraction=0.5,
                              min_update_hold=5))
    await tick(r)
    assert set(r.sleepers) == {"A", "PLAIN"}
    again = Reconciler(config=r.config, store=r.store, master=master, resolver=dns)  # a restart under them
    again.clock = clock
    await again.load()
    assert set(again.sleepers) == {"A", "PLAIN"}


async def test_another_request_prefix_wakes_them(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    cdn = r.config.technical_cdn.model_copy(update={"request_prefix": "other-"})
    await r.reconfigure(r.config.model_copy(update={"technical_cdn": cdn}))
    await tick(r)
    assert not {"A", "PLAIN"} & set(r.sleepers)

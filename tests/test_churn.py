"""After a burst of changes the daemon reads its store again, to give the
memory the burst spread out back (cdnreq/heap.Churn), and a read again
frees the copy it replaces."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import AsyncIterator

import pytest

from cdnreq import heap
from cdnreq.configfile import load_config
from cdnreq.heap import CHURN_MIN, CHURN_SHARE, Churn
from cdnreq.reconcile.report import TickReport
from cdnreq.service.daemon import Daemon as Service
from tests.planharness import L, Clock, Daemon, Dns, FakeMaster, config, customer


def report(*, ok: bool = True, added: int = 0, calls: int = 0, admit_again: bool = False) -> TickReport:
    return TickReport(id=1, started_at=0.0, ok=ok, planned={"added": added}, results={"request:ok": calls},
                      admit_again=admit_again)


def test_a_burst_is_counted_until_no_newcomer_waits() -> None:
    churn = Churn()
    held = 100_000
    assert not churn.after(report(added=20_000, admit_again=True), held)
    assert not churn.after(report(added=20_000, calls=18_000, admit_again=True), held)
    assert churn.after(report(calls=18_000), held)  # 76,000 changes, the burst over
    assert churn.changed == 0  # read again: counted from nothing
    assert not churn.after(report(calls=1_000), held)


def test_small_changes_never_add_up_to_a_read_while_a_tick_fails() -> None:
    churn = Churn()
    held = 100_000
    bar = max(CHURN_MIN, CHURN_SHARE * held)
    assert not churn.after(report(ok=False, calls=int(bar)), held)  # a failed tick: no time for it
    assert churn.after(report(), held)  # the next good one
    assert not churn.after(report(calls=int(bar) - 1), held)
    small = Churn()
    assert not small.after(report(calls=CHURN_MIN - 1), 10)  # a small fleet: the floor holds


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
    on until the next load had built their replacements: a daemon asked to
    give memory back held two copies at the peak, and the one it dropped
    stayed frozen, cycles and all. The next tick reads the store and acts
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


async def test_the_daemon_reads_its_store_again_after_a_burst(
    tmp_path: Path, started: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's loop, after each tick: a burst past the bar, once no
    newcomer waits, drops the copy; the next tick reads it again."""
    d, master, clock = await converged(tmp_path, started)
    path = tmp_path / "cdnreq.toml"
    path.write_text(f'[master]\nurl = "http://master.invalid"\ninstance_guid = "REQUESTER"\n'
                    f'[technical_cdn]\nsoftware_release_uri = "http://sr.invalid/cdn"\n'
                    f'[daemon]\ndatabase = "{tmp_path / "cdnreq.db"}"\n'
                    f'[domain]\nsecret_file = "{tmp_path / "domain-secret"}"\n')
    service = Service(path, load_config(path))
    service.reconciler = d.r
    monkeypatch.setattr(heap, "CHURN_MIN", 3)
    service._after(report(calls=2, admit_again=True))
    assert d.r is not None and d.r.known is not None
    service._after(report(calls=1))
    assert d.r.known is None and d.r.domains is None  # dropped: the next tick reads the store
    clock.now += 60
    done, actions = await d.tick()
    assert done.ok and actions == [], done.error
    assert d.r.known is not None and set(d.r.sleepers) == {"A", "P"}

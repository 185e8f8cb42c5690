"""Second round of attacks on admission (decide/admission.py,
reconcile/admitting.py, the ticks started at once): what still counted them
as sightings, the place a newcomer holds once taken, a failed tick in a run
of ticks started at once, DNS asked again at each of them. Each failed on
7efc3e3."""

from __future__ import annotations

from pathlib import Path

from cdnreq.reconcile.report import TickReport
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store, StoreError

from test_admission import ManyTxt, limited
from test_attack_admission import FailOnce, prove_all
from test_tick_stages import L, customer, opened, reconciler, title  # noqa: F401  (the harness and its fixture)
from test_sleepers import Clock

HOST = "www.x.example"


async def as_the_daemon(r: Reconciler, last: TickReport | None) -> TickReport:
    """The next tick as service/daemon.py starts it: at once after one that
    succeeded leaving newcomers waiting."""
    return await r.tick(at_once=last is not None and last.ok and last.admit_again)


async def zed_behind_six(tmp_path: Path, opened: list[Store]) -> tuple:
    """Limit 1, every challenge proven; the master lists F0..F5 and ZED
    (naming HOST); ACE names HOST too."""
    dns = ManyTxt({})
    fillers = [customer(f"F{k}") for k in range(6)]
    zed, ace = customer("ZED", HOST), customer("ACE", HOST)
    r, master = await reconciler(opened, limited(tmp_path, 1), [*fillers, zed, ace], dns)
    await prove_all(r, dns)
    master.instances = (*fillers, zed)
    return r, master, fillers, zed, ace


def owner(r: Reconciler) -> str | None:
    assert r.domains is not None
    claim = r.domains.index.by_host.get(HOST)
    return None if claim is None else claim.guid


async def test_a_glitch_of_seconds_over_catch_up_ticks_forgets_a_waiting_newcomers_place(
    tmp_path: Path, opened: list[Store]
) -> None:
    # limit 1: ZED (naming HOST) waits behind F0..F5 from tick 1, so ticks 2.. start
    # at once. The master leaves ZED out of three listings in a row, but these are
    # catch-up ticks a few seconds apart: "a glitch of seconds" that the guards
    # refuse to count as three sightings. keep_unlisted (= confirm_ticks) counts them
    # anyway: ZED is forgotten, comes back behind ACE (same host, first listed while
    # ZED was left out) and ACE gets the host.
    r, master, fillers, zed, ace = await zed_behind_six(tmp_path, opened)
    first = await r.tick()
    assert first.ok and first.admit_again and "ZED" in r.admission.queue.left
    master.instances = (*fillers, ace)  # the glitch: ZED left out, seconds long
    report = first
    for _ in range(3):
        report = await as_the_daemon(r, report)
        assert report.ok and report.admit_again, "each of these ticks starts at once (a catch-up)"
    master.instances = (*fillers, zed, ace)
    for _ in range(6):
        report = await as_the_daemon(r, report)
        assert report.ok
    assert not r.admission.queue.left
    assert owner(r) == "ZED", (
        f"the host went to {owner(r)}: ZED, first listed, lost its place to three catch-up listings"
        " that left it out within seconds"
    )


async def test_a_newcomer_taken_in_an_earlier_slice_loses_its_place_to_one_listed_after_it(
    tmp_path: Path, opened: list[Store]
) -> None:
    # limit 1. Tick 1 lists B0 and ZED (HOST): B0 is taken, ZED waits. Tick 2 lists
    # ACE too (same host): ZED is taken (its challenge not yet answered), ACE waits,
    # listed at tick 2. Both then prove. At tick 3 ACE is ordered by its listed_at
    # (tick 2's admission), ZED by its record's created_at (tick 2's planning, a few
    # microseconds later): ACE, listed a tick after ZED, is decided first and takes
    # the host. Without a limit ZED would hold it (see the control below).
    dns = ManyTxt({})
    b0, zed, ace = customer("B0"), customer("ZED", HOST), customer("ACE", HOST)
    r, master = await reconciler(opened, limited(tmp_path, 1), [b0, zed, ace], dns)
    master.instances = (b0, zed)
    assert (await r.tick()).ok and set(r.admission.queue.left) == {"ZED"}
    master.instances = (b0, zed, ace)
    second = await r.tick()
    assert second.ok and set(r.admission.queue.left) == {"ACE"} and owner(r) is None  # ZED taken, pending
    await prove_all(r, dns)
    for _ in range(3):
        assert (await r.tick()).ok
    assert not r.admission.queue.left
    assert owner(r) == "ZED", f"the host went to {owner(r)}, first listed a tick after ZED"


async def test_control_no_limit_zed_pending_then_both_prove(tmp_path: Path, opened: list[Store]) -> None:
    dns = ManyTxt({})
    b0, zed, ace = customer("B0"), customer("ZED", HOST), customer("ACE", HOST)
    r, master = await reconciler(opened, limited(tmp_path, 0), [b0, zed, ace], dns)
    r.clock = clock = Clock()  # the lookups' schedule by this clock, not by how fast the machine runs the ticks
    master.instances = (b0, zed)
    assert (await r.tick()).ok
    clock.now += 1
    master.instances = (b0, zed, ace)
    assert (await r.tick()).ok and owner(r) is None
    await prove_all(r, dns)
    for _ in range(3):
        clock.now += 60  # each proof's next lookup is due
        assert (await r.tick()).ok
    assert owner(r) == "ZED"


async def test_a_failed_catch_up_tick_stops_the_catch_up_run(tmp_path: Path, opened: list[Store]) -> None:
    # limit 1, five newcomers. Tick 2 (a catch-up) fails on a store error after its
    # admission. Tick 3, after the daemon's tick_interval_s, takes the same
    # newcomer again and succeeds: the queue did shrink (4 waiting before it, 3
    # after), yet `again` compares with the failed tick's queue (3) and says no:
    # the daemon waits another tick_interval_s before tick 4 with 3 still waiting.
    newcomers = [customer(f"N{k}") for k in range(5)]
    r, master = await reconciler(opened, limited(tmp_path, 1), newcomers, ManyTxt({}))
    failing = FailOnce(r.store)
    r.store.commit = failing.commit  # type: ignore[method-assign]
    first = await r.tick()
    assert first.ok and first.admit_again and first.waiting_admission == 4
    failing.armed = True
    failed = await as_the_daemon(r, first)
    assert not failed.ok
    third = await as_the_daemon(r, failed)  # the next scheduled tick
    assert third.ok and third.waiting_admission == 3
    assert third.admit_again, "3 still wait after a tick that took one on: the next tick should start at once"


async def test_control_two_catch_up_listings_leaving_zed_out_keep_its_place(tmp_path: Path, opened: list[Store]) -> None:
    r, master, fillers, zed, ace = await zed_behind_six(tmp_path, opened)
    assert (await r.tick()).ok
    master.instances = (*fillers, ace)
    for _ in range(2):
        assert (await r.tick()).ok
    master.instances = (*fillers, zed, ace)
    for _ in range(7):
        assert (await r.tick()).ok
    assert owner(r) == "ZED"


async def test_catch_up_ticks_ask_dns_again_for_every_earlier_slice(tmp_path: Path, opened: list[Store]) -> None:
    # limit 1, five newcomers each naming its own host, no TXT yet (customers told
    # their token at their turn). Each catch-up tick, seconds after the last, asks
    # again about every pending newcomer taken by an earlier slice: 1+2+3+4+5 names
    # instead of 5, and the last catch-up tick holds DNS groups for the whole burst
    # (at 100,000 with 20,000 a tick: 300,000 lookups within minutes, and the last
    # tick's DNS stage as big as the unsliced first reconcile's).
    dns = ManyTxt({})
    newcomers = [customer(f"N{k}", f"n{k}.example") for k in range(5)]
    r, master = await reconciler(opened, limited(tmp_path, 1), newcomers, dns)
    per_tick = []
    report = None
    for _ in range(5):
        before = len(dns.asked)
        report = await as_the_daemon(r, report)
        assert report.ok
        per_tick.append(len(dns.asked) - before)
    assert per_tick == [1, 1, 1, 1, 1], f"names asked per tick: {per_tick}"

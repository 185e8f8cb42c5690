"""Attacks on admission (decide/admission.py, Reconciler._admit): the order
of host claims among newcomers across ticks, a failed tick, a listing
that leaves a newcomer out once, an unusable entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdnreq.model import InstanceGuid
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store, StoreError

from test_admission import ManyTxt, limited
from test_tick_stages import L, customer, opened, reconciler, title  # noqa: F401  (the harness and its fixture)

HOST = "www.x.example"


async def prove_all(r: Reconciler, dns: ManyTxt) -> None:
    """Every challenge the harness issued is at the host's name: both rivals prove it."""
    dns.txt[f"{L}.{HOST}"] = [c.token for c in (await r.store.load_challenges()).values()]


def owner(r: Reconciler) -> str | None:
    assert r.domains is not None
    claim = r.domains.index.by_host.get(HOST)
    return None if claim is None else claim.guid


@pytest.mark.parametrize("limit", [2, 0], ids=["admitted-in-slices", "no-limit"])
async def test_a_waiting_newcomer_taken_with_a_later_one_keeps_first_claim(
    tmp_path: Path, opened: list[Store], limit: int
) -> None:
    # limit 2: tick 1 lists BUSY1, BUSY2 and ZED (ZED names the host): ZED waits,
    # first seen at tick 1. Tick 2 lists ACE too, naming the same host: the queue
    # is ZED (tick 1), ACE (tick 2) and the limit takes both. "Of two newcomers
    # naming one host the one first seen is decided first": ZED must get it,
    # as it does with no limit (ZED taken at tick 1).
    dns = ManyTxt({})
    busy1, busy2 = customer("BUSY1"), customer("BUSY2")
    zed, ace = customer("ZED", HOST), customer("ACE", HOST)
    r, master = await reconciler(opened, limited(tmp_path, limit), [busy1, busy2, zed, ace], dns)
    await prove_all(r, dns)
    master.instances = (busy1, busy2, zed)
    first = await r.tick()
    assert first.ok and r.admission.queue.left == (("ZED",) if limit else ())
    master.instances = (busy1, busy2, zed, ace)
    second = await r.tick()
    assert second.ok and second.waiting_admission == 0
    assert owner(r) == "ZED", f"the host went to {owner(r)}, first seen a tick after ZED"
    assert title("ZED") in master.titles() and title("ACE") not in master.titles()


async def zed_waits_behind_two(tmp_path: Path, opened: list[Store]) -> tuple[Reconciler, Any, tuple]:
    """Limit 1, every challenge proven; tick 1 lists BUSY, F0, F1 and ZED
    (naming HOST): BUSY is taken, F0, F1 and ZED wait. ACE names HOST too."""
    dns = ManyTxt({})
    busy, zed, ace = customer("BUSY"), customer("ZED", HOST), customer("ACE", HOST)
    f0, f1 = customer("F0"), customer("F1")
    r, master = await reconciler(opened, limited(tmp_path, 1), [busy, zed, ace, f0, f1], dns)
    await prove_all(r, dns)
    master.instances = (busy, f0, f1, zed)
    assert (await r.tick()).ok and set(r.admission.queue.left) == {"F0", "F1", "ZED"}
    return r, master, (busy, zed, ace, f0, f1)


class FailOnce:
    """The store, whose next commit raises StoreError once armed (a full disk,
    a lock timeout, a PostgreSQL failover in the middle of a tick)."""

    def __init__(self, store: Any):
        self.store, self.armed = store, False
        self._commit = store.commit

    async def commit(self, **kw: Any) -> Any:
        if self.armed:
            self.armed = False
            raise StoreError("disk full (injected)")
        return await self._commit(**kw)


async def test_a_failed_tick_keeps_the_first_seen_order_of_those_it_took(tmp_path: Path, opened: list[Store]) -> None:
    # limit 1: ZED waits from tick 1; tick 2 takes ZED (ACE, listed then, waits)
    # but fails on a store error before ZED's record is stored. Tick 3 must still
    # take ZED before ACE: a failed tick is not a reason to lose one's place,
    # nor the host one asked for first.
    dns = ManyTxt({})
    busy, zed, ace = customer("BUSY"), customer("ZED", HOST), customer("ACE", HOST)
    r, master = await reconciler(opened, limited(tmp_path, 1), [busy, zed, ace], dns)
    await prove_all(r, dns)
    failing = FailOnce(r.store)
    r.store.commit = failing.commit  # type: ignore[method-assign]
    master.instances = (busy, zed)
    assert (await r.tick()).ok and set(r.admission.queue.left) == {"ZED"}
    master.instances = (busy, zed, ace)
    failing.armed = True
    failed = await r.tick()
    assert not failed.ok and "injected" in (failed.error or "")
    assert InstanceGuid("ZED") not in (await r.store.load())  # nothing stored for ZED
    third = await r.tick()
    assert third.ok, third.error
    left_waiting = set(r.admission.queue.left)
    assert (await r.tick()).ok and not r.admission.queue.left
    assert owner(r) == "ZED", f"the host went to {owner(r)} (left waiting at tick {third.id}: {left_waiting})"


async def test_a_listing_that_omits_a_waiting_newcomer_once_hands_its_host_to_a_later_one(
    tmp_path: Path, opened: list[Store]
) -> None:
    # limit 1: ZED waits from tick 1 behind F0 and F1; ACE (same host) is listed
    # from tick 2, when the master leaves ZED out once (a hiccup). Forgotten,
    # ZED would come back behind ACE and ACE get the host (edfa206 did);
    # without admission ZED would hold it since tick 1, and one listing leaving
    # an owner out hands nothing over (confirm_ticks). ZED keeps its place.
    r, master, (busy, zed, ace, f0, f1) = await zed_waits_behind_two(tmp_path, opened)
    master.instances = (busy, f0, f1, ace)  # ZED left out once
    assert (await r.tick()).ok
    master.instances = (busy, f0, f1, zed, ace)
    for _ in range(4):
        assert (await r.tick()).ok
    assert not r.admission.queue.left
    assert owner(r) == "ZED", f"the host went to {owner(r)}, first listed a tick after ZED"


async def test_a_newcomer_listed_unusable_once_does_not_jump_the_queue(tmp_path: Path, opened: list[Store]) -> None:
    # limit 1: F0, F1 and ZED wait from tick 1. ACE (same host as ZED) is first
    # listed at tick 2 as an unusable entry (its customer made it so: oversized
    # parameters, say). Were it told at once, it would have a record: fixed at
    # tick 3, "known", it would be planned ahead of F1 and ZED (first listed a
    # tick earlier) and take ZED's host (edfa206 did). It waits its turn instead.
    from cdnreq.model import Listing

    r, master, (busy, zed, ace, f0, f1) = await zed_waits_behind_two(tmp_path, opened)

    unusable = {"ACE": "parameters: nested too deeply to be encoded"}
    listed = master.list_hosted

    async def with_unusable(guid: str) -> Listing:
        return Listing((await listed(guid)).instances, unusable)

    master.list_hosted = with_unusable  # type: ignore[method-assign]
    assert (await r.tick()).ok
    assert InstanceGuid("ACE") not in (r.known or {}) and "ACE" in r.admission.queue.left  # it waits its turn
    master.list_hosted = listed  # type: ignore[method-assign]
    master.instances = (busy, f0, f1, zed, ace)
    third = await r.tick()
    assert third.ok
    taken_third = title("ACE") in master.titles()
    for _ in range(3):
        assert (await r.tick()).ok
    assert owner(r) == "ZED", (
        f"the host went to {owner(r)} (ACE requested at tick {third.id}, ahead of the queue: {taken_third};"
        f" still waiting then: F1, ZED)"
    )

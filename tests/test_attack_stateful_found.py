"""Defects found by tests/test_attack_stateful.py, each reduced to a plain
deterministic test (tests/test_ownership_attacks.py's world: after every
tick no two entries name one host, and every host served was proven by its
instance)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cdnreq.model import RequestedState
from tests.stateful_world import World as StatefulWorld
from tests.test_ownership_attacks import FILL, World, customer, world  # noqa: F401
from tests.test_tick_stages import opened  # noqa: F401

D = "blog.other.example"


async def a_serving_d(world, **settings: object) -> tuple[World, object]:
    """A world with `settings` where A proved D and its entry serves it."""
    w: World = await world(**settings)
    a = customer("A", D)
    await w.tick(a, *FILL)
    w.prove("A", D)
    for _ in range(3):
        await w.tick(a, *FILL)
    return w, a


async def test_a_host_freed_by_its_owners_destroy_goes_to_one_of_two_waiting_claimants(world) -> None:
    w: World = await world(retention_s=3600)
    a, b, c = customer("A", D), customer("B", D), customer("C", D)
    await w.tick(c, *FILL)
    w.prove("C", D)
    for _ in range(3):
        await w.tick(c, *FILL)
    assert w.serves("C", D)
    await w.tick(c, b, *FILL)
    w.prove("B", D)
    for _ in range(3):
        await w.tick(c, b, *FILL)
    gone = replace(c, state=RequestedState.DESTROYED)
    await w.tick(gone, b, a, *FILL)
    w.prove("A", D)
    for _ in range(8):
        await w.tick(gone, b, a, *FILL)
    assert w.serves("A", D) != w.serves("B", D), w.cdn.serving()


async def test_an_update_dropping_its_custom_domain_acknowledged_but_not_kept_is_sent_again(world) -> None:
    """A master may answer 200 to an update and not keep it. A live entry
    whose customer removed its custom_domain: the update was read back, the
    entry still holding the old custom_domain taken for the new parameters
    (keys the request did not send were ignored), so the entry kept serving
    the host cdnreq had released: another customer proving it got a second
    entry for it."""
    w, a = await a_serving_d(world, retention_s=3600)
    assert w.serves("A", D)
    moved = customer("A", None)
    w.cdn.dropped["request"] = 1
    for _ in range(6):
        await w.tick(moved, *FILL)
    assert not w.serves("A", D), w.cdn.serving()
    b = customer("B", D)
    await w.tick(moved, b, *FILL)
    w.prove("B", D)
    for _ in range(6):
        await w.tick(moved, b, *FILL)
    assert w.serves("B", D) and not w.serves("A", D), w.cdn.serving()


def test_a_dropped_publication_whose_republication_fails_is_forgotten_by_the_store_too() -> None:
    """TestReleasing's F0: a read-back found the customer no longer holds
    what it was shown (the master dropped it) and its publication again
    failed. Memory forgot what the customer was shown (transitions.unshown),
    the store kept it: a restarted daemon took the customer for told."""
    from tests.test_attack_stateful import Customers

    s = Customers()
    s.start()
    try:
        s.tick(comply=False, ticks=3)
        s.time_passes(seconds=4000)  # F0's read-back is due
        s.master_changes(guid="F0", how="forgets-publication")
        s.fault(fault="publish-fail", guid="A")
        s.tick_and_check()  # memory equals the store
        assert s.w is not None and "F0" not in s.w.master.published
        s.time_passes(seconds=600)  # the backoff is over
        s.restart_is_invisible()  # a restarted daemon publishes again, as the running one
        assert [(c, g) for c, g, _ in s.w.master.writes] == [("publish", "F0")]
    finally:
        s.teardown()


def destroys_of(w: World) -> list[str]:
    """Titles destroyed from now on (the double's request_instance, wrapped)."""
    seen: list[str] = []
    request = w.cdn.request_instance

    async def noting(**kwargs):  # type: ignore[no-untyped-def]
        if kwargs["state"] == "destroyed":
            seen.append(kwargs["title"])
        return await request(**kwargs)

    w.cdn.request_instance = noting  # type: ignore[method-assign]
    return seen


async def test_an_update_dropping_a_host_acknowledged_and_not_kept_serves_it_until_read_back(world) -> None:
    """confirm_ticks = 1. A live entry's customer drops its custom_domain;
    the master answers 200 to the update and does not keep it. The
    acknowledgement narrowed the hosts the entry serves to none, so at the
    next tick (A's read-back failing once) B, who proved the host meanwhile,
    was requested: two entries served it."""
    w, a = await a_serving_d(world, confirm_ticks=1, retention_s=3600)
    assert w.serves("A", D)
    moved, b = customer("A", None), customer("B", D)
    w.cdn.dropped["request"] = 1
    await w.tick(moved, b, *FILL)
    assert w.serves("A", D)
    w.prove("B", D)
    w.cdn.fail["get"] = 1
    for _ in range(8):
        await w.tick(moved, b, *FILL)  # no two entries name D after any tick (World.check)
    assert w.serves("B", D) and not w.serves("A", D), w.cdn.serving()


@pytest.mark.parametrize("confirm_ticks", [1, 3])
async def test_an_update_dropping_a_host_applied_unanswered_is_sent_again_not_destroyed(world, confirm_ticks) -> None:
    """A live entry's customer drops its custom_domain; the update is applied
    and its answer lost. B proves the host: A's entry was destroyed (taking
    its live site down) as if it still served it; it is sent the update
    again instead, and B is served once A's entry is read back without it."""
    w, a = await a_serving_d(world, confirm_ticks=confirm_ticks, retention_s=3600)
    destroyed = destroys_of(w)
    moved, b = customer("A", None), customer("B", D)
    w.cdn.applied_then_fail["request"] = 1
    await w.tick(moved, b, *FILL)
    assert not w.serves("A", D)
    w.prove("B", D)
    for _ in range(8):
        await w.tick(moved, b, *FILL)
    assert destroyed == [] and w.cdn.entries["cdnreq-A"]["state"] == "started"
    assert w.serves("B", D), w.cdn.serving()


def test_an_owner_whose_update_dropping_a_host_is_refused_loses_its_entry_to_the_hosts_prover(tmp_path) -> None:
    """The master refuses (4xx) every update of A's entry, which drops a
    host B then proves: A's entry, unchanged, still serves it; it is
    destroyed, not updated again for ever while B waits."""
    w = StatefulWorld(tmp_path, daemon={"confirm_ticks": 1})
    try:
        a = customer("A", D)
        w.master.listed = [a, *FILL]
        w.tick()
        w.publish_txt(D, w.token("A")[1])  # type: ignore[index]
        for _ in range(3):
            w.tick()
        w.master.listed = [customer("A", None), customer("B", D), *FILL]
        w.master.reject["request"] = 1000  # every request, A's and B's; a destroy goes through
        w.tick()
        w.publish_txt(D, w.token("B")[1])  # type: ignore[index]
        for _ in range(6):
            w.now += 3600  # past every backoff
            w.tick()
            assert not w.overlapping(), w.overlapping()
        assert w.master.entries["cdnreq-A"].state == "destroyed"
    finally:
        w.close()


def test_a_publication_found_lost_and_not_sent_again_is_stored_as_lost(tmp_path) -> None:
    """The periodic read-back finds a customer no longer holds what it was
    shown; publishing it again fails. Memory knew it unshown, the store
    still held the old publication: a restart would never send it again
    before the next read-back."""
    w = StatefulWorld(tmp_path)
    try:
        w.master.listed = list(FILL)
        for _ in range(3):
            w.tick()
        assert w.master.published["F0"]
        w.now += 3600  # every read-back due
        w.master.published.pop("F0")
        w.master.fail["publish"] = 1
        w.tick()
        assert w.r is not None and w.r.known is not None and w.r.known["F0"].published is None  # type: ignore[index]
        assert w.store_matches_memory() == []
        w.restart()
        w.now += 600  # past its backoff
        w.tick()
        assert w.master.published.get("F0", {}).get("site") == "cdnreq-F0"
    finally:
        w.close()

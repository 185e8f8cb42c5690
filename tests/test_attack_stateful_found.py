"""Defects found by tests/test_attack_stateful.py, each reduced to a plain
deterministic test (tests/test_ownership_attacks.py's world: after every
tick no two entries name one host, and every host served was proven by its
instance)."""

from __future__ import annotations

from dataclasses import replace

from cdnreq.model import RequestedState
from tests.test_ownership_attacks import FILL, World, customer, world  # noqa: F401
from tests.test_tick_stages import opened  # noqa: F401

D = "blog.other.example"


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

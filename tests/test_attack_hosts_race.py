"""Hostile customers racing for hosts across ticks, sleepers and restarts
(tests/test_ownership_attacks.py's world: after every tick no two entries
name one host, and every host served was proven by its instance). These
held on the code they were written against; kept as regression tests."""

from __future__ import annotations

from dataclasses import replace

from cdnreq.model import RequestedState
from cdnreq.reconcile.tick import Reconciler
from tests.test_ownership_attacks import FILL, L, World, customer, world  # noqa: F401
from tests.test_tick_stages import opened  # noqa: F401

D = "shop.example"



async def restart(w: World) -> None:
    w.r = Reconciler(config=w.r.config, store=w.r.store, master=w.cdn, resolver=w.dns, clock=w.clock)  # type: ignore[arg-type]
    await w.r.load()


def last_error(w: World, guid: str) -> str:
    return w.r.known[guid].last_error or ""  # type: ignore[index]


async def owner_and_rival(w: World, owner_ticks: int = 1):
    """A proven and live on D (asleep after 4 ticks), then B listed naming D, its proof in place."""
    a, b = customer("A", D), customer("B", D)
    await w.tick(a, *FILL)
    w.prove("A", D)
    for _ in range(owner_ticks):
        await w.tick(a, *FILL)
    await w.tick(a, b, *FILL)
    w.prove("B", D)
    return a, b


async def test_swap_hosts_between_two_instances_in_one_tick(world) -> None:
    w = await world()
    x, y = f"x.{D}", f"y.{D}"
    a, b = customer("A", x), customer("B", y)
    await w.tick(a, b, *FILL)
    w.prove("A", x)
    w.prove("B", y)
    await w.tick(a, b, *FILL)
    await w.tick(a, b, *FILL)
    assert w.serves("A", x) and w.serves("B", y)
    a2, b2 = customer("A", y), customer("B", x)
    for _ in range(2):
        await w.tick(a2, b2, *FILL)
    w.prove("A", y)
    w.prove("B", x)
    for _ in range(10):
        await w.tick(a2, b2, *FILL)
    assert w.serves("A", y) and w.serves("B", x), (w.cdn.serving(), last_error(w, "A"), last_error(w, "B"))


async def test_wildcard_against_explicit_owned_by_another(world) -> None:
    w = await world(retention_s=3600)
    a = customer("A", f"a.{D}")
    b = customer("B", D, **{"server-alias": f"*.{D}"})
    await w.tick(a, b, *FILL)
    w.prove("A", f"a.{D}")
    await w.tick(a, b, *FILL)
    w.prove("B", D)
    w.prove("B", f"*.{D}")
    for _ in range(4):
        await w.tick(a, b, *FILL)
    assert w.serves("A", f"a.{D}") and "cdnreq-B" not in w.cdn.serving()
    err = last_error(w, "B")
    assert 'server-alias: "*.shop.example" is already used by another CDN entry' in err, err
    assert "cdnreq-A" not in err and "A" not in err.replace("CDN", "")


async def test_destroyed_owner_and_rival_in_one_tick(world) -> None:
    w = await world()
    a, b = customer("A", D), customer("B", D)
    await w.tick(a, *FILL)
    w.prove("A", D)
    await w.tick(a, *FILL)
    await w.tick(a, b, *FILL)
    w.prove("B", D)  # B's token sits next to A's
    gone = replace(a, state=RequestedState.DESTROYED)
    for _ in range(6):
        await w.tick(gone, b, *FILL)
    assert w.serves("B", D) and not w.serves("A", D)


async def test_restart_in_the_middle_of_a_takeover(world) -> None:
    w = await world(retention_s=3600)
    a, b = await owner_and_rival(w)
    w.cdn.fail["destroy"] = 2
    for _ in range(16):
        await w.tick(b, *FILL)
        await restart(w)
    assert w.serves("B", D) and not w.serves("A", D)


async def test_owner_asleep_and_a_rival_with_proof(world) -> None:
    w = await world()
    a, b = customer("A", D), customer("B", D)
    await w.tick(a, *FILL)
    w.prove("A", D)
    for _ in range(4):
        await w.tick(a, *FILL)
    assert "A" in w.r.sleepers.keys()
    await w.tick(a, b, *FILL)
    w.prove("B", D)
    for _ in range(6):
        await w.tick(a, b, *FILL)
        await restart(w)
    assert w.serves("A", D) and "cdnreq-B" not in w.cdn.serving()
    assert f'custom_domain: "{D}" is already used by another CDN entry' in last_error(w, "B")


async def test_owner_asleep_moves_away_and_rival_takes(world) -> None:
    w = await world()
    a, b = await owner_and_rival(w, owner_ticks=4)
    moved = customer("A", f"other.{D}")
    for _ in range(8):
        await w.tick(moved, b, *FILL)
    assert w.serves("B", D) and not w.serves("A", D)


async def test_case_dot_idn_spellings_race(world) -> None:
    w = await world()
    a = customer("A", "bücher.example")
    b = customer("B", "XN--BCHER-KVA.Example.")
    await w.tick(a, b, *FILL)
    w.prove("A", "xn--bcher-kva.example")
    w.prove("B", "xn--bcher-kva.example")
    for _ in range(5):
        await w.tick(a, b, *FILL)
    s = w.cdn.serving()
    assert ("cdnreq-A" in s) != ("cdnreq-B" in s), s


async def test_released_after_failed_re_checks_goes_to_the_waiting_rival_after_the_old_entry(world) -> None:
    w = await world(release_on_recheck_failure=True, recheck_interval_s=600, grace_s=1200)
    a, b = await owner_and_rival(w)
    w.unprove("A", D)
    for _ in range(80):
        await w.tick(a, b, *FILL)
    assert w.serves("B", D) and not w.serves("A", D)
    assert f'custom_domain: "{D}" is already used by another CDN entry' in last_error(w, "A")


async def test_a_customer_flipping_its_custom_domain_every_tick_keeps_one_challenge_and_its_site(world) -> None:
    w = await world()
    a = customer("A", D)
    await w.tick(a, *FILL)
    w.prove("A", D)
    await w.tick(a, *FILL)
    await w.tick(a, *FILL)
    flips = [customer("A", f"n{i % 3}.other.example") for i in range(30)]
    tokens = set()
    for flip in flips:
        await w.tick(flip, *FILL)
        tokens.add(w.r.domains.challenges["A"].token)  # type: ignore[union-attr]
        assert w.serves("A", D)
    assert len(tokens) == 3  # one token per domain, not one per tick
    challenges = await w.r.store.load_challenges()
    assert list(challenges) == ["A"]

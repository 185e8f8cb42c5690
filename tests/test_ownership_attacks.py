"""One host, one owner (issue 10, properties 7, 8, 9, 10a, 15, 17), attacked
over many ticks: an in-process Reconciler with a real store, a resolver
answering from a dict, and a technical CDN double that keeps its entries
and can fail or time out chosen calls. After every tick, no two live
technical entries name one host (wildcards included), and every host an
entry names was proven by the instance it was requested for.

No sleeps, loopback only (no sockets at all).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import pytest

from cdnreq.model import Lookup
from cdnreq.model import Listing
from cdnreq.master import MasterUnavailable
from cdnreq.model import InstanceAnswer, SharedInstance
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from cdnreq.validate.hosts import overlaps
from tests.test_tick_stages import config, opened  # noqa: F401 (fixture)

L = "_slapos-challenge"


class Cdn:
    """The master: lists customers; keeps technical entries by title."""

    def __init__(self) -> None:
        self.listed: list[SharedInstance] = []
        self.entries: dict[str, dict[str, Any]] = {}  # title -> {"state", "parameters"}
        self.fail: dict[str, int] = {}  # call -> how many more times it fails
        self.applied_then_fail: dict[str, int] = {}  # the call is applied, then times out
        self.dropped: dict[str, int] = {}  # the call is answered 200 and not applied
        self.calls: dict[str, int] = {}

    def _fault(self, call: str, applied: bool) -> None:
        table = self.applied_then_fail if applied else self.fail
        if table.get(call, 0) > 0:
            table[call] -= 1
            raise MasterUnavailable(call, "no answer within 5 s")

    async def list_hosted(self, guid: str) -> Listing:
        return Listing(tuple(self.listed))

    async def request_instance(self, *, title: str, state: str, parameters=None, **_: Any) -> InstanceAnswer:
        call = "destroy" if state == "destroyed" else "request"
        self._fault(call, False)
        if self.dropped.get(call, 0) > 0:
            self.dropped[call] -= 1
            return InstanceAnswer(guid=f"tech-{title}", connection_parameters={}, state=state)
        entry = self.entries.setdefault(title, {})
        entry["state"] = state
        if parameters is not None:
            entry["parameters"] = dict(parameters)
        self._fault(call, True)
        return InstanceAnswer(guid=f"tech-{title}", connection_parameters={"url": "https://cdn"}, state=state)

    async def get_instance(self, instance_guid: str) -> InstanceAnswer:
        self._fault("get", False)
        entry = self.entries.get(instance_guid.removeprefix("tech-"), {})
        return InstanceAnswer(guid=instance_guid, connection_parameters={"url": "https://cdn"},
                              state=entry.get("state", "destroyed"), parameters=entry.get("parameters"))

    async def publish_connection(self, instance_guid: str, parameters: Any) -> None:
        pass

    async def publish_error(self, instance_guid: str, message: str) -> None:
        pass

    def serving(self) -> dict[str, tuple[str, ...]]:
        """Title -> hosts of every entry not destroyed."""
        out = {}
        for title, entry in self.entries.items():
            if entry.get("state") != "destroyed":
                p = entry.get("parameters") or {}
                hosts = [p.get("custom_domain") or "", *(p.get("server-alias") or "").split()]
                out[title] = tuple(h for h in hosts if h)
        return out


class Dns:
    """TXT records from a dict of name -> set of values."""

    def __init__(self) -> None:
        self.txt: dict[str, set[str]] = {}

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        return {n: Lookup(n, "found", tuple(sorted(self.txt[n]))) if self.txt.get(n) else Lookup(n, "absent") for n in names}

    async def addresses(self, name: str) -> Lookup:
        return Lookup(name, "absent")

    async def close(self) -> None:
        pass


class Clock:
    """A minute passes at each tick: backoffs and retention run out."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, r: Reconciler, cdn: Cdn, dns: Dns, clock: Clock):
        self.r, self.cdn, self.dns, self.clock = r, cdn, dns, clock
        self.proven: set[tuple[str, str]] = set()  # (title, host) ever proven by DNS for that title's instance
        self.ticks = 0

    def prove(self, guid: str, host: str) -> None:
        """Put the guid's current token at the host (next to any other)."""
        token = self.r.domains.challenges[guid].token  # type: ignore[union-attr]
        self.dns.txt.setdefault(f"{L}.{host.removeprefix('*.')}", set()).add(token)
        self.proven.add((f"cdnreq-{guid}", host))

    def unprove(self, guid: str, host: str) -> None:
        token = self.r.domains.challenges[guid].token  # type: ignore[union-attr]
        self.dns.txt.get(f"{L}.{host.removeprefix('*.')}", set()).discard(token)

    async def tick(self, *listed: SharedInstance) -> None:
        self.cdn.listed = list(listed)
        self.clock.now += 60
        report = await self.r.tick()
        self.ticks += 1
        assert report.ok, report.error
        self.check()

    def check(self) -> None:
        serving = self.cdn.serving()
        for title, hosts in serving.items():
            for host in hosts:
                assert (title, host) in self.proven, f"tick {self.ticks}: {title} serves {host}, never proven by it"
        titles = sorted(serving)
        for i, a in enumerate(titles):
            for b in titles[i + 1:]:
                both = [(x, y) for x in serving[a] for y in serving[b] if overlaps(x, y)]
                assert not both, f"tick {self.ticks}: {a} and {b} both name {both}"


    def serves(self, guid: str, host: str) -> bool:
        return host in self.cdn.serving().get(f"cdnreq-{guid}", ())


def customer(guid: str, domain: str | None, **extra: Any) -> SharedInstance:
    parameters: dict[str, Any] = {"url": f"https://{guid.lower()}.backend.example", **extra}
    if domain:
        parameters["custom_domain"] = domain
    return SharedInstance.of(guid, parameters)


@pytest.fixture
async def world(tmp_path: Path, opened: list[Store]):  # noqa: F811
    async def make(confirm_ticks: int | None = None, **domain: Any) -> World:
        cfg = config(tmp_path, **domain)
        if confirm_ticks is not None:
            cfg = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"confirm_ticks": confirm_ticks})})
        store = await Store.open(cfg.daemon.database)
        opened.append(store)
        cdn, dns = Cdn(), Dns()
        clock = Clock()
        r = Reconciler(config=cfg, store=store, master=cdn, resolver=dns, clock=clock)  # type: ignore[arg-type]
        await r.load()
        return World(r, cdn, dns, clock)
    return make


FILL = [customer(f"F{i}", None) for i in range(8)]  # keeps one departure under the removal guard
SHOP, OTHER = "www.shop.example", "www.other.example"


# -- 8: a request whose answer was lost may have been applied ---------------------------------


async def test_a_request_applied_but_unanswered_counts_as_serving_when_its_owner_leaves(world) -> None:
    """A's request reaches the CDN and its answer is lost; A leaves (retained)
    and B proves the host: B waits until A's entry is gone, then is served."""
    w = await world(retention_s=3600)
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    w.cdn.applied_then_fail["request"] = 1
    await w.tick(a, *FILL)
    assert w.serves("A", SHOP) and w.r.known["A"].served == (SHOP,)  # type: ignore[index]
    await w.tick(*FILL)
    await w.tick(b, *FILL)
    w.prove("B", SHOP)
    for _ in range(8):
        await w.tick(b, *FILL)
    assert w.serves("B", SHOP) and not w.serves("A", SHOP)


async def test_an_update_applied_but_unanswered_counts_its_new_hosts(world) -> None:
    """A moves to a new domain; the update is applied, its answer lost; A
    leaves and C proves the new domain: C waits for A's entry to go."""
    w = await world(retention_s=36000)
    a, c = customer("A", SHOP), customer("C", OTHER)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    moved = customer("A", OTHER)
    await w.tick(moved, *FILL)
    w.prove("A", OTHER)
    w.cdn.applied_then_fail["request"] = 1
    await w.tick(moved, *FILL)
    assert w.serves("A", OTHER) and set(w.r.known["A"].served or ()) == {SHOP, OTHER}  # type: ignore[index]
    await w.tick(*FILL)
    await w.tick(c, *FILL)
    w.prove("C", OTHER)
    for _ in range(8):
        await w.tick(c, *FILL)
    assert w.serves("C", OTHER) and not w.serves("A", OTHER)


# -- races that hold (invariants checked after every tick) -------------------------------------


async def test_two_customers_proving_one_host_in_one_tick_get_one_entry(world) -> None:
    w = await world()
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, b, *FILL)
    w.prove("A", SHOP)
    w.prove("B", SHOP)
    for _ in range(6):
        await w.tick(a, b, *FILL)
    assert w.serves("A", SHOP) != w.serves("B", SHOP)


async def test_a_wildcard_owner_that_left_and_returns_changed_stays_refused(world) -> None:
    w = await world(retention_s=600)
    a = customer("A", "shop.example", **{"server-alias": "*.shop.example"})
    b = customer("B", SHOP)
    await w.tick(a, b, *FILL)
    for host in ("shop.example", "*.shop.example"):
        w.prove("A", host)
    w.prove("B", SHOP)
    for _ in range(3):
        await w.tick(a, b, *FILL)
    assert w.serves("A", "*.shop.example") and not w.serves("B", SHOP)
    for _ in range(6):
        await w.tick(b, *FILL)  # A gone (retained) for 3 ticks: B takes www under its wildcard
    assert w.serves("B", SHOP) and "cdnreq-A" not in w.cdn.serving()
    changed = customer("A", "shop.example", **{"server-alias": "*.shop.example", "enable_cache": "true"})
    for returning in (a, a, changed, changed):
        await w.tick(returning, b, *FILL)
        assert "already used by another CDN entry" in (w.r.known["A"].last_error or "")  # type: ignore[index]
    assert w.serves("B", SHOP) and "cdnreq-A" not in w.cdn.serving()


async def test_an_owner_that_moves_away_and_back_finds_its_host_taken(world) -> None:
    w = await world()
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    moved = customer("A", OTHER)
    await w.tick(moved, b, *FILL)
    w.prove("A", OTHER)
    w.prove("B", SHOP)
    for _ in range(5):
        await w.tick(moved, b, *FILL)
    for _ in range(5):
        await w.tick(a, b, *FILL)
    assert w.serves("B", SHOP) and w.serves("A", OTHER)  # A's entry keeps its last good request
    assert "already used by another CDN entry" in (w.r.known["A"].last_error or "")  # type: ignore[index]


async def test_a_winner_waits_while_the_losers_destroy_fails_and_the_loser_returns(world) -> None:
    w = await world(retention_s=600)
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    await w.tick(*FILL)  # A retained
    await w.tick(b, *FILL)
    w.prove("B", SHOP)
    w.cdn.fail["destroy"] = 4
    for _ in range(4):
        await w.tick(b, *FILL)
    for _ in range(40):  # A back, refused; its entry destroyed once the CDN lets it
        await w.tick(a, b, *FILL)
    assert w.serves("B", SHOP) and "cdnreq-A" not in w.cdn.serving()


async def test_a_winner_waits_while_the_destroy_cannot_be_read_back(world) -> None:
    w = await world()
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    w.cdn.applied_then_fail["destroy"] = 1
    w.cdn.fail["get"] = 4
    await w.tick(*FILL)  # A removed: destroy applied, answer lost, read-backs fail
    await w.tick(b, *FILL)
    w.prove("B", SHOP)
    for _ in range(3):
        await w.tick(b, *FILL)
    for _ in range(45):  # A back as a newcomer, refused; read-backs back off up to 16 minutes
        await w.tick(a, b, *FILL)
    assert w.serves("B", SHOP) and "cdnreq-A" not in w.cdn.serving()


async def test_hosts_are_stored_as_served_before_the_request_goes_out(world) -> None:
    """A crash after the request left but before its answer is stored must
    leave the hosts counted as served (the stored record, read by the request)."""
    w = await world()
    seen: list[tuple[str, ...] | None] = []
    request = w.cdn.request_instance

    async def noting(**kwargs: Any) -> InstanceAnswer:
        if kwargs["title"] == "cdnreq-A" and kwargs["state"] != "destroyed":
            seen.append((await w.r.store.load())["A"].served)  # type: ignore[index]
        return await request(**kwargs)

    w.cdn.request_instance = noting  # type: ignore[method-assign]
    a = customer("A", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    moved = customer("A", OTHER)
    await w.tick(moved, *FILL)
    w.prove("A", OTHER)
    await w.tick(moved, *FILL)
    assert seen == [(SHOP,), (SHOP, OTHER)]
    assert w.r.known["A"].served == (SHOP, OTHER)  # type: ignore[index]  # until read back
    await w.tick(moved, *FILL)
    assert w.r.known["A"].served == (OTHER,)  # type: ignore[index]


# -- 9 and 12: one listing never hands a live host to a rival ----------------------------------


async def test_one_listing_with_another_domain_does_not_hand_the_host_to_a_waiting_rival(world) -> None:
    """B has its proof in place and waits, refused, while A names the host.
    The master lists A with another custom_domain for one tick: B must not
    take the host, nor A's live entry be destroyed. Only once A has not named
    it for confirm_ticks (3) ticks in a row may B prove it (property 9)."""
    w = await world()
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    await w.tick(a, b, *FILL)
    w.prove("B", SHOP)
    await w.tick(a, b, *FILL)
    assert w.serves("A", SHOP)
    glitch = customer("A", OTHER)
    await w.tick(glitch, b, *FILL)
    assert w.serves("A", SHOP) and w.r.domains.index.owns("A", SHOP)  # type: ignore[union-attr]
    for _ in range(3):
        await w.tick(a, b, *FILL)
    assert w.serves("A", SHOP) and "already used by another CDN entry" in (w.r.known["B"].last_error or "")  # type: ignore[index]
    for _ in range(2):  # moved away for good: two ticks still held
        await w.tick(glitch, b, *FILL)
        assert w.serves("A", SHOP) and w.r.domains.index.owns("A", SHOP)  # type: ignore[union-attr]
    for _ in range(4):  # the third: contestable, B proves it; A's entry goes first
        await w.tick(glitch, b, *FILL)
    assert w.serves("B", SHOP) and not w.serves("A", SHOP)


async def test_the_unnamed_streak_survives_a_restart(world) -> None:
    """`cdnreq once` (or a restart) between ticks neither resets the streak
    (a host its owner moved away from stays contestable after three runs,
    property 9) nor shortens it."""
    w = await world()
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    moved = customer("A", OTHER)
    await w.tick(moved, b, *FILL)
    w.prove("B", SHOP)
    await w.r.load()
    await w.tick(moved, b, *FILL)
    assert w.r.domains.index.owns("A", SHOP)  # type: ignore[union-attr]  # two runs: still A's
    for _ in range(4):
        await w.r.load()
        await w.tick(moved, b, *FILL)
    assert w.serves("B", SHOP) and not w.serves("A", SHOP)


# -- 17: a destroy by title counts once read back too ------------------------------------------


async def test_a_destroy_by_title_the_master_drops_is_read_back_before_the_host_moves(world) -> None:
    """A's request was applied but its answer lost (no technical guid known).
    A leaves; its destroy by title is answered 200 and dropped: it is read
    back by the guid the answer names, destroyed again, and only then is B
    requested."""
    w = await world()
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    w.cdn.applied_then_fail["request"] = 1
    await w.tick(a, *FILL)
    assert w.serves("A", SHOP) and w.r.known["A"].tech_guid is None  # type: ignore[index]
    w.cdn.dropped["destroy"] = 1
    await w.tick(*FILL)  # A leaves: destroyed by title, dropped
    await w.tick(b, *FILL)
    w.prove("B", SHOP)
    for _ in range(6):
        await w.tick(b, *FILL)
    assert w.serves("B", SHOP) and not w.serves("A", SHOP)


async def test_one_listing_without_the_owner_does_not_hand_its_host_to_a_waiting_rival(world) -> None:
    """Retention keeps a site through a short absence: a master that leaves
    A out of one listing must not let B, proof in place, take A's live host
    (nor destroy A's entry). Gone for confirm_ticks (3) ticks, it may."""
    w = await world(retention_s=3600)
    a, b = customer("A", SHOP), customer("B", SHOP)
    await w.tick(a, *FILL)
    w.prove("A", SHOP)
    await w.tick(a, *FILL)
    await w.tick(a, b, *FILL)
    w.prove("B", SHOP)
    await w.tick(a, b, *FILL)
    await w.tick(b, *FILL)  # A left out of one listing
    assert w.serves("A", SHOP) and w.r.domains.index.owns("A", SHOP)  # type: ignore[union-attr]
    for _ in range(3):
        await w.tick(a, b, *FILL)
    assert w.serves("A", SHOP) and "already used by another CDN entry" in (w.r.known["B"].last_error or "")  # type: ignore[index]
    for _ in range(2):
        await w.tick(b, *FILL)
        assert w.serves("A", SHOP)
    for _ in range(4):
        await w.tick(b, *FILL)
    assert w.serves("B", SHOP) and not w.serves("A", SHOP)

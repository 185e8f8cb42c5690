"""A master that lies once, around sleeping instances and a restart.

Sleepers (decide/dormancy.py) are settled, idle instances the daemon keeps
only as a packed record. A master that lists them wrongly for one tick (a
state, parameters, a duplicate, half of them missing, nothing at all) must
not make the daemon stop, destroy or re-title a live entry beyond what its
guards allow; once the listing is right again, the fleet settles back to
what it was: nothing lost, the sleepers asleep again, the customers shown
what they were shown. The same after a restart (a new Reconciler on the
same store, as `cdnreq once` after a `run`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cdnreq.config import Config
from cdnreq.decide.recheck import UNKNOWN_RECHECK_S
from cdnreq.listing import parse_listing
from cdnreq.model import Listing, Phase, SharedInstance
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from tests.test_sleepers import Clock
from tests.test_tick_stages import L, Dns, Master, opened, reconciler, title  # noqa: F401

PLAIN = [f"P{n}" for n in range(9)]


def params(guid: str, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"url": f"https://{guid.lower()}.backend.example"}
    if guid == "A":
        p["custom_domain"] = "www.a.example"
    p.update(extra)
    return p


def entry(guid: str, state: str = "started", **extra: Any) -> dict[str, Any]:
    return {"instance_guid": guid, "state": state, "parameters": params(guid, **extra), "title": f"t-{guid}"}


class Liar(Master):
    """Lists `entries` (raw dicts, read as the real client reads them);
    notes what is published and read back."""

    def __init__(self, store: Store, entries: list[dict[str, Any]]):
        super().__init__(store, ())
        self.entries = entries
        self.published: list[tuple[str, Any]] = []
        self.polled: list[str] = []

    async def list_hosted(self, guid: str) -> Listing:
        return parse_listing([dict(e) for e in self.entries])

    async def publish_connection(self, instance_guid: str, parameters: Any) -> None:
        self.published.append((instance_guid, dict(parameters)))

    async def publish_error(self, instance_guid: str, message: str) -> None:
        self.published.append((instance_guid, message))

    async def get_instance(self, instance_guid: str) -> Any:
        self.polled.append(instance_guid)
        return await super().get_instance(instance_guid)


def config(tmp_path: Path, domain: dict[str, Any] | None = None, **daemon: Any) -> Config:
    return Config.model_validate({
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
        "daemon": {"database": str(tmp_path / "cdnreq.db"), "max_destroy_fraction": 0.5, **daemon},
        "domain": {"secret_file": str(tmp_path / "domain-secret"), **(domain or {})},
    })


def full() -> list[dict[str, Any]]:
    return [entry("A"), *(entry(g) for g in PLAIN)]


async def fleet(tmp_path: Path, opened: list[Store], domain: dict[str, Any] | None = None,
                **daemon: Any) -> tuple[Reconciler, Liar, Clock]:
    """A (proven www.a.example) and P0..P8, requested, live, then asleep."""
    dns = Dns({})
    cfg = config(tmp_path, domain, **daemon)
    r, _ = await reconciler(opened, cfg, [SharedInstance.of("A", params("A"))], dns, proven={"A"})
    master = Liar(r.store, full())  # type: ignore[arg-type]
    r.master = master  # type: ignore[assignment]
    r.clock = clock = Clock()
    for _ in range(4):
        await ok_tick(r, clock)
    assert set(r.sleepers) == {"A", *PLAIN}, set(r.sleepers)
    master.requests.clear()
    master.published.clear()
    return r, master, clock


async def ok_tick(r: Reconciler, clock: Clock) -> Any:
    report = await r.tick()
    assert report.ok, report.error
    clock.now += 1
    return report


async def settle_back(r: Reconciler, clock: Clock, ticks: int = 4) -> None:
    for _ in range(ticks):
        await ok_tick(r, clock)


async def a_recheck_passes_and_nothing_breaks(r: Reconciler, master: Liar, clock: Clock) -> None:
    """A's re-check falls due and passes: its token is the one its DNS holds;
    nothing was stopped or destroyed, and A still owns www.a.example."""
    clock.now += r.config.domain.recheck_interval_s + 1
    report = await ok_tick(r, clock)
    assert report.planned.get("recheck_ok") == 1, report.planned
    await settle_back(r, clock)
    assert breaking(master) == [], master.requests
    assert (await r.store.load_hosts())["www.a.example"].guid == "A"


async def restarted(r: Reconciler, master: Liar) -> Reconciler:
    """A new process on the same store: `cdnreq once` after a `run`."""
    again = Reconciler(config=r.config, store=r.store, master=master, resolver=r.resolver)  # type: ignore[arg-type]
    again.clock = r.clock
    await again.load()
    return again


def breaking(master: Liar) -> list[tuple[str, str]]:
    """Requests that stop or destroy an entry."""
    return [(t, s) for t, s in master.requests if s != "started"]


async def told(r: Reconciler) -> dict[str, Any]:
    """What each customer was shown, what is in effect on its entry, its host and token."""
    records = await r.store.load()
    hosts = await r.store.load_hosts()
    challenges = await r.store.load_challenges()
    return {
        "records": {g: (rec.title, rec.phase, rec.tech_guid, rec.param_hash, rec.requested_state, rec.spec_hash,
                        dict(rec.connection or {}), rec.published, rec.served) for g, rec in records.items()},
        "hosts": {h: c.guid for h, c in hosts.items()},
        "tokens": {g: (c.domain, c.token) for g, c in challenges.items()},
    }


async def assert_back_as_before(r: Reconciler, master: Liar, before: dict[str, Any]) -> None:
    """The whole fleet asleep again, live, each with its one title, what it
    was shown, its hosts and its token; nothing sent under another title."""
    assert set(r.sleepers) == {"A", *PLAIN}, (set(r.sleepers), r.known and set(r.known))
    assert all(d.phase is Phase.LIVE for d in r.sleepers.values())
    assert await told(r) == before
    titles = {t for t, _ in master.requests}
    assert titles <= {title(g) for g in ("A", *PLAIN)}, titles


def lied(lie: str) -> list[dict[str, Any]]:
    """One listing of a lying master; the fleet is A and P0..P8, all asleep."""
    rest = [entry(g) for g in PLAIN]
    if lie == "stop_requested":  # a state the listing does not know: that entry is unusable
        return [entry("A"), entry("P0", state="stop_requested"), *rest[1:]]
    if lie == "destroy_requested":
        return [entry("A", state="destroy_requested"), *rest]
    if lie == "twice, other parameters":
        return [*full(), entry("P0", url="https://elsewhere.example")]
    if lie == "twice, other state":
        return [*full(), entry("P1", state="destroyed")]
    if lie == "twice, A with another domain":
        return [*full(), entry("A", custom_domain="www.b.example")]
    if lie == "3 of 10 stopped":  # at least max_update_fraction: held
        return [entry("A", state="stopped"), *(entry(g, state="stopped") for g in PLAIN[:2]), *rest[2:]]
    if lie == "3 of 10 other parameters":
        return [entry("A", url="https://x.example"), *(entry(g, url="https://y.example") for g in PLAIN[:2]),
                *rest[2:]]
    if lie == "3 of 10 no custom_domain and no url":
        return [{**entry("A"), "parameters": {}}, *({**entry(g), "parameters": {}} for g in PLAIN[:2]), *rest[2:]]
    if lie == "A names another domain":
        return [entry("A", custom_domain="www.b.example"), *rest]
    if lie == "4 of 10 missing":  # under max_destroy_fraction: retained, not destroyed
        return [entry("A"), *rest[4:]]
    if lie == "5 of 10 missing":  # at max_destroy_fraction: held
        return rest[4:]
    if lie == "5 of 10 destroyed":
        return [entry("A", state="destroyed"), *(entry(g, state="destroyed") for g in PLAIN[:4]), *rest[4:]]
    if lie == "empty":
        return []
    if lie == "anonymous and half missing":
        return [entry("A"), *rest[6:], {"state": "started", "parameters": {}}]
    raise AssertionError(lie)


LIES = ["stop_requested", "destroy_requested", "twice, other parameters", "twice, other state",
        "twice, A with another domain", "3 of 10 stopped", "3 of 10 other parameters",
        "3 of 10 no custom_domain and no url", "A names another domain", "4 of 10 missing", "5 of 10 missing",
        "5 of 10 destroyed", "empty", "anonymous and half missing"]


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted after the lie"])
@pytest.mark.parametrize("lie", LIES)
async def test_one_lie_about_sleepers_breaks_nothing_and_the_fleet_settles_back(
    tmp_path: Path, opened: list[Store], lie: str, restart: bool
) -> None:
    r, master, clock = await fleet(tmp_path, opened)
    before = await told(r)
    master.entries = lied(lie)
    await ok_tick(r, clock)
    assert breaking(master) == [], master.requests  # nothing stopped or destroyed on one listing
    assert {t for t, _ in master.requests} <= {title(g) for g in ("A", *PLAIN)}
    assert set(await r.store.load()) == {"A", *PLAIN}  # nobody forgotten
    master.entries = full()
    if restart:
        r = await restarted(r, master)
    await settle_back(r, clock)
    assert breaking(master) == [], master.requests
    await assert_back_as_before(r, master, before)


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted after the lie"])
async def test_a_sleeper_named_with_another_domain_once_keeps_the_token_its_dns_holds(
    tmp_path: Path, opened: list[Store], restart: bool
) -> None:
    """One listing names another custom_domain for A (proven, live, asleep);
    the next lists it as before. A's challenge for the other domain replaced
    the one for www.a.example, and coming back drew a new salt: A was shown
    a new token for www.a.example, which its DNS does not hold, so the next
    re-check failed, and with release_on_recheck_failure its live entry was
    taken down: one lie, a site broken. Back on its domain, A is shown the
    token it was given (its TXT record still proves it) and re-checks pass."""
    domain = {"release_on_recheck_failure": True, "grace_s": 0}
    r, master, clock = await fleet(tmp_path, opened, domain)
    token = (await r.store.challenge_of("A")).token  # type: ignore[union-attr]
    shown = (await r.store.get("A")).published  # type: ignore[union-attr]
    master.entries = lied("A names another domain")
    await ok_tick(r, clock)
    master.entries = full()
    if restart:
        r = await restarted(r, master)
    await settle_back(r, clock)
    assert (await r.store.challenge_of("A")).token == token  # type: ignore[union-attr]
    assert (await r.store.get("A")).published == shown  # type: ignore[union-attr]
    await a_recheck_passes_and_nothing_breaks(r, master, clock)


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted after the lie"])
async def test_a_re_check_due_when_the_master_names_another_domain_is_no_evidence(
    tmp_path: Path, opened: list[Store], restart: bool
) -> None:
    """A's re-check of www.a.example falls due at the tick whose listing
    names www.b.example for A. It was made with the challenge just issued
    for www.b.example, whose token no DNS record of www.a.example holds:
    failing, and with release_on_recheck_failure (grace 0) A's live entry
    was destroyed on that one listing. A host its owner does not name this
    tick is not re-checked against a token for another domain: the re-check
    is asked again later (decide/recheck.UNKNOWN_RECHECK_S), at a tick that
    names it, and passes."""
    domain = {"release_on_recheck_failure": True, "grace_s": 0}
    r, master, clock = await fleet(tmp_path, opened, domain)
    clock.now += r.config.domain.recheck_interval_s + 1
    master.entries = lied("A names another domain")
    report = await ok_tick(r, clock)
    assert not report.planned.get("recheck_failing"), report.planned
    assert breaking(master) == [], master.requests
    master.entries = full()
    if restart:
        r = await restarted(r, master)
    clock.now += UNKNOWN_RECHECK_S
    report = await ok_tick(r, clock)
    assert report.planned.get("recheck_ok") == 1, report.planned
    await settle_back(r, clock)
    assert breaking(master) == [], master.requests
    claim = (await r.store.load_hosts())["www.a.example"]
    assert claim.guid == "A" and claim.failing_since is None
    events = await r.store.events_for("A")  # type: ignore[attr-defined]
    assert not [e for _, e in events if e.action in ("recheck", "release")], events
    assert set(r.sleepers) == {"A", *PLAIN}

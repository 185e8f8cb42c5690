"""What `cdnreq plan` shows against what the daemon's next tick does.

A long-running Reconciler (the daemon: its sleepers, caches and queue kept
between ticks) and, before each of its ticks, the dry tick `cdnreq plan`
runs on a snapshot of the same store (tests/planharness.py), on an
in-memory master and DNS. The plan must list the actions the tick then
hands to its executor, and write nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from cdnreq.decide.actions import READ_BACK
from cdnreq.master import MasterUnavailable
from tests.planharness import L, Clock, Daemon, Dns, FakeMaster, config, customer, dry_plan, dump, pairs


@pytest.fixture
async def started() -> AsyncIterator[list[Daemon]]:
    """Daemons to stop at the end of the test, whatever happened."""
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        await d.stop()


async def proven_and_asleep(tmp_path: Path, started: list[Daemon], **daemon: object) -> tuple[Daemon, FakeMaster, Dns, Clock]:
    """A (proven www.a.example) and P (no custom domain), live and asleep."""
    cfg = config(tmp_path, {"verify_interval_s": 3600, **daemon})
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
        report, _ = await d.tick()
        assert report.ok, report.error
    assert d.r is not None and set(d.r.sleepers) == {"A", "P"}
    return d, master, dns, clock


async def test_periodic_read_backs_are_capped_per_tick_not_per_dns_stage(tmp_path: Path, started: list[Daemon]) -> None:
    """[daemon].read_backs_per_tick bounds a tick's periodic read-backs; each
    DNS stage of the tick planned with a cap of its own, so a tick with one
    DNS group read back up to twice the cap (A, woken, is decided with the
    group of B, a newcomer waiting for its proof in a.example), and `cdnreq
    plan` showed one read-back, and one left for later, where the tick
    read back both."""
    d, master, dns, clock = await proven_and_asleep(tmp_path, started, read_backs_per_tick=1)
    master.instances.append(customer("B", "shop.a.example"))
    clock.now += 3600 * 1.2  # both read-backs due
    report, actions = await d.tick()
    assert report.ok, report.error
    read_backs = sorted(a.guid for a in actions if a.reason == READ_BACK)
    assert len(read_backs) == 1, read_backs
    assert report.planned.get("read_back_later") == 1, report.planned


async def test_plan_reads_back_the_instances_the_tick_reads_back(tmp_path: Path, started: list[Daemon]) -> None:
    """`cdnreq plan` started every instance awake, so A, asleep in the
    daemon, was a settled instance of the plan's first stage, where the
    daemon wakes it and decides it afresh, with the group of B (waiting for
    its proof in a.example): under [daemon].read_backs_per_tick the plan
    showed A read back and P left for later, and the tick read back P."""
    d, master, dns, clock = await proven_and_asleep(tmp_path, started, read_backs_per_tick=1)
    master.instances.append(customer("B", "shop.a.example"))
    clock.now += 3600 * 1.2
    assert d.store is not None
    before = await dump(d.store.path)
    shown, _, _, _, doc = await dry_plan(d.cfg, master, dns, clock)
    assert await dump(d.store.path) == before
    report, actions = await d.tick()
    assert report.ok, report.error
    assert pairs(shown) == pairs(actions), (sorted(pairs(shown)), sorted(pairs(actions)))
    assert [r["instance_guid"] for r in doc["would"]["poll"]] == [a.guid for a in actions if a.reason == READ_BACK]


class PublishFailsOnce(FakeMaster):
    """The next publication fails once (`failing`), sent but not applied."""

    failing = 0

    async def publish_connection(self, instance_guid: str, parameters: Any) -> None:
        if self.failing:
            self.failing -= 1
            raise MasterUnavailable("publish", "HTTP 503: Service Unavailable", status=503)
        await super().publish_connection(instance_guid, parameters)


@pytest.mark.parametrize("restart", [False, True])
async def test_a_dropped_publication_whose_republication_failed_is_published_again_as_stored(
    tmp_path: Path, started: list[Daemon], restart: bool
) -> None:
    """A read-back found P no longer holds what it was shown (the master
    dropped it) and publishing it again failed: memory forgot what P was
    shown, the store did not. `cdnreq plan` showed a read-back where the
    daemon published; a daemon restarted before the retry took P for told,
    and, its backend changed meanwhile (the CDN's answer the same), never
    published again: P was left with nothing until the next read-back."""
    cfg = config(tmp_path, {"verify_interval_s": 3600, "retry_base_s": 60, "retry_max_s": 60})
    clock = Clock(1_800_000_000.0)
    master, dns = PublishFailsOnce([customer("P"), customer("Q")]), Dns()
    d = Daemon(cfg, master, dns, clock)
    started.append(d)
    await d.start()
    for _ in range(4):
        clock.now += 60
        master.answer_all()
        report, _ = await d.tick()
        assert report.ok, report.error
    shown = dict(master.shown["P"])
    assert shown.get("domain"), shown
    clock.now += 3600 * 1.3  # both read-backs due
    del master.shown["P"]  # acknowledged, then dropped by the master
    master.failing = 1
    report, _ = await d.tick()
    assert report.ok and report.results.get("poll:failed") == 1, (report.results, report.error)
    assert d.store is not None and d.r is not None and d.r.known is not None
    assert (await d.store.load())["P"] == d.r.known["P"]
    assert await d.store.published_of("P") is None
    if restart:
        await d.restart()
        master.instances[0] = customer("P", url="https://moved.backend.example")
    published = master.calls["publish_connection"]
    for _ in range(3):
        clock.now += 120  # past the backoff
        await _plan_then_tick(d, master, dns, clock)
    assert master.shown.get("P") == shown
    assert master.calls["publish_connection"] == published + 1  # P's only: Q is not published twice


async def test_plan_shows_the_retained_entries_whose_destroy_the_guard_holds(
    tmp_path: Path, started: list[Daemon]
) -> None:
    """Three customers gone one at a time (their entries retained), then
    listed `destroyed` at once: the guard holds the three destroys (the bar
    of a mass update) and the tick stores them as the held set `cdnreq
    approve` takes. `cdnreq plan` listed only the held records it marks
    removing (Plan.held), not retained entries: it showed no held removal
    at all, its counts said 0, and the operator had nothing to approve."""
    from cdnreq.model import SharedInstance
    from cdnreq.reconcile.guardrun import HELD_REMOVALS

    cfg = config(tmp_path, {"removal_window_s": 0}, retention_s=86400)
    clock = Clock(1_800_000_000.0)
    master, dns = FakeMaster([customer(f"C{i}") for i in range(6)]), Dns()
    d = Daemon(cfg, master, dns, clock)
    started.append(d)
    await d.start()
    for _ in range(3):
        clock.now += 60
        master.answer_all()
        assert (await d.tick())[0].ok
    gone = []
    for guid in ("C0", "C1", "C2"):
        gone.append(next(i for i in master.instances if i.guid == guid))
        master.instances = [i for i in master.instances if i.guid != guid]
        clock.now += 60
        assert (await d.tick())[0].ok
    master.instances += [SharedInstance.of(i.guid, i.parameters, state="destroyed") for i in gone]
    clock.now += 60
    assert d.store is not None
    shown, _, _, _, doc = await dry_plan(d.cfg, master, dns, clock)
    report, actions = await d.tick()
    assert report.ok and report.hold_reason, report
    held = (await d.store.load_guards())[HELD_REMOVALS]["guids"]
    assert sorted(held) == ["C0", "C1", "C2"]
    assert doc["held"]["removals"]["instances"] == sorted(held), doc["held"]
    assert doc["counts"]["held_removals"] == report.held_removals == 3
    assert pairs(shown) == pairs(actions)


async def test_plan_shows_the_sleepers_an_empty_listing_holds(tmp_path: Path, started: list[Daemon]) -> None:
    """The master lists nothing: every removal is held, the sleepers it
    does not name stay asleep and count in the held set. The plan lists
    them with the others, as the tick keeps them for `cdnreq approve`."""
    from cdnreq.reconcile.guardrun import HELD_REMOVALS

    d, master, dns, clock = await proven_and_asleep(tmp_path, started)
    master.instances.append(customer("N"))
    clock.now += 60
    assert (await d.tick())[0].ok  # N requested, awake
    master.instances = []
    clock.now += 60
    _, _, _, _, doc = await dry_plan(d.cfg, master, dns, clock)
    report, actions = await d.tick()
    assert report.ok and report.hold_reason and not actions
    assert d.store is not None
    held = (await d.store.load_guards())[HELD_REMOVALS]["guids"]
    assert sorted(held) == ["A", "N", "P"]
    assert doc["held"]["removals"]["instances"] == sorted(held), doc["held"]


# -- a property: varied states, plan then tick ------------------------------------

DOMAINS = (None, "www.a.example", "www.b.example", "shop.a.example", "*.c.example", "x.c.example")
OPS = ("add", "add", "change", "remove", "state", "prove", "prove_all", "unprove", "answer", "restart",
       "advance", "mass_change", "mass_remove", "approve", "anonymous", "idle", "idle")


async def _operate(op: str, n: int, d: Daemon, master: FakeMaster, dns: Dns, clock: Clock, serial: list[int]) -> None:
    """One change of the world between two ticks; `n` picks what it touches."""
    from cdnreq import operator
    from cdnreq.decide.operator import OperatorAction
    from cdnreq.model import SharedInstance

    listed = master.instances
    pick = listed[n % len(listed)] if listed else None
    if op == "add" or (pick is None and op in ("change", "remove", "state")):
        serial[0] += 1
        url = "ftp://refused.example" if n % 5 == 0 else None
        listed.append(customer(f"C{serial[0]:02d}", DOMAINS[n % len(DOMAINS)], url))
    elif op == "change" and pick is not None:
        listed[listed.index(pick)] = customer(pick.guid, DOMAINS[(n // 7) % len(DOMAINS)], f"https://{n % 3}.example")
    elif op == "remove" and pick is not None:
        listed.remove(pick)
    elif op == "state" and pick is not None:
        state = ("stopped", "destroyed", "started")[n % 3]
        listed[listed.index(pick)] = SharedInstance.of(pick.guid, pick.parameters, state=state)
    elif op in ("prove", "prove_all") and d.store is not None:
        challenges = sorted((await d.store.load_challenges()).values(), key=lambda c: c.guid)
        for c in challenges if op == "prove_all" else challenges[n % max(1, len(challenges)):][:1]:
            dns.txt[f"{L}.{c.domain.removeprefix('*.')}"] = c.token
    elif op == "unprove" and dns.txt:
        del dns.txt[sorted(dns.txt)[n % len(dns.txt)]]
    elif op == "answer":
        master.answer_all()
    elif op == "restart":
        await d.restart()
    elif op == "advance":
        clock.now += (3600 * 1.2, 86400 * 1.2)[n % 2]
    elif op == "mass_change":
        for i, inst in enumerate(listed):
            if (n >> (i % 10)) & 1:
                listed[i] = SharedInstance.of(inst.guid, {**inst.parameters, "url": f"https://mass{n % 2}.example"},
                                              state=inst.state)
    elif op == "mass_remove":
        master.instances = [inst for i, inst in enumerate(listed) if (n >> (i % 10)) & 1]
    elif op == "approve":
        assert d.store is not None and d.r is not None
        await operator.apply(d.store, None, OperatorAction("approve", by="by the test"), now=clock.now)
        d.r.reread()  # as the daemon does after an operator action
    elif op == "anonymous":
        master.anonymous = n % 2


async def _plan_then_tick(d: Daemon, master: FakeMaster, dns: Dns, clock: Clock) -> None:
    from cdnreq.reconcile.guardrun import HELD_REMOVALS, UPDATES

    assert d.store is not None
    before, calls = await dump(d.store.path), dict(master.calls)
    shown, _, dry_report, _, doc = await dry_plan(d.cfg, master, dns, clock)
    assert await dump(d.store.path) == before, "the plan wrote to the store"
    assert {k for k, v in master.calls.items() if v != calls.get(k, 0)} <= {"list", "get"}
    report, done = await d.tick()
    assert dry_report.ok and report.ok, (dry_report.error, report.error)
    assert pairs(shown) == pairs(done), (sorted(pairs(shown)), sorted(pairs(done)))
    assert {k: v for k, v in dry_report.planned.items() if v} == {k: v for k, v in report.planned.items() if v}
    guards = await d.store.load_guards()
    assert doc["held"]["removals"]["instances"] == sorted((guards.get(HELD_REMOVALS) or {}).get("guids", []))
    assert (dry_report.hold_reason, dry_report.removals_fingerprint) == (report.hold_reason, report.removals_fingerprint)
    updates = guards.get(UPDATES) or {}
    assert [r["instance_guid"] for r in doc["held"]["updates"]["instances"]] == sorted(updates.get("streaks", {}))
    assert doc["held"]["updates"]["fingerprint"] == updates.get("fingerprint")


def test_plan_lists_what_the_daemon_s_next_tick_does_and_writes_nothing() -> None:
    import asyncio
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    bars = st.fixed_dictionaries({
        "verify_interval_s": st.sampled_from([0, 3600, 86400]), "read_backs_per_tick": st.sampled_from([1, 2, 2000]),
        "confirm_ticks": st.integers(1, 3), "min_update_hold": st.integers(1, 2),
        "removal_window_s": st.sampled_from([0, 3600]),
    })
    step = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1023)), max_size=3)

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(daemon=bars, retention=st.sampled_from([0, 0, 7200]), fleet=st.integers(0, 8),
           steps=st.lists(step, min_size=5, max_size=25))
    def scenario(daemon: dict, retention: int, fleet: int, steps: list) -> None:
        async def run(tmp: Path) -> None:
            clock = Clock(1_800_000_000.0)
            master, dns = FakeMaster([customer(f"C{i:02d}", DOMAINS[i % len(DOMAINS)]) for i in range(fleet)]), Dns()
            d = Daemon(config(tmp, daemon, retention_s=retention), master, dns, clock)
            await d.start()
            try:
                serial = [fleet]
                for ops in steps:
                    for op, n in ops:
                        await _operate(op, n, d, master, dns, clock, serial)
                    clock.now += 60
                    await _plan_then_tick(d, master, dns, clock)
            finally:
                await d.stop()

        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(Path(tmp)))

    scenario()

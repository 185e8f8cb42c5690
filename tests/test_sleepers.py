"""Settled, idle instances sleep between ticks (decide/dormancy.py,
reconcile/sleepers.py): the daemon drops their record, challenge and gate
from memory, and wakes them, from the store, before anything may read them.
Asleep or awake, a tick decides the same."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cdnreq.model import SharedInstance
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from tests.test_tick_stages import L, Dns, config, customer, opened, reconciler, title  # noqa: F401

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def settled(tmp_path: Path, opened: list[Store], **domain: Any) -> tuple[Reconciler, Any, Dns, Clock]:
    """A (proven), PLAIN and B (never proven) requested, read back, then
    idle: A and PLAIN asleep from the fourth tick on, B awake (pending)."""
    dns = Dns({})
    instances = [customer("A", "www.a.example"), customer("PLAIN"), customer("B", "www.b.example")]
    r, master = await reconciler(opened, config(tmp_path, **domain), instances, dns, proven={"A"})
    clock = Clock()
    r.clock = clock
    for _ in range(4):
        report = await r.tick()
        assert report.ok, report.error
        clock.now += 1
    return r, master, dns, clock


async def test_settled_idle_instances_sleep_holding_no_record_challenge_or_gate(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    assert set(r.sleepers) == {"A", "PLAIN"}
    assert r.known is not None and r.domains is not None
    assert set(r.known) == {"B"}
    assert "A" not in r.domains.challenges and "B" in r.domains.challenges
    assert not ({"A", "PLAIN"} & set(r.domains.settled)) and not ({"A", "PLAIN"} & set(r.idle.entries))
    assert r.snapshot().phases == {"live": 2, "new": 1}
    requests, asked = list(master.requests), list(dns.asked)
    report = await r.tick()
    assert report.ok and report.planned.get("unchanged") == 3 and report.planned["gate_ok"] == 2
    assert set(r.sleepers) == {"A", "PLAIN"}
    assert master.requests == requests and set(dns.asked) - set(asked) <= {f"{L}.www.b.example", f"{L}.b.example"}


async def test_a_sleeper_whose_parameters_change_wakes_is_updated_and_keeps_its_token(
    tmp_path: Path, opened: list[Store]
) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    token = (await r.store.challenge_of("A")).token  # type: ignore[attr-defined,union-attr]
    master.instances = tuple(
        SharedInstance.of("A", {"url": "https://a2.backend.example", "custom_domain": "www.a.example"})
        if i.guid == "A" else i for i in master.instances
    )
    report = await r.tick()
    assert report.ok, report.error
    assert report.planned.get("update") == 1 and "A" not in r.sleepers
    assert (await r.store.challenge_of("A")).token == token  # type: ignore[attr-defined,union-attr]
    events = await r.store.events_for("A")  # type: ignore[attr-defined]
    assert not [e for _, e in events if e.action == "challenge" and e.outcome == "issued" and e.at >= clock.now - 1]
    assert r.domains is not None and r.domains.challenges["A"].token == token


async def test_a_sleeper_whose_read_back_is_due_wakes_and_is_read_back(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    clock.now += r.config.daemon.verify_interval_s * 1.2
    polled: list[str] = []
    original = master.get_instance

    async def get_instance(instance_guid: str) -> Any:
        polled.append(instance_guid)
        return await original(instance_guid)

    master.get_instance = get_instance
    report = await r.tick()
    assert report.ok, report.error
    assert {"tech-cdnreq-A", "tech-cdnreq-PLAIN"} <= set(polled)
    assert "A" not in r.sleepers and "PLAIN" not in r.sleepers


async def test_a_sleeper_with_a_re_check_due_wakes_and_its_proof_is_looked_up(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    clock.now += r.config.domain.recheck_interval_s + 1
    dns.asked.clear()
    report = await r.tick()
    assert report.ok, report.error
    assert f"{L}.www.a.example" in dns.asked and "A" not in r.sleepers
    assert report.planned.get("recheck_ok") == 1


async def test_a_sleeper_no_longer_listed_wakes_and_leaves_behind_the_removal_guard(
    tmp_path: Path, opened: list[Store]
) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    master.instances = tuple(i for i in master.instances if i.guid != "PLAIN")
    report = await r.tick()
    assert report.ok, report.error
    assert report.planned.get("removed") == 1 and "PLAIN" not in r.sleepers
    # the master lists nothing: every sleeper counts in what the guard holds, and sleeps on
    master.instances = ()
    report = await r.tick()
    assert report.ok, report.error
    assert report.hold_reason is not None and report.held_removals == 2 and set(r.sleepers) == {"A"}


async def test_other_rules_wake_every_sleeper(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    changed = r.config.model_copy(update={"technical_cdn": r.config.technical_cdn.model_copy(
        update={"software_release_uri": "http://sr.invalid/cdn-2"})})
    await r.reconfigure(changed)
    report = await r.tick()
    assert report.ok, report.error
    assert not r.sleepers and report.planned.get("update") == 2  # A and PLAIN; B is not requested


async def test_a_restart_keeps_sleepers_asleep_without_reading_their_records(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    requests = list(master.requests)
    await r.load()
    assert set(r.sleepers) == {"A", "PLAIN"} and r.known is not None and set(r.known) == {"B"}
    assert r.domains is not None and "A" not in r.domains.challenges
    assert r.snapshot().phases == {"live": 2, "new": 1}
    dns.asked.clear()
    report = await r.tick()
    assert report.ok and report.planned.get("unchanged") == 3 and master.requests == requests
    assert f"{L}.www.a.example" not in dns.asked and set(r.sleepers) == {"A", "PLAIN"}


async def _marks(store: Store) -> dict[str, Any]:
    rows = await store._all("SELECT guid, sleep FROM instances")  # type: ignore[attr-defined]
    return {g: m for g, m in rows}


async def test_a_mark_is_cleared_by_any_write_of_the_record(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    marks = await _marks(r.store)  # type: ignore[arg-type]
    assert marks["A"] and marks["PLAIN"] and marks["B"] is None
    master.instances = tuple(
        SharedInstance.of("A", {"url": "https://a2.backend.example", "custom_domain": "www.a.example"})
        if i.guid == "A" else i for i in master.instances
    )
    assert (await r.tick()).ok
    assert (await _marks(r.store))["A"] is None  # type: ignore[arg-type]
    await r.load()
    assert "A" in r.known and "A" not in r.sleepers  # type: ignore[operator]


async def test_a_restart_under_other_rules_or_with_other_claims_reads_them_awake(
    tmp_path: Path, opened: list[Store]
) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    claims = await r.store.hosts_of("A")  # type: ignore[attr-defined]
    await r.store.commit(host_upserts=[replace(c, checked_at=c.checked_at + 1) for c in claims])
    await r.load()
    assert set(r.sleepers) == {"PLAIN"} and "A" in r.known  # type: ignore[operator]
    assert r.domains is not None and "A" in r.domains.challenges  # its token, read with it
    changed = r.config.model_copy(update={"daemon": r.config.daemon.model_copy(update={"verify_interval_s": 123.0})})
    await r.reconfigure(changed)
    await r.load()
    assert not r.sleepers and set(r.known) == {"A", "PLAIN", "B"}  # type: ignore[arg-type]
    report = await r.tick()
    assert report.ok and master.requests.count((title("A"), "started")) == 1


async def test_a_store_of_schema_6_migrates_with_every_instance_awake(tmp_path: Path) -> None:
    """Schema 7 adds the sleepers' marks: a store written by the previous
    version opens with none (every instance loaded awake), then keeps them."""
    from test_decisions import make_schema_5

    from cdnreq.store.migrations import LATEST

    path = tmp_path / "v6.db"
    make_schema_5(path, version=6)
    async with await Store.open(path) as s:
        assert s.schema_version == LATEST >= 7
        assert set(await s.load(awake_only=True)) == {"A"} and await s.load_asleep() == []
        await s.commit(asleep=[("A", '["pa", null, "rules"]')])
        assert set(await s.load(awake_only=True)) == set() and len(await s.load_asleep()) == 1
        record = await s.get("A")
        assert record is not None
        await s.commit(upserts=[replace(record, updated_at=3.0)])
        assert await s.load_asleep() == []  # a write of the record clears its mark


def test_a_restart_trusts_a_mark_only_while_everything_it_relies_on_holds() -> None:
    from cdnreq.decide.dormancy import from_store, mark, short, unpack
    from cdnreq.decide.gate import HostIndex
    from cdnreq.decide.kept import claims_of
    from cdnreq.model import HostClaim

    index = HostIndex([HostClaim("www.a.example", "A", "a.example", 1.0, 2.0)])
    claims = claims_of(index, "A")
    h = "ab" * 32
    good = ("A", mark(h, 99.0, "R"), "live", "started", 1, '["www.a.example"]', h, "S", claims, 1)
    packed, awake = from_store([good], "S", "R", index)
    asleep = {g: unpack(p) for g, p in packed.items()}
    assert awake == [] and asleep["A"].param_hash == short(h) and asleep["A"].read_back_at == 99.0
    assert asleep["A"].served == ("www.a.example",) and asleep["A"].serving
    broken = [
        good[:1] + ("not json",) + good[2:],
        good[:1] + (mark(h, 99.0, "other rules"),) + good[2:],  # the plan's or the domain step's rules changed
        good[:7] + ("another stamp",) + good[8:],  # the validator or its libraries changed
        good[:6] + ("cd" * 32,) + good[7:],  # the kept decision is for other parameters
        good[:8] + ("other claims",) + good[9:],  # a re-check, a release or a rival since
        good[:6] + (None, None, None, None),  # no kept decision at all
        good[:9] + (0,),  # a kept verdict, not a settled gate
        good[:2] + ("retired",) + good[3:],  # a phase this cdnreq does not know
    ]
    for n, row in enumerate(broken):
        assert from_store([row], "S", "R", index) == ({}, ["A"]), n
    assert from_store([good], "S", "R", HostIndex([])) == ({}, ["A"])  # its claim is gone

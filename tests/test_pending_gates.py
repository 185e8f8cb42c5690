"""A pending instance's gate, decided again each tick, is the same object
while nothing about it changes (reconcile/domainstate._same_as_before): made
anew each tick, 10,000 pending gates of about a kilobyte each scattered what
lives between ticks over the heap, and the planner's idle cache, which
compares gates by identity, never saw the instance unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdnreq.decide import gate as gate_module
from cdnreq.decide.gate import Status
from cdnreq.model import SharedInstance
from cdnreq.store import Store
from tests.test_sleepers import Clock
from tests.test_tick_stages import Dns, config, customer, opened, reconciler  # noqa: F401


async def ticks(r: object, clock: Clock, count: int) -> None:
    for _ in range(count):
        report = await r.tick()  # type: ignore[attr-defined]
        assert report.ok, report.error
        clock.now += 1


async def test_an_unchanged_pending_gate_is_kept_from_tick_to_tick(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({})  # no TXT record: the proof stays pending
    r, master = await reconciler(opened, config(tmp_path), [customer("P", "www.p.example")], dns)
    r.clock = clock = Clock()
    clock.now += 10000  # an old challenge: looked up again in 1,000 s, decided without DNS meanwhile
    await ticks(r, clock, 2)
    gates = []
    for _ in range(3):
        await ticks(r, clock, 1)
        record, gate, _ = r.idle.entries["P"]
        assert gate.status is Status.PENDING and "www.p.example" in gate.extras["message"]
        gates.append((record, gate))
    assert gates[1][1] is gates[0][1] and gates[2][1] is gates[0][1]
    assert gates[2][0] is gates[0][0]  # the idle cache saw it unchanged: no record written again


async def test_a_changed_pending_gate_is_the_new_one(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({})
    r, master = await reconciler(opened, config(tmp_path), [customer("P", "www.p.example")], dns)
    r.clock = clock = Clock()
    clock.now += 10000
    await ticks(r, clock, 2)
    before = r.idle.entries["P"][1]
    master.instances = [customer("P", "www.q.example")]
    await ticks(r, clock, 1)  # a challenge for the new domain
    clock.now += 10000
    await ticks(r, clock, 2)
    after = r.idle.entries["P"][1]
    assert after is not before and "www.q.example" in after.extras["message"]


async def test_an_unchanged_pending_gate_is_not_made_again(
    tmp_path: Path, opened: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept, it was still made anew each tick and compared with the last
    (the message with its record names and token, about a kilobyte): a
    tenth of an idle tick with 10,000 pending instances. Made of the same
    verdict, challenge and policy, it is the last one, not made at all."""
    dns = Dns({})
    r, master = await reconciler(opened, config(tmp_path), [customer("P", "www.p.example")], dns)
    r.clock = clock = Clock()
    clock.now += 10000  # decided without DNS for the next 1,000 s
    await ticks(r, clock, 2)
    made: list[str] = []
    record_name = gate_module._record_name
    monkeypatch.setattr(gate_module, "_record_name", lambda host, *a: made.append(host) or record_name(host, *a))
    kept = r.idle.entries["P"][1]
    await ticks(r, clock, 3)
    assert r.idle.entries["P"][1] is kept
    assert made == []
    master.instances = [SharedInstance.of("P", {"url": "https://other.backend.example", "custom_domain": "www.p.example"})]
    await ticks(r, clock, 1)  # other parameters: another verdict, so the gate is made again
    assert made == ["www.p.example", "www.p.example"]

"""A gate settled for an instance's earlier parameters must not outlive
them. A customer who names another domain and then comes back to the first
one is decided again: its challenge is for the domain it names, so the
re-checks of its live host keep finding the proof it published."""

from __future__ import annotations

from pathlib import Path

from cdnreq.store import Store
from tests.test_sleepers import Clock
from tests.test_tick_stages import L, Dns, config, customer, opened, reconciler  # noqa: F401


async def back_and_forth(tmp_path: Path, opened: list[Store]):  # type: ignore[no-untyped-def]
    """A proven and served for www.a.example, then naming www.c.example
    (never proven) for a tick, then www.a.example again."""
    dns = Dns({})
    r, master = await reconciler(opened, config(tmp_path), [customer("A", "www.a.example")], dns, proven={"A"})
    r.clock = clock = Clock()
    for instances in ([customer("A", "www.a.example")], [customer("A", "www.c.example")], [customer("A", "www.a.example")]):
        master.instances = tuple(instances)
        report = await r.tick()
        assert report.ok, report.error
        clock.now += 1
    return r, master, dns, clock


async def test_an_instance_back_on_its_first_domain_gets_that_domains_challenge_again(
    tmp_path: Path, opened: list[Store]
) -> None:
    r, master, dns, clock = await back_and_forth(tmp_path, opened)
    assert r.domains is not None
    assert r.domains.challenges["A"].domain == "www.a.example"
    assert (await r.store.challenge_of("A")).domain == "www.a.example"  # type: ignore[attr-defined,union-attr]
    assert r.known is not None and "A" in r.known


async def test_the_record_it_is_shown_is_the_one_its_re_checks_look_for(tmp_path: Path, opened: list[Store]) -> None:
    r, master, dns, clock = await back_and_forth(tmp_path, opened)
    assert r.domains is not None
    gate = r.domains.settled["A"][1]
    assert gate.extras["txt_record"] == f"{L}.www.a.example"
    dns.txt[gate.extras["txt_record"]] = gate.extras["txt_value"]  # the customer publishes what it is shown
    for _ in range(3):
        clock.now += r.config.domain.recheck_interval_s + 1
        report = await r.tick()
        assert report.ok, report.error
        assert not report.planned.get("recheck_failing"), report.planned
    claim = r.domains.index.by_host["www.a.example"]
    assert claim.guid == "A" and claim.failing_since is None

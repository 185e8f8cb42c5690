"""Kept decisions and sleepers that outlive the facts they were decided on
(a helper's attack round): each test failed on the code before its fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import publicsuffixlist
import pytest

from cdnreq.reconcile import domainstate
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from cdnreq.validate import hosts, psl, version
from cdnreq.validate.verdict import validate
from tests.test_attack_master_lies import PLAIN, fleet, ok_tick, restarted, settle_back
from tests.test_sleepers import DAY, settled
from tests.test_tick_stages import opened  # noqa: F401


def updated_psl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *suffixes: str) -> None:
    """`python -m publicsuffixlist.update` run while the daemon was stopped:
    the list rewritten in place, the package's version unchanged; then the
    restart (the list and the stamp's runtime read again, as at an import)."""
    updated = tmp_path / "public_suffix_list.dat"
    text = Path(publicsuffixlist.PSLFILE).read_text(encoding="utf-8")
    updated.write_text(text + "\n// ===BEGIN PRIVATE DOMAINS===\n" + "\n".join(suffixes) + "\n", encoding="utf-8")
    monkeypatch.setattr(publicsuffixlist, "PSLFILE", str(updated))
    listed, digest = psl.load()  # as the restarted process imports it
    assert digest == hashlib.sha256(updated.read_bytes()).hexdigest()
    monkeypatch.setattr(hosts, "_PSL", listed)
    monkeypatch.setattr(psl, "DIGEST", digest)
    monkeypatch.setattr(version, "_RUNTIME", version._runtime())


async def test_a_public_suffix_list_updated_in_place_decides_the_sleepers_again(
    tmp_path: Path, opened: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp named the publicsuffixlist package by its version only; the
    package updates its list in place (publicsuffixlist.update), the version
    unchanged. After such an update and a restart, A (proven, asleep) kept
    its settled gate for www.a.example, now a public suffix that nobody may
    own, and was served on it for good; a newcomer naming it was refused."""
    r, master, dns, clock = await settled(tmp_path, opened)
    assert {"A", "PLAIN"} <= set(r.sleepers)
    updated_psl(tmp_path, monkeypatch, "www.a.example")
    assert hosts.registrable_domain("www.a.example") is None
    again = Reconciler(config=r.config, store=r.store, master=master, resolver=dns)
    again.clock = clock
    await again.load()
    assert "A" not in again.sleepers and "PLAIN" not in again.sleepers  # decided again under the new list
    report = await again.tick()
    assert report.ok, report.error
    record = await r.store.get("A")
    assert record is not None and "is a public suffix" in (record.last_error or ""), record


async def test_moving_the_re_checks_timing_decides_no_instance_again(
    tmp_path: Path, opened: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """recheck_interval_s, grace_s and cdn_targets only time and judge the
    re-checks of proven hosts, which every tick runs with today's policy; no
    verdict nor settled gate is decided by them. They were in the stamp all
    the same: a SIGHUP that moved one woke every sleeper (their records read
    back, 100,000 of them) and validated every instance again, and so did
    the next restart."""
    r, master, dns, clock = await settled(tmp_path, opened)
    assert set(r.sleepers) == {"A", "PLAIN"}
    validated: list[str] = []

    def counting(parameters, *limits):
        validated.append(parameters.get("url", "?"))
        return validate(parameters, *limits)

    monkeypatch.setattr(domainstate, "validate", counting)
    domain = r.config.domain.model_copy(
        update={"recheck_interval_s": 2 * DAY, "grace_s": 3 * DAY, "cdn_targets": ["cdn.example"]}
    )
    await r.reconfigure(r.config.model_copy(update={"domain": domain}))
    report = await r.tick()
    assert report.ok, report.error
    clock.now += 1
    assert set(r.sleepers) == {"A", "PLAIN"} and validated == []
    again = Reconciler(config=r.config, store=r.store, master=master, resolver=dns)  # a restart under them
    again.clock = clock
    await again.load()
    assert set(again.sleepers) == {"A", "PLAIN"}
    report = await again.tick()
    assert report.ok, report.error
    assert validated == [], validated  # B's kept verdict (pending) reused
    assert set(again.sleepers) == {"A", "PLAIN"}


async def test_a_shorter_re_check_interval_still_wakes_the_owner_it_makes_due(
    tmp_path: Path, opened: list[Store]
) -> None:
    """What the stamp no longer holds still applies at once: a re-check due
    under the new interval wakes its owner, and the host is looked up."""
    r, master, dns, clock = await settled(tmp_path, opened)
    clock.now += 3600
    domain = r.config.domain.model_copy(update={"recheck_interval_s": 600.0})
    await r.reconfigure(r.config.model_copy(update={"domain": domain}))
    dns.asked.clear()
    report = await r.tick()
    assert report.ok, report.error
    assert report.planned.get("recheck_ok") == 1, report.planned
    assert any(name.endswith("www.a.example") for name in dns.asked), dns.asked


async def test_moving_the_retention_keeps_the_sleepers_asleep(tmp_path: Path, opened: list[Store]) -> None:
    """[domain].retention_s judges only instances gone from the master (or
    listed destroyed), and a sleeper gone or listed otherwise wakes anyway;
    it was in the rules the sleepers fell asleep under all the same: moving
    it woke the whole fleet (every record and challenge read back), and so
    did the next restart, like a guard bar before decide/dormancy.GUARD_BARS."""
    r, master, dns, clock = await settled(tmp_path, opened)
    assert set(r.sleepers) == {"A", "PLAIN"}
    domain = r.config.domain.model_copy(update={"retention_s": 30 * DAY})
    await r.reconfigure(r.config.model_copy(update={"domain": domain}))
    report = await r.tick()
    assert report.ok, report.error
    clock.now += 1
    assert set(r.sleepers) == {"A", "PLAIN"}
    again = Reconciler(config=r.config, store=r.store, master=master, resolver=dns)  # a restart under it
    again.clock = clock
    await again.load()
    assert set(again.sleepers) == {"A", "PLAIN"}
    master.instances = tuple(i for i in master.instances if i.guid != "PLAIN")  # PLAIN leaves: retained
    report = await again.tick()
    assert report.ok, report.error
    assert "PLAIN" not in again.sleepers
    assert (await r.store.get("PLAIN")).phase.value == "retained"  # type: ignore[union-attr]


async def test_a_proof_re_checked_under_a_clock_that_jumped_ahead_is_re_checked_once_it_is_back(
    tmp_path: Path, opened: list[Store]
) -> None:
    """The clock jumped 30 days ahead for a while (a host booted on a wrong
    RTC before NTP) and A's proof was re-checked then: its checked_at lay 30
    days ahead once the clock came back, so A was not re-checked for 30 days
    and a day, and a customer who had given up the domain kept it served for
    a month. A proof checked after now is no proof of a recent check: it is
    due at once, then every interval as the daemon measures it."""
    r, master, clock = await fleet(tmp_path, opened)
    real = clock.now
    clock.now = real + 30 * DAY
    report = await ok_tick(r, clock)
    assert report.planned.get("recheck_ok") == 1, report.planned
    assert (await r.store.load_hosts())["www.a.example"].checked_at > real + 29 * DAY
    clock.now = real + 60  # NTP brought the clock back
    r.resolver.txt.clear()  # type: ignore[attr-defined]  # the customer deleted its TXT record meanwhile
    report = await ok_tick(r, clock)
    assert report.planned.get("recheck_failing") == 1, report.planned
    claim = (await r.store.load_hosts())["www.a.example"]
    assert claim.checked_at <= clock.now and claim.failing_since is not None
    report = await ok_tick(r, clock)
    assert not report.planned.get("recheck_failing"), report.planned  # then an hour later, as for any failing proof


def test_a_failing_streak_dated_after_now_counts_from_now() -> None:
    """The same clock: a proof that started failing while the clock was 30
    days ahead had its grace period counted from that date, so
    release_on_recheck_failure released the host a month late."""
    from cdnreq.decide import recheck
    from cdnreq.decide.gate import DomainPolicy
    from cdnreq.model import HostClaim

    now = 1_800_000_000.0
    policy = DomainPolicy(release_on_recheck_failure=True, grace_s=DAY)
    ahead = now + 30 * DAY
    claim = HostClaim("www.a.example", "A", "a.example", now - 90 * DAY, ahead, ahead)
    assert recheck.due([claim], {"A"}, now, policy) == [claim]
    after = recheck.apply(claim, "failing", now, policy)
    assert after is not None and after.failing_since == now
    assert recheck.apply(after, "failing", now + DAY, policy) is None


@pytest.mark.parametrize("restart", [False, True])
async def test_entries_read_back_under_a_clock_that_jumped_ahead_are_read_back_once_it_is_back(
    tmp_path: Path, opened: list[Store], restart: bool
) -> None:
    """The same clock, and the periodic read-backs: the fleet read back while
    the clock was 30 days ahead fell asleep with its next read-back 30 days
    and an interval ahead, in memory and in its marks. Back on time, no
    entry was read back for a month (a technical entry the CDN lost stayed
    lost, a publication the master dropped unrepeated). A read-back planned
    further than an interval (and its spread) from now is due now."""
    r, master, clock = await fleet(tmp_path, opened, verify_interval_s=1000.0)
    real = clock.now
    clock.now = real + 30 * DAY
    for _ in range(6):
        await ok_tick(r, clock)
    assert {g for g in master.polled if g in ("A", *PLAIN)} == {"A", *PLAIN}
    assert set(r.sleepers) == {"A", *PLAIN}
    clock.now = real + 60  # NTP brought the clock back
    if restart:
        r = await restarted(r, master)
    master.polled.clear()
    for _ in range(3):
        await ok_tick(r, clock)
    assert {g for g in master.polled if g in ("A", *PLAIN)} == {"A", *PLAIN}, master.polled
    await settle_back(r, clock)
    assert set(r.sleepers) == {"A", *PLAIN}  # asleep again, due an interval from now
    master.polled.clear()
    await settle_back(r, clock)
    assert master.polled == []


async def test_an_openssl_upgraded_beneath_cryptography_decides_the_sleepers_again(
    tmp_path: Path, opened: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution's cryptography links the system's OpenSSL, which parses
    the customers' certificates and keys: an upgrade of it left the
    cryptography version, and so the stamp, as they were, and a restart
    trusted every kept verdict made by the old OpenSSL."""
    r, master, dns, clock = await settled(tmp_path, opened)
    assert {"A", "PLAIN"} <= set(r.sleepers)
    monkeypatch.setattr(version, "_openssl", lambda: "OpenSSL 9.9.9 (the system's, upgraded)")
    monkeypatch.setattr(version, "_RUNTIME", version._runtime())  # as the restarted process computes it
    again = Reconciler(config=r.config, store=r.store, master=master, resolver=dns)
    again.clock = clock
    await again.load()
    assert "A" not in again.sleepers and "PLAIN" not in again.sleepers
    report = await again.tick()
    assert report.ok, report.error


def test_a_deny_list_reordered_or_repeated_is_the_same_policy() -> None:
    """[validation].backend_deny (or backend_allow) written in another order,
    or with a network twice, is the same rule; it made another stamp, so a
    reload or a restart decided the whole fleet again (about ten seconds at
    100,000)."""
    from cdnreq.validate.policy import ValidationPolicy, networks

    one = ValidationPolicy(backend_deny=networks(["10.0.0.0/8", "::1/128", "127.0.0.0/8"]))
    other = ValidationPolicy(backend_deny=networks(["127.0.0.0/8", "10.0.0.0/8", "::1/128", "10.0.0.0/8"]))
    assert one == other and version.stamp(one) == version.stamp(other)
    assert version.stamp(one) != version.stamp(ValidationPolicy(backend_deny=networks(["10.0.0.0/8"])))

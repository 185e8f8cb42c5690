"""Caches that outlive a decision, reloads, operators and clocks (a helper's
attack round): each test failed on the code before its fix."""

from __future__ import annotations

from pathlib import Path

import asyncio
import time

import orjson

from cdnreq.listing import read_listing
from cdnreq.metrics import Metrics
from cdnreq.service.backups import Upkeep
from cdnreq.service.reload import reload_of
from cdnreq.store import Store, take_backup
from cdnreq.store.backupdir import backup_time, list_backups
from cdnreq.wiring import master_client
from tests.test_attack_master_lies import PLAIN, config, fleet, ok_tick, settle_back
from tests.test_tick_stages import opened, title  # noqa: F401


async def test_an_entry_destroyed_for_a_host_it_lost_is_read_back_next_not_destroyed_again(
    tmp_path: Path, opened: list[Store]
) -> None:
    """A (proven, live, asleep) fails its re-check past the grace period with
    release_on_recheck_failure: its host is released and its entry destroyed,
    and A, still listed, is told to prove its domain again. That publication
    wrote last_action 'publish' over 'destroy', so the destroy no longer
    counted as sent: the next tick destroyed the entry a second time instead
    of reading it back, and a rival waiting for the host waited a tick more."""
    r, master, clock = await fleet(tmp_path, opened, {"release_on_recheck_failure": True, "grace_s": 0})
    r.resolver.txt.clear()  # type: ignore[attr-defined]  # the customer deleted its TXT record
    clock.now += r.config.domain.recheck_interval_s + 1
    await ok_tick(r, clock)
    destroys = [t for t, s in master.requests if s == "destroyed"]
    assert destroys == [title("A")], master.requests
    tech = (await r.store.get("A")).tech_guid  # type: ignore[union-attr]
    assert tech is not None
    await ok_tick(r, clock)
    assert [t for t, s in master.requests if s == "destroyed"] == destroys, master.requests
    assert tech in master.polled
    after = await r.store.get("A")
    assert after is not None and after.tech_guid is None and after.served is None


def test_a_reload_of_max_parameters_bytes_gives_the_master_client_the_new_cap(tmp_path: Path) -> None:
    """[validation].max_parameters_bytes also bounds what the master client
    reads of one entry (a larger one is not parsed, its customer told the
    cap: listing.read_listing) and of one answer. A SIGHUP that raised it
    re-validated every instance under the new cap, but the master client
    was built again only for a change of [master] or the concurrency (or
    TLS files): without a certificate, the listing kept refusing entries
    under the old cap, naming it, until a restart."""
    running = config(tmp_path)
    raised = running.validation.model_copy(update={"max_parameters_bytes": 1 << 20})
    change = reload_of(running, running.model_copy(update={"validation": raised}))
    assert change.new_master
    entry = {"instance_guid": "BIG", "state": "started", "title": "t",
             "parameters": {"url": "https://big.example", "path": "/" + "a" * 600_000}}
    broken = b'{"instance_guid": "X", "state": "started", "parameters": {"url": "\xff"}}'  # read entry by entry
    body = b'{"result_list": [' + orjson.dumps(entry) + b", " + broken + b"]}"
    client = master_client(change.config)
    assert "BIG" not in read_listing(bytearray(body), client.max_parameters_bytes).unusable
    assert "BIG" in read_listing(bytearray(body), running.validation.max_parameters_bytes).unusable


async def test_a_backup_dated_in_the_future_by_a_clock_that_jumped_does_not_stop_the_backups(
    tmp_path: Path, opened: list[Store]
) -> None:
    """The clock jumped 30 days ahead for a while (a host booted on a wrong
    RTC before NTP), a backup was taken then, named 30 days ahead; the clock
    came back. The newest backup's age was negative, so always below
    [store].backup_interval_s: no backup was taken for 30 days, while the
    gauge of the last backup's time (in the future) kept the alert quiet. A
    backup dated after now is no proof of a recent one: the daemon backs up
    again, then every interval as it measures it."""
    cfg = config(tmp_path)
    store = await Store.open(cfg.daemon.database)
    opened.append(store)
    backups = cfg.backup_path()
    ahead = await take_backup(store, backups, now=time.time() + 30 * 86400)
    upkeep = Upkeep(store, lambda: cfg, Metrics(), asyncio.Event())
    upkeep.backup_if_due(1)
    await upkeep.finish()
    taken = [p for p in list_backups(backups) if p != ahead]
    assert len(taken) == 1 and backup_time(taken[0]) <= time.time(), list_backups(backups)  # type: ignore[operator]
    upkeep.backup_if_due(2)  # within the interval: no other
    await upkeep.finish()
    assert len(list_backups(backups)) == 2


async def test_a_domain_secret_lost_under_the_daemon_fails_the_ticks_and_is_not_made_anew(
    tmp_path: Path, opened: list[Store]
) -> None:
    """The secret file deleted while the daemon runs: its next reload of the store (after an operator
    action, a failed tick) silently made a new secret, with which the tokens
    its customers already published were never made (a domain an instance
    comes back to would get a token its DNS does not hold)."""
    r, master, clock = await fleet(tmp_path, opened)
    path = r.config.secret_path()
    kept = path.read_bytes()
    path.unlink()
    r.known = None  # the store is read again at the next tick
    report = await r.tick()
    assert not report.ok and report.error.startswith("domain secret: cannot read the domain secret"), report.error
    assert not path.exists()
    assert master.requests == [] and master.published == []
    path.write_bytes(kept)
    path.chmod(0o600)
    clock.now += 1
    await ok_tick(r, clock)


async def test_a_daemon_back_from_a_long_stop_reads_its_fleet_back_a_slice_a_tick(
    tmp_path: Path, opened: list[Store]
) -> None:
    """Every live entry due for its read-back at once (the daemon stopped
    longer than verify_interval_s): read_backs_per_tick of them a tick, each
    entry once, then the fleet sleeps again."""
    r, master, clock = await fleet(tmp_path, opened, verify_interval_s=1000.0, read_backs_per_tick=3)
    clock.now += 5000
    read: list[str] = []
    for _ in range(6):
        master.polled.clear()
        report = await ok_tick(r, clock)
        entries = [g for g in master.polled if g.startswith("tech-")]  # and each one's customer, read after it
        assert len(entries) <= 3, master.polled
        read += [g for g in master.polled if g in ("A", *PLAIN)]
    assert sorted(set(read)) == sorted({"A", *PLAIN}), read
    assert len(read) == len(set(read)), read  # each customer read once
    await settle_back(r, clock)
    assert set(r.sleepers) == {"A", *PLAIN} and report.ok


async def test_a_re_check_the_dns_does_not_answer_is_asked_again_later_not_at_every_tick(
    tmp_path: Path, opened: list[Store]
) -> None:
    """A DNS outage: a proven host's re-check times out. It was asked again
    at every tick (20,000 proven hosts timing out held each tick minutes
    long, new customers' proofs looked up behind them); now ten minutes
    later, the proof untouched (no warning, no failing streak)."""
    from cdnreq.decide import recheck
    from cdnreq.model import Lookup

    class Silent:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def txt_many(self, names):
            names = list(names)
            self.asked += names
            return {n: Lookup(n, "unknown", (), "timeout") for n in names}

        async def addresses(self, name):
            return Lookup(name, "unknown", (), "timeout")

    r, master, clock = await fleet(tmp_path, opened, domain={"recheck_interval_s": 100})
    silent = Silent()
    r.domains.resolver = silent  # type: ignore[union-attr]
    clock.now += 1000  # A's claim is due
    report = await ok_tick(r, clock)
    assert report.planned.get("recheck_unknown") == 1 and silent.asked, report.planned
    silent.asked.clear()
    for _ in range(3):
        await ok_tick(r, clock)
    assert silent.asked == [], silent.asked
    clock.now += recheck.UNKNOWN_RECHECK_S
    await ok_tick(r, clock)
    assert silent.asked, "asked again ten minutes later"
    claim = (await r.store.load_hosts())["www.a.example"]
    assert claim.guid == "A" and claim.failing_since is None
    assert master.published == [] and master.requests == []

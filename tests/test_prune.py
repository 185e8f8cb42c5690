"""State that stays bounded (issue 11, item 5): events and ticks past
`[store].events_retention_days` are pruned in small steps, what still explains
an instance is kept, the file gives its pages back (schema 4: incremental
auto-vacuum), and the daemon and `cdnreq once` prune on their own.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from cdnreq.configfile import load_config
from cdnreq.service.daemon import Daemon
from cdnreq.service.once import run_once
from devtools.devmaster import CdnSite, Slapproxy, write_config
from cdnreq.model import Event, InstanceGuid, Phase, Record, Title
from cdnreq.store import Store
from cdnreq.store.verify import inspect
from cdnreq.store.migrations import LATEST, MIGRATIONS, split_statements
from cdnreq.store.prune import prune
from cdnreq.store.retention import DAY_S, KEEP_TICKS, Retention

NOW = 1_780_000_000.0


def rec(guid: str) -> Record:
    return Record(guid=InstanceGuid(guid), title=Title(f"cdn-{guid}"), phase=Phase.LIVE, created_at=1.0, updated_at=2.0)


def ev(guid: str, action: str, days_ago: float, detail: str | None = None) -> Event:
    return Event(instance_guid=guid, action=action, outcome="ok", at=NOW - days_ago * DAY_S, detail=detail)


def rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def events_of(db: Path) -> list[tuple[str, str, float]]:
    return rows(db, "SELECT instance_guid, action, at FROM events ORDER BY id")


async def add_ticks(store: Store, started: list[float]) -> None:
    for at in started:
        tick = await store.begin_tick(at)
        await store.end_tick(tick, finished_at=at + 1, result="ok", summary={"planned": 0})


async def daily_history(store: Store, guids: list[str], days: int) -> None:
    """Day 0: request, publish; then a poll a day, oldest first (as ticks write them)."""
    await store.commit(upserts=[rec(g) for g in guids])
    first = [e for g in guids for e in (ev(g, "request", days), ev(g, "publish", days))]
    await store.commit(events=first)
    for day in range(days, 0, -1):
        await store.commit(events=[ev(g, "poll", day - 0.5) for g in guids])


# -- what goes, what stays ---------------------------------------------------------


async def test_retention_deletes_older_events_and_keeps_what_explains_an_instance(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db) as store:
        # "gone" was forgotten: nothing of its history explains anything any more
        await store.commit(events=[ev("gone", "request", 70), ev("gone", "forget", 65)])
        await daily_history(store, ["a", "b"], 60)
        await store.commit(events=[ev("gone", "poll", 0.1)])  # (a late read-back, say)
        report = await prune(store, Retention(30), now=NOW)
        kept = events_of(db)
    for guid in ("a", "b"):
        mine = [(action, at) for g, action, at in kept if g == guid]
        polls = [at for action, at in mine if action == "poll"]
        assert polls and min(polls) >= NOW - 30 * DAY_S  # 30 of the 60 polls: those within the retention
        assert len(polls) == 30
        # older than the retention, but the newest of their action: kept
        assert ("request", NOW - 60 * DAY_S) in mine and ("publish", NOW - 60 * DAY_S) in mine
    assert [(a, at) for g, a, at in kept if g == "gone"] == [("poll", NOW - 0.1 * DAY_S)]
    assert report.deleted["events"] == 2 * 30 + 2
    assert len(kept) == 2 * 32 + 1


async def test_the_newest_event_of_an_action_is_kept_and_the_older_ones_go(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db) as store:
        await store.commit(upserts=[rec("a")])
        await store.commit(events=[ev("a", "publish", 90, "first"), ev("a", "publish", 80, "second"),
                                   ev("a", "claim", 70, "www.a.example"), ev("a", "publish", 5, "third")])
        await prune(store, Retention(30), now=NOW)
        # what explain shows: the last publication (recent) and the claim, however old
        shown = [(e.action, e.detail) for _, e in await store.events_for("a")]
    assert shown == [("publish", "third"), ("claim", "www.a.example")]


async def test_zero_keeps_everything(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db) as store:
        await daily_history(store, ["a"], 40)
        await add_ticks(store, [NOW - d * DAY_S for d in range(40, 0, -1)])
        before = events_of(db), rows(db, "SELECT id FROM ticks")
        report = await prune(store, Retention(0), now=NOW)
        after = events_of(db), rows(db, "SELECT id FROM ticks")
    assert after == before and report.deleted == {"events": 0, "ticks": 0, "changes": 0}


async def test_ticks_past_the_retention_go_but_the_last_ten_stay(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db) as store:
        await add_ticks(store, [NOW - d * DAY_S for d in range(60, 20, -1)])  # 40 ticks, 10 within 30 days
        report = await prune(store, Retention(30), now=NOW)
        assert report.deleted["ticks"] == 30
        assert len(await store.last_ticks(100)) == 10
        # a requester stopped for months: every tick is old, the last ten stay
        report = await prune(store, Retention(1), now=NOW)
        assert report.deleted["ticks"] == 0
        last = await store.last_ticks(100)
    assert len(last) == KEEP_TICKS and last[0]["started_at"] == NOW - 21 * DAY_S


async def test_pruning_runs_in_small_transactions_that_a_tick_can_come_between(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db) as store:
        await daily_history(store, [f"i{n}" for n in range(50)], 40)  # 500 polls past 30 days
        order: list[str] = []
        step = store.in_turn

        async def counted(work):
            order.append("step")
            return await step(work)

        store.in_turn = counted  # type: ignore[method-assign]
        done = asyncio.Event()

        async def ticking() -> None:
            while not done.is_set():
                await store.commit(events=[ev("i0", "poll", 0)])
                order.append("commit")

        other = asyncio.create_task(ticking())
        try:
            report = await prune(store, Retention(30), now=NOW, batch=20)
        finally:
            done.set()
            await other
    assert report.deleted["events"] == 500
    # every step deleted at most one batch: at least 500 / 20 of them
    assert report.steps >= 25 and order.count("step") == report.steps
    first, last = order.index("step"), len(order) - 1 - order[::-1].index("step")
    assert "commit" in order[first:last]  # the other writer got in between the steps


async def test_a_pass_stops_between_two_steps_when_the_daemon_stops(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db) as store:
        await daily_history(store, [f"i{n}" for n in range(20)], 40)  # 200 polls past 30 days
        stop = asyncio.Event()
        step = store.in_turn

        async def then_stop(work):
            stop.set()  # the daemon stops while a step runs: that step finishes, no other starts
            return await step(work)

        store.in_turn = then_stop  # type: ignore[method-assign]
        # the first 60 rows: the 40 requests and publications (kept), 20 polls
        report = await prune(store, Retention(30), now=NOW, stop=stop, batch=60)
    assert report.stopped and report.steps == 1 and report.deleted["events"] == 20
    assert rows(db, "SELECT COUNT(*) FROM events WHERE at < ?", (NOW - 30 * DAY_S,)) == [(200 - 20 + 40,)]


# -- the file ------------------------------------------------------------------------


def make_v3(db: Path, instances: int, events_per_instance: int) -> None:
    """A database as cdnreq with schema version 3 left it (no auto-vacuum), with history."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for number, description, sql in MIGRATIONS[:3]:
            for statement in split_statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO migrations VALUES (?, ?, 1.0)", (number, description))
        conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 3)")
        conn.executemany(
            "INSERT INTO instances (guid, title, phase, created_at, updated_at) VALUES (?, ?, 'live', 1, 2)",
            [(f"g{i}", f"cdn-g{i}") for i in range(instances)],
        )
        conn.executemany(
            "INSERT INTO events (at, tick, instance_guid, action, outcome, detail) VALUES (?, 1, ?, 'poll', 'ok', ?)",
            [(NOW - (events_per_instance - d) * DAY_S, f"g{i}", "answer received " + "x" * 200)
             for d in range(events_per_instance) for i in range(instances)],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_populated_schema_3_database_migrates_to_incremental_auto_vacuum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    db = tmp_path / "cdnreq.db"
    make_v3(db, 20, 5)
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify"))
    systemd.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert rows(db, "PRAGMA auto_vacuum") == [(0,)]
    # a reader (no store lock) migrates but leaves the VACUUM to the writer
    async with await Store.open(db, lock=False) as reader:
        assert reader.schema_version == LATEST
    assert rows(db, "PRAGMA auto_vacuum") == [(0,)]
    async with await Store.open(db) as store:
        assert store.schema_version == LATEST
        assert len(await store.load()) == 20
        assert [e.action for _, e in await store.events_for("g3")] == ["poll"] * 5
    assert rows(db, "PRAGMA auto_vacuum") == [(2,)]  # INCREMENTAL
    # the VACUUM may take a while: systemd's start timeout was extended for it
    told = systemd.recv(4096).decode()
    systemd.close()
    assert "EXTEND_TIMEOUT_USEC=" in told and "VACUUM" in told
    assert [v for (v,) in rows(db, "SELECT version FROM migrations ORDER BY version")] == list(range(1, LATEST + 1))
    indexes = {n for (n,) in rows(db, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_instance_action" in indexes and "events_instance" not in indexes
    assert rows(db, "SELECT COUNT(*) FROM import_findings") == [(0,)]  # 5: imports from the cron requester
    assert rows(db, "SELECT COUNT(*) FROM events") == [(100,)]


async def test_a_new_database_starts_in_incremental_auto_vacuum(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    async with await Store.open(db):
        pass
    assert rows(db, "PRAGMA auto_vacuum") == [(2,)]


async def test_pruning_shrinks_the_file_and_its_backups(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    make_v3(db, 200, 60)  # 12,000 events of ~250 bytes, 60 days
    async with await Store.open(db) as store:
        before = db.stat().st_size
        backup_before = await store.backup(tmp_path / "before", now=NOW)
        report = await prune(store, Retention(30), now=NOW)
        after = db.stat().st_size  # checkpointed: the -wal's pages are in, the freed ones out
        assert report.size_bytes == store.size_bytes()
        backup_after = await store.backup(tmp_path / "after", now=NOW)
    assert report.deleted["events"] == 200 * 30  # the polls 31 to 60 days old
    assert report.vacuum_steps >= 1
    assert rows(db, "PRAGMA freelist_count") == [(0,)]
    assert after < before * 0.75, (before, after)
    assert backup_after.stat().st_size < backup_before.stat().st_size * 0.75
    info = inspect(backup_after)
    assert info.instances == 200 and info.schema_version == LATEST


# -- who runs it ------------------------------------------------------------------------


def offline_config(tmp_path: Path, **sections: Any) -> Path:
    """A configuration whose master is a dead loopback port: every tick fails, fast."""
    site = CdnSite(Slapproxy(tmp_path / "no-master"), "cdn-requester______0", "slappart0", "cdn-tech______0", "slappart1")
    return write_config(tmp_path / "cdnreq.toml", site, database=tmp_path / "state" / "cdnreq.db",
                        master={"timeout_s": 1.0}, **sections)


async def old_history(db: Path) -> None:
    """Two instances, a poll a day each and a tick a day for 40 days, to half a day ago."""
    now = time.time()
    async with await Store.open(db) as store:
        await store.commit(upserts=[rec("a"), rec("b")])
        await store.commit(events=[
            Event(g, "poll", "ok", now - (d - 0.5) * DAY_S) for d in range(40, 0, -1) for g in ("a", "b")
        ])
        await add_ticks(store, [now - (d - 0.5) * DAY_S for d in range(40, 0, -1)])


async def test_the_daemon_prunes_in_the_background_and_counts_it(tmp_path: Path):
    path = offline_config(tmp_path, daemon={"tick_interval_s": 30.0}, store={"events_retention_days": 30})
    db = tmp_path / "state" / "cdnreq.db"
    await old_history(db)
    daemon = Daemon(path, load_config(path))
    running = asyncio.create_task(daemon.run())

    def pruned(table: str) -> float | None:
        return daemon.metrics.registry.get_sample_value("cdnreq_store_pruned_rows_total", {"table": table})

    try:
        deadline = time.monotonic() + 60
        while not pruned("events") and not running.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not running.done(), running.result()
        # 2 x 10 polls older than 30 days (the newest poll of each is recent); 10 ticks of 40
        assert pruned("events") == 20
        deadline = time.monotonic() + 30
        while pruned("ticks") != 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert pruned("ticks") == 10
        size = daemon.metrics.registry.get_sample_value("cdnreq_store_size_bytes")
        assert size is not None and size > 0
    finally:
        daemon.stop.set()
        assert await asyncio.wait_for(running, 60) is not None
    assert rows(db, "SELECT COUNT(*) FROM events") == [(60,)]


async def test_once_prunes_after_its_tick(tmp_path: Path):
    path = offline_config(tmp_path, store={"events_retention_days": 7})
    db = tmp_path / "state" / "cdnreq.db"
    await old_history(db)
    report = await run_once(load_config(path))
    assert not report.ok  # no master: the tick failed, the history is pruned all the same
    assert rows(db, "SELECT COUNT(*) FROM events WHERE at < ?", (time.time() - 7 * DAY_S,)) == [(0,)]
    assert rows(db, "SELECT COUNT(*) FROM events") == [(2 * 7,)]


async def test_once_prunes_at_most_one_pass_an_interval(tmp_path: Path):
    """`cdnreq once` from a minute timer: the second run within the hour
    re-reads no history; a run an interval later passes again."""
    from cdnreq.store.prune import PRUNED, prune_if_due

    path = offline_config(tmp_path, store={"events_retention_days": 7})
    db = tmp_path / "state" / "cdnreq.db"
    await old_history(db)
    await run_once(load_config(path))
    assert rows(db, "SELECT COUNT(*) FROM events") == [(2 * 7,)]
    async with await Store.open(db) as store:
        last = (await store.load_guards())[PRUNED]
        assert time.time() - 60 < last <= time.time()
        assert await prune_if_due(store, 7, time.time()) is None  # within the hour: not run
        assert (await store.load_guards())[PRUNED] == last
        report = await prune_if_due(store, 7, last + 3600)  # an interval later: runs
        assert report is not None and report.steps > 0
        assert (await store.load_guards())[PRUNED] > last

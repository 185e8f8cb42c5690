"""A tick stopped mid-way is recorded as `interrupted`, never as ok.

Three ways a tick is cut short: the daemon is told to stop while work is
left (no further action starts, DNS stages left undecided), the tick is
cancelled at the shutdown timeout, or the process is killed (the tick is
found unfinished and marked at the next start). In-process ticks use the
real store with the master and DNS doubles of tests/test_tick_stages.py;
the kill is a real `cdnreq run` killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cdnreq.config import Config
from cdnreq.service.opening import KILLED_MID_TICK, open_checked
from cdnreq.model import InstanceAnswer
from cdnreq.store import Store
from test_service import black_hole, cdnreq, config_for, offline_site, spawn, wait_for  # noqa: F401  (fixtures)
from test_tick_stages import L, Dns, Master, config, customer, opened, reconciler, title  # noqa: F401


def one_at_a_time(cfg: Config) -> Config:
    return cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"concurrency": 1})})


class StopAfter(Master):
    """Sets `stop` while its n-th request is in flight."""

    def __init__(self, store: Store, instances: Any, stop: asyncio.Event, n: int):
        super().__init__(store, instances)
        self.stop, self.n = stop, n

    async def request_instance(self, **kwargs: Any) -> InstanceAnswer:
        if len(self.requests) + 1 == self.n:
            self.stop.set()
        return await super().request_instance(**kwargs)


class Hangs(Master):
    async def request_instance(self, **kwargs: Any) -> InstanceAnswer:
        self.requested.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def ticks_table(database: Path) -> list[tuple[int, str | None, dict | None]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT id, result, summary FROM ticks ORDER BY id").fetchall()
    db.close()
    return [(i, r, json.loads(s) if s else None) for i, r, s in rows]


async def with_master(r, master_type, *args: Any):
    master = master_type(r.store, r.master.instances, *args)
    r.master = master
    return master


async def test_stop_with_actions_left_is_interrupted(tmp_path: Path, opened: list[Store]) -> None:
    cfg = one_at_a_time(config(tmp_path))
    instances = [customer(f"C{i}") for i in range(5)]
    r, _ = await reconciler(opened, cfg, instances, Dns({}))
    stop = asyncio.Event()
    master = await with_master(r, StopAfter, stop, 2)
    with capture_logs() as logged:
        report = await r.tick(stop)
    assert not report.ok and report.interrupted
    assert report.error.startswith("interrupted: the daemon stopped during this tick"), report.error
    assert len(master.titles()) == 2  # the one in flight when stop came finished; no other started
    assert report.results == {"request:ok": 2}
    ((tick, result, summary),) = ticks_table(cfg.daemon.database)
    assert (tick, result) == (report.id, "interrupted") and summary["interrupted"] is True
    (line,) = [e for e in logged if e["event"] == "tick interrupted"]
    assert line["log_level"] == "warning" and line["results"] == {"request:ok": 2}
    assert not [e for e in logged if e["event"] in ("tick done", "tick failed")]


async def test_stop_once_every_action_started_is_ok(tmp_path: Path, opened: list[Store]) -> None:
    cfg = one_at_a_time(config(tmp_path))
    instances = [customer(f"C{i}") for i in range(3)]
    r, _ = await reconciler(opened, cfg, instances, Dns({}))
    stop = asyncio.Event()
    master = await with_master(r, StopAfter, stop, 3)
    with capture_logs() as logged:
        report = await r.tick(stop)
    assert stop.is_set() and len(master.titles()) == 3
    assert report.ok and not report.interrupted, report.error
    assert [result for _, result, _ in ticks_table(cfg.daemon.database)] == ["ok"]
    assert [e["event"] for e in logged if e["event"].startswith("tick ")] == ["tick done"]


async def test_stop_while_dns_decides_is_interrupted(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({}, hold={f"{L}.www.b.example"})
    r, master = await reconciler(opened, config(tmp_path), [customer("PLAIN"), customer("B", "www.b.example")],
                                 dns, proven={"B"})
    stop = asyncio.Event()
    tick = asyncio.create_task(r.tick(stop))
    await asyncio.wait_for(master.requested.wait(), 10)
    wait = 0
    while f"{L}.www.b.example" not in dns.asked and wait < 500:  # B's proof is being resolved
        await asyncio.sleep(0.01)
        wait += 1
    stop.set()
    report = await asyncio.wait_for(tick, 10)  # B's lookup is never released
    assert report.interrupted and not report.ok
    assert master.titles() == [title("PLAIN")]
    assert [result for _, result, _ in ticks_table(r.store._path)] == ["interrupted"]


async def test_cancelled_at_the_shutdown_timeout_is_interrupted(tmp_path: Path, opened: list[Store]) -> None:
    r, _ = await reconciler(opened, config(tmp_path), [customer("A")], Dns({}))
    master = await with_master(r, Hangs)
    with capture_logs() as logged:
        tick = asyncio.create_task(r.tick(asyncio.Event()))
        await asyncio.wait_for(master.requested.wait(), 10)
        tick.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick
    ((_, result, summary),) = ticks_table(r.store._path)
    assert result == "interrupted" and summary["interrupted"] is True
    assert "shutdown timeout" in summary["error"]
    (line,) = [e for e in logged if e["event"] == "tick interrupted"]
    assert line["log_level"] == "warning" and isinstance(line["tick"], int)


async def test_a_tick_left_open_is_marked_at_the_next_start(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = await Store.open(cfg.daemon.database)
    first = await store.begin_tick(1.0)
    await store.end_tick(first, finished_at=2.0, result="ok", summary={"ok": True})
    open_tick = await store.begin_tick(3.0)  # and then the process dies
    await store.close()
    with capture_logs() as logged:
        store = await open_checked(cfg)
    try:
        assert await store.end_unfinished_ticks(10.0, "again") == []  # nothing left open
    finally:
        await store.close()
    rows = ticks_table(cfg.daemon.database)
    assert rows[0] == (first, "ok", {"ok": True})
    assert rows[1] == (open_tick, "interrupted", {"ok": False, "interrupted": True, "error": KILLED_MID_TICK})
    (line,) = [e for e in logged if e["event"] == "tick interrupted"]
    assert line["tick"] == open_tick and line["log_level"] == "warning"


@pytest.mark.slapproxy
def test_a_killed_daemon_s_tick_is_interrupted_after_restart(black_hole: str, tmp_path: Path, spawn) -> None:
    site = offline_site(tmp_path, black_hole)  # every call hangs: the first tick never ends
    config_file = config_for(site, tmp_path, master={"timeout_s": 60.0})
    daemon = spawn(config_file)
    daemon.wait_started()
    wait_for(lambda: (r := daemon.try_get("/status")) is not None and r.json()["progress"]["running"],
             "the first tick to be running", daemon=daemon)
    daemon.signal(signal.SIGKILL)
    daemon.process.wait(timeout=20)
    ((tick, result, _),) = ticks_table(daemon.database)
    assert result is None  # left open by the killed process
    shown = cdnreq("status", "--config", config_file)
    assert shown.returncode == 1 and f"last tick {tick}: INTERRUPTED" in shown.stdout, shown

    dead = config_for(offline_site(tmp_path), tmp_path, name="dead.toml")  # same database, a refused port
    once = cdnreq("once", "--config", dead)
    assert once.returncode == 1, once.stderr  # its own tick fails: no master
    marked = [json.loads(line) for line in once.stderr.splitlines() if "tick interrupted" in line]
    assert [(m["tick"], m["level"]) for m in marked] == [(tick, "warning")], once.stderr
    rows = ticks_table(daemon.database)
    assert rows[0][:2] == (tick, "interrupted") and rows[0][2]["error"] == KILLED_MID_TICK
    assert rows[1][1] == "failed"

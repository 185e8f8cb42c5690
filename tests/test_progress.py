"""Progress: phases in order, ETA from the current phase's rate, snapshot shape."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from cdnreq.progress import PHASES, Progress

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
T0_ISO = "2023-11-14T22:13:20Z"


def test_before_any_tick() -> None:
    snap = Progress().snapshot(T0)
    assert snap == {
        "running": False,
        "tick": None,
        "started_at": None,
        "phase": None,
        "phases": [],
        "elapsed_s": None,
        "eta_s": None,
        "last": None,
    }
    json.dumps(snap)


def test_phases_in_order_with_times() -> None:
    p = Progress()
    p.start_tick(7, T0)
    now = T0
    for i, name in enumerate(PHASES):
        p.phase(name, 10 + i, now)
        p.advance(3)
        now += 2.0
    snap = p.snapshot(now)
    assert snap["running"] is True
    assert snap["tick"] == 7
    assert snap["started_at"] == T0_ISO
    assert snap["phase"] == "committing"
    assert [ph["name"] for ph in snap["phases"]] == list(PHASES)
    assert [ph["total"] for ph in snap["phases"]] == [10, 11, 12, 13, 14, 15]
    assert all(ph["done"] == 3 for ph in snap["phases"])
    # each phase ends when the next one starts; the current one is open
    assert snap["phases"][0] == {
        "name": "listing",
        "done": 3,
        "total": 10,
        "started_at": T0_ISO,
        "finished_at": "2023-11-14T22:13:22Z",
    }
    assert all(ph["finished_at"] is not None for ph in snap["phases"][:-1])
    assert snap["phases"][-1]["finished_at"] is None
    assert snap["elapsed_s"] == 12.0
    assert snap["last"] is None


def test_advance_counts_only_the_current_phase() -> None:
    p = Progress()
    p.start_tick(1, T0)
    p.advance(5)  # before any phase: harmless, not shown
    p.phase("listing", None, T0)
    p.advance()
    p.advance()
    p.phase("validating", 100, T0 + 1)
    p.advance(40)
    snap = p.snapshot(T0 + 2)
    assert [(ph["name"], ph["done"], ph["total"]) for ph in snap["phases"]] == [
        ("listing", 2, None),
        ("validating", 40, 100),
    ]


def test_eta_from_the_current_phase_rate() -> None:
    p = Progress()
    p.start_tick(1, T0)
    p.phase("listing", 5, T0)
    p.advance(5)
    p.phase("executing", 1000, T0 + 100.0)  # a slow earlier phase does not count
    assert p.snapshot(T0 + 100.0)["eta_s"] is None  # nothing done yet: unknown
    p.advance(250)
    snap = p.snapshot(T0 + 110.0)  # 250 in 10 s -> 25/s, 750 left -> 30 s
    assert snap["eta_s"] == pytest.approx(30.0)
    assert snap["elapsed_s"] == pytest.approx(110.0)
    p.advance(750)
    assert p.snapshot(T0 + 120.0)["eta_s"] == 0.0


def test_eta_unknown_without_total_or_time() -> None:
    p = Progress()
    p.start_tick(1, T0)
    p.phase("listing", None, T0)
    p.advance(10)
    assert p.snapshot(T0 + 5)["eta_s"] is None
    p.phase("validating", 10, T0 + 5)
    p.advance(3)
    assert p.snapshot(T0 + 5)["eta_s"] is None  # no time elapsed: no rate


def test_finish_tick_records_last_and_keeps_phases() -> None:
    p = Progress()
    p.start_tick(3, T0)
    p.phase("listing", 2, T0)
    p.advance(2)
    p.phase("committing", None, T0 + 4)
    p.finish_tick(True, {"requested": 2, "failed": 0}, T0 + 4.5)
    snap = p.snapshot(T0 + 60)
    assert snap["running"] is False
    assert snap["eta_s"] is None
    assert snap["elapsed_s"] == 4.5  # the tick's duration, not time since
    assert snap["phases"][-1]["finished_at"] == "2023-11-14T22:13:24Z"  # whole seconds
    assert snap["last"] == {
        "tick": 3,
        "ok": True,
        "finished_at": "2023-11-14T22:13:24Z",
        "duration_s": 4.5,
        "summary": {"requested": 2, "failed": 0},
    }
    json.dumps(snap)


def test_next_tick_starts_fresh_and_keeps_last() -> None:
    p = Progress()
    p.start_tick(1, T0)
    p.phase("listing", 1, T0)
    summary = {"error": "master unreachable"}
    p.finish_tick(False, summary, T0 + 1)
    summary["error"] = "mutated later"  # the snapshot keeps its own copy
    p.start_tick(2, T0 + 60)
    snap = p.snapshot(T0 + 61)
    assert snap["running"] is True
    assert snap["tick"] == 2
    assert snap["phase"] is None
    assert snap["phases"] == []
    assert snap["elapsed_s"] == 1.0
    assert snap["last"]["tick"] == 1
    assert snap["last"]["ok"] is False
    assert snap["last"]["summary"] == {"error": "master unreachable"}


def test_times_are_utc_iso_seconds() -> None:
    p = Progress()
    p.start_tick(1, T0 + 0.75)
    started = p.snapshot(T0 + 1)["started_at"]
    assert started == T0_ISO
    assert datetime.fromisoformat(started).utcoffset().total_seconds() == 0


def test_advance_is_cheap() -> None:
    import timeit

    p = Progress()
    p.start_tick(1, T0)
    p.phase("executing", 100_000, T0)
    seconds = timeit.timeit(p.advance, number=100_000)
    assert p.snapshot(T0 + 1)["phases"][0]["done"] == 100_000
    assert seconds < 0.5  # typically ~10 ms

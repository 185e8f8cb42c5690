"""``python -m bench.history``: a store after months of read-backs, pruned.

Issue 11, item 5: at 100,000 instances the events and ticks tables grow by
about 100,000 rows a day and every backup copies them. This builds the store a
schema-3 cdnreq leaves after `--days` days at `--size` instances (a tick a
minute, every entry read back once a day: one "poll" event per instance per
day, and the first day's request, poll, publication and host claim), then
opens it with this cdnreq and reports:

* the migration to schema 4 (the index swap) and the one-time VACUUM that
  switches the file to incremental auto-vacuum;
* the database's size and an online backup's time and size, before and after
  pruning past `--retention` days;
* the pass itself: its duration, its steps (each one short transaction) and
  the longest one, which is how long a tick's commit may wait;
* the next day's pass, one day of history later.

Not part of the test suite; the figures go to stdout and, with --out, JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import aiosqlite

from cdnreq.store import Store
from cdnreq.store.migrations import MIGRATIONS, incremental_auto_vacuum, migrate, split_statements
from cdnreq.store.prune import PruneReport, prune
from cdnreq.store.retention import DAY_S, Retention

TICK_S = 60.0
MB = 1e6


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _instance_row(i: int, at: float) -> tuple[Any, ...]:
    guid, host = f"SOFTINST-{i}", f"www.d{i}.example"
    connection = json.dumps({"domain": host, "url": f"https://{host}", "secure_access": f"https://{host}"})
    published = json.dumps({"domain": host, "url": f"https://{host}", "secure_access": f"https://{host}",
                            "cdn-status": "ok"}, sort_keys=True)
    return (guid, f"cdnreq-{guid}", "live", f"{i:064x}", "started", "5" * 64, f"SOFTINST-T{i}", connection,
            published, None, "publish", None, 0, None, at, at, json.dumps([host]), None)


def _first_events(i: int, at: float, tick: int) -> list[tuple[Any, ...]]:
    guid = f"SOFTINST-{i}"
    rows = [(at, tick, guid, "request", "ok", f"new instance; technical entry SOFTINST-T{i}"),
            (at, tick, guid, "poll", "ok", "answer received"),
            (at, tick, guid, "publish", "ok", "connection parameters")]
    if i % 10 != 9:
        rows.append((at, tick, guid, "claim", "ok", f"www.d{i}.example"))
    return rows


def _ticks(first_id: int, start: float, count: int, readback: int) -> Iterator[tuple[Any, ...]]:
    for n in range(count):
        began = start + n * TICK_S
        planned = {"poll": readback} if n == 0 and readback else {}
        summary = {"ok": True, "duration_s": 1.234, "planned": planned,
                   "results": {"poll": readback} if planned else {},
                   "master_calls": {"slapos.allDocs.v0.instance_node_instance_list": 1}}
        yield (first_id + n, began, began + 1.2, "ok", json.dumps(summary, sort_keys=True))


def build_v3(db: Path, size: int, days: int, now: float) -> None:
    """The store a schema-3 cdnreq leaves after `days` days (no auto-vacuum)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for number, description, sql in MIGRATIONS[:3]:
        for statement in split_statements(sql):
            conn.execute(statement)
        conn.execute("INSERT INTO migrations VALUES (?, ?, ?)", (number, description, now - days * DAY_S))
    conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 3)")
    start = now - days * DAY_S
    conn.executemany(f"INSERT INTO instances VALUES ({', '.join('?' * 18)})",
                     (_instance_row(i, start) for i in range(size)))
    conn.executemany("INSERT INTO hosts VALUES (?, ?, ?, ?, ?, NULL)",
                     ((f"www.d{i}.example", f"SOFTINST-{i}", f"d{i}.example", start, now)
                      for i in range(size) if i % 10 != 9))
    conn.executemany("INSERT INTO challenges VALUES (?, ?, ?, ?, ?)",
                     ((f"SOFTINST-{i}", f"www.d{i}.example", "s" * 22, "t" * 43, start) for i in range(size)))
    conn.execute("COMMIT")
    for day in range(days):
        add_day(conn, size, start + day * DAY_S, first=day == 0)
        if day % 10 == 9:
            _say(f"  built day {day + 1}/{days}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def add_day(conn: sqlite3.Connection, size: int, start: float, *, first: bool = False) -> None:
    """One day: a tick a minute; the first of the day reads every entry back."""
    per_day = int(DAY_S / TICK_S)
    tick = (conn.execute("SELECT COALESCE(MAX(id), 0) FROM ticks").fetchone()[0]) + 1
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ticks (id, started_at, finished_at, result, summary) VALUES (?, ?, ?, ?, ?)",
                     _ticks(tick, start, per_day, size))
    if first:
        events = (row for i in range(size) for row in _first_events(i, start + 1.0, tick))
    else:
        events = ((start + 1.0, tick, f"SOFTINST-{i}", "poll", "ok", "answer received") for i in range(size))
    conn.executemany("INSERT INTO events (at, tick, instance_guid, action, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
                     events)
    conn.execute("COMMIT")


def _size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def _rows(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


async def migrate_timed(db: Path) -> dict[str, float]:
    """Schema 3 to 4 and the switch to incremental auto-vacuum, each timed
    (what the daemon's first start after the upgrade does in Store.open)."""
    conn = await aiosqlite.connect(db, isolation_level=None)
    try:
        await conn.execute("PRAGMA journal_mode = WAL")
        began = time.monotonic()
        await migrate(conn, str(db))
        migrated = time.monotonic() - began
        vacuum = await incremental_auto_vacuum(conn, str(db))
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await conn.close()
    return {"migration_s": round(migrated, 2), "vacuum_s": round(vacuum or 0.0, 2)}


async def backup_timed(store: Store, directory: Path, now: float) -> dict[str, float]:
    began = time.monotonic()
    path = await store.backup(directory, now=now)
    took = time.monotonic() - began
    size = path.stat().st_size
    path.unlink()
    return {"backup_s": round(took, 2), "backup_mb": round(size / MB, 1)}


def _pass(report: PruneReport) -> dict[str, Any]:
    return {**report.summary(), "with_wal_mb": round(report.size_bytes / MB, 1)}


async def measure(db: Path, size: int, days: int, retention: int, now: float) -> dict[str, Any]:
    results: dict[str, Any] = {"size": size, "days": days, "retention_days": retention,
                               "events": _rows(db, "events"), "ticks": _rows(db, "ticks"),
                               "schema_3_mb": round(_size(db) / MB, 1)}
    _say(f"schema 3: {results['schema_3_mb']} MB, {results['events']} events, {results['ticks']} ticks; migrating")
    results.update(await migrate_timed(db))
    results["migrated_mb"] = round(_size(db) / MB, 1)
    _say(f"migrated in {results['migration_s']} s, VACUUM {results['vacuum_s']} s; backup, prune, backup")
    async with await Store.open(db) as store:
        results["before"] = await backup_timed(store, db.parent / "backups", now)
        report = await prune(store, Retention(retention), now=now)
        results["prune"] = _pass(report)
        await store.in_turn(lambda conn: conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
        results["pruned_mb"] = round(_size(db) / MB, 1)
        results["after"] = await backup_timed(store, db.parent / "backups", now)
    _say(f"pruned: {results['prune']}; next day")
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        add_day(conn, size, now)
    finally:
        conn.close()
    async with await Store.open(db) as store:
        results["next_day"] = _pass(await prune(store, Retention(retention), now=now + DAY_S))
        await store.in_turn(lambda conn: conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
        results["next_day_mb"] = round(_size(db) / MB, 1)
    results["events_left"], results["ticks_left"] = _rows(db, "events"), _rows(db, "ticks")
    return results


def _longest(p: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {p[f'longest_{k}_ms']}" for k in ("delete", "vacuum", "checkpoint")
                      if f"longest_{k}_ms" in p)
    return f"longest {p['longest_step_ms']} ms ({kinds})"


def text(r: dict[str, Any]) -> str:
    p, n = r["prune"], r["next_day"]
    return "\n".join([
        f"{r['size']} instances, {r['days']} days of daily read-backs ({r['events']} events, {r['ticks']} ticks),"
        f" retention {r['retention_days']} days",
        f"  schema 3 database         {r['schema_3_mb']:>8} MB",
        f"  migration to 4            {r['migration_s']:>8} s (index swap), VACUUM {r['vacuum_s']} s;"
        f" {r['migrated_mb']} MB",
        f"  backup before pruning     {r['before']['backup_s']:>8} s, {r['before']['backup_mb']} MB",
        f"  prune                     {p['duration_s']:>8} s, {p['steps']} steps ({p['vacuum_steps']} vacuum),"
        f" {_longest(p)}; {p['events_deleted']} events, {p['ticks_deleted']} ticks deleted",
        f"  database after pruning    {r['pruned_mb']:>8} MB",
        f"  backup after pruning      {r['after']['backup_s']:>8} s, {r['after']['backup_mb']} MB",
        f"  next day's pass           {n['duration_s']:>8} s, {n['steps']} steps ({n['vacuum_steps']} vacuum),"
        f" {_longest(n)}; {n['events_deleted']} events, {n['ticks_deleted']} ticks deleted;"
        f" {r['next_day_mb']} MB",
        f"  left: {r['events_left']} events, {r['ticks_left']} ticks",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="instances (default 100000)")
    parser.add_argument("--days", type=int, default=60, help="days of history built (default 60)")
    parser.add_argument("--retention", type=int, default=30, help="[store].events_retention_days (default 30)")
    parser.add_argument("--workdir", type=Path, help="build the database here and keep it (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    os.umask(0o077)  # as the service's files are
    if args.size < 1 or args.days < 1 or args.retention < 1:
        parser.error("--size, --days and --retention must be at least 1")
    with tempfile.TemporaryDirectory(prefix="cdnreq-bench-history-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        db = workdir / "cdnreq.db"
        if db.exists():
            parser.error(f"--workdir: {db} exists already; give an empty directory")
        now = time.time()
        began = time.monotonic()
        _say(f"building {args.size} instances x {args.days} days in {db}")
        build_v3(db, args.size, args.days, now)
        _say(f"built in {time.monotonic() - began:.0f} s")
        results = asyncio.run(measure(db, args.size, args.days, args.retention, now))
    print(text(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pruning the store's history (events, ticks) past the retention, off the tick's path.

Everything runs as small steps on the store's connection (`Store.in_turn`),
each its own short transaction: a tick's commit waits for one step at most
(tens of milliseconds), never for the whole pass. What is kept is
cdnreq.store.retention's rule. After the deletes, the freed pages go back to
the file system a few at a time (`PRAGMA incremental_vacuum`; the file is in
auto_vacuum=INCREMENTAL since schema version 4) and a passive checkpoint
lets the write-ahead log be reused (it is cut back to
`opening.JOURNAL_SIZE_LIMIT`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol, TypeVar

import aiosqlite
import structlog

from cdnreq.aiotasks import sleep_or_stop
from cdnreq.store.errors import StoreError
from cdnreq.store.retention import BATCH_ROWS, KEEP_TICKS, PASS_INTERVAL_S, VACUUM_PAGES, Retention

if TYPE_CHECKING:
    from cdnreq.metrics import Metrics

_T = TypeVar("_T")


class Store(Protocol):
    """What a pass needs of the SQLite engine (cdnreq.store.sqlite.Store)."""

    async def in_turn(self, work: Callable[[aiosqlite.Connection], Awaitable[_T]]) -> _T: ...

    def size_bytes(self) -> int: ...

    async def load_guards(self) -> dict[str, Any]: ...

    async def save_guards(self, values: Mapping[str, Any], now: float) -> None: ...

log = structlog.get_logger("cdnreq.store")

# An event may go unless it is its stored instance's newest of its action
# (one seek in the events_instance_action index).
_EVENTS_DELETABLE = (
    "(NOT EXISTS (SELECT 1 FROM instances WHERE guid = events.instance_guid)"
    " OR EXISTS (SELECT 1 FROM events AS newer WHERE newer.instance_guid = events.instance_guid"
    " AND newer.action = events.action AND newer.id > events.id))"
)
_TICKS_DELETABLE = f"id < (SELECT MIN(id) FROM (SELECT id FROM ticks ORDER BY id DESC LIMIT {KEEP_TICKS}) AS kept)"
_TABLES = (("events", "at", _EVENTS_DELETABLE), ("ticks", "started_at", _TICKS_DELETABLE),
           ("changes", "at", "1 = 1"))  # the feed keeps its retention; a consumer behind it resynchronises


@dataclass
class PruneReport:
    """What one pass did."""

    deleted: dict[str, int] = field(default_factory=lambda: {table: 0 for table, _, _ in _TABLES})
    steps: int = 0
    vacuum_steps: int = 0
    longest_step_s: float = 0.0
    longest_s: dict[str, float] = field(default_factory=dict)  # by kind: delete, vacuum, checkpoint
    duration_s: float = 0.0
    size_bytes: int = 0
    stopped: bool = False  # the daemon stopped it between two steps

    def summary(self) -> dict[str, object]:
        return {
            **{f"{table}_deleted": n for table, n in self.deleted.items()},
            "steps": self.steps,
            "vacuum_steps": self.vacuum_steps,
            "longest_step_ms": round(self.longest_step_s * 1000, 1),
            **{f"longest_{kind}_ms": round(s * 1000, 1) for kind, s in self.longest_s.items()},
            "duration_s": round(self.duration_s, 3),
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class _Window:
    deleted: int
    cursor: int
    finished: bool


def _delete_step(
    table: str, time_column: str, deletable: str, cursor: int, cutoff: float, batch: int
) -> Callable[[aiosqlite.Connection], Awaitable[_Window]]:
    """One transaction: the next `batch` rows after `cursor` (by id, so by
    time), up to the first one young enough to keep; those that may go, go."""

    async def step(conn: aiosqlite.Connection) -> _Window:
        await conn.execute("BEGIN IMMEDIATE")
        rows = await conn.execute_fetchall(
            f"SELECT id, {time_column} FROM {table} WHERE id > ? ORDER BY id LIMIT ?", (cursor, batch)
        )
        old = 0
        while old < len(rows) and rows[old][1] < cutoff:
            old += 1
        deleted, end = 0, cursor
        if old:
            end = rows[old - 1][0]
            async with conn.execute(
                f"DELETE FROM {table} WHERE id > ? AND id <= ? AND {time_column} < ? AND {deletable}",
                (cursor, end, cutoff),
            ) as cur:
                deleted = max(0, cur.rowcount)
        await conn.execute("COMMIT")
        return _Window(deleted, end, old < len(rows) or len(rows) < batch)

    return step


async def _vacuum_step(conn: aiosqlite.Connection) -> int:
    """Give up to VACUUM_PAGES free pages back; return how many are left.
    (executescript steps the pragma to its end; execute would free one page.)"""
    await conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
    rows = await conn.execute_fetchall("PRAGMA freelist_count")
    return int(rows[0][0])


async def _free_pages(conn: aiosqlite.Connection) -> int:
    return int((await conn.execute_fetchall("PRAGMA freelist_count"))[0][0])


async def _checkpoint(conn: aiosqlite.Connection) -> None:
    await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")


class _Steps:
    """Runs steps in the store's turn, timing each, until told to stop."""

    def __init__(self, store: Store, report: PruneReport, stop: asyncio.Event | None):
        self.store, self.report, self.stop = store, report, stop

    @property
    def stopping(self) -> bool:
        self.report.stopped = self.stop is not None and self.stop.is_set()
        return self.report.stopped

    async def run(self, kind: str, work: Callable[[aiosqlite.Connection], Awaitable]):
        began = time.monotonic()
        result = await self.store.in_turn(work)
        took = time.monotonic() - began
        self.report.steps += 1
        self.report.longest_step_s = max(self.report.longest_step_s, took)
        self.report.longest_s[kind] = max(self.report.longest_s.get(kind, 0.0), took)
        return result


async def prune(
    store: Store,
    retention: Retention,
    *,
    now: float | None = None,
    stop: asyncio.Event | None = None,
    batch: int = BATCH_ROWS,
) -> PruneReport:
    """One pass: delete what the retention lets go, in `batch`-row steps, then
    vacuum incrementally and checkpoint. Stops between two steps once `stop`
    is set. Raises StoreError (what was done by then stays done)."""
    began = time.monotonic()
    report = PruneReport()
    steps = _Steps(store, report, stop)
    cutoff = retention.cutoff(time.time() if now is None else now)
    if cutoff is not None:
        for table, time_column, deletable in _TABLES:
            cursor, finished = 0, False
            while not finished and not steps.stopping:
                window = await steps.run("delete", _delete_step(table, time_column, deletable, cursor, cutoff, batch))
                report.deleted[table] += window.deleted
                cursor, finished = window.cursor, window.finished
        if not steps.stopping:
            await _vacuum(steps)
    report.duration_s = time.monotonic() - began
    report.size_bytes = store.size_bytes()
    return report


async def _vacuum(steps: _Steps) -> None:
    free = await steps.run("vacuum", _free_pages)
    budget = free // VACUUM_PAGES + 2  # never loops for ever, whatever SQLite answers
    while free > 0 and budget > 0 and not steps.stopping:
        free = await steps.run("vacuum", _vacuum_step)
        steps.report.vacuum_steps += 1
        budget -= 1
    if not steps.stopping:
        await steps.run("checkpoint", _checkpoint)


def record(metrics: Metrics | None, report: PruneReport) -> None:
    """Rows removed into cdnreq_store_pruned_rows, the size into cdnreq_store_size_bytes."""
    if metrics is None:
        return
    for table, rows in report.deleted.items():
        metrics.pruned(table, rows)
    metrics.store_size.set(report.size_bytes)


async def prune_logged(
    store: Any, days: int, *, metrics: Metrics | None = None, stop: asyncio.Event | None = None,
    run: Callable[..., Awaitable[PruneReport]] | None = None,
) -> PruneReport | None:
    """A pass as the daemon and `cdnreq once` run it: logged, recorded in the
    metrics; a failure is logged and returns None (the next pass tries again).
    `run`: the engine's pass (default: SQLite's, `prune`)."""
    try:
        report = await (run or prune)(store, Retention(days), stop=stop)
    except StoreError as error:
        log.error("pruning the history failed", retention_days=days, error=str(error))
        return None
    record(metrics, report)
    if sum(report.deleted.values()) or report.vacuum_steps:
        log.info("history pruned", retention_days=days, **report.summary())
    return report


PRUNED = "pruned"  # guards row: when the last pass ended


async def prune_if_due(
    store: Any, days: int, now: float, *, metrics: Metrics | None = None,
    stop: asyncio.Event | None = None, interval_s: float = PASS_INTERVAL_S,
    run: Callable[..., Awaitable[PruneReport]] | None = None,
) -> PruneReport | None:
    """A pass, unless one ended less than `interval_s` ago: `cdnreq once`
    run every minute by a timer, or a daemon restarted in a loop, would
    otherwise re-read the history each time (seconds at 100,000 instances)
    for nothing; a pass an interval keeps it as bounded."""
    last = (await store.load_guards()).get(PRUNED)
    if isinstance(last, (int, float)) and 0 <= now - last < interval_s:
        return None
    report = await prune_logged(store, days, metrics=metrics, stop=stop, run=run)
    if report is not None:
        try:
            await store.save_guards({PRUNED: time.time()}, time.time())
        except StoreError as error:  # the next run passes again: nothing lost
            log.error("could not record the pruning pass", error=str(error))
    return report


async def prune_passes(
    store: Store, days: Callable[[], int], stop: asyncio.Event, *, metrics: Metrics | None = None,
    interval_s: float = PASS_INTERVAL_S,
) -> None:
    """The daemon's background task: a pass now, then every `interval_s`,
    until `stop` is set. `days` is read at each pass (a reload may change it)."""
    while not stop.is_set():
        try:
            # a pass that ended within half an interval (a restart) is not run again
            await prune_if_due(store, days(), time.time(), metrics=metrics, stop=stop, interval_s=interval_s / 2)
        except Exception as error:  # a failed pass is an error to see, never a reason to stop
            log.error("pruning the history failed", error=f"{type(error).__name__}: {error}")
        await sleep_or_stop(stop, interval_s)

"""Pruning the history on PostgreSQL: cdnreq.store.retention's rule, in
small fenced transactions (a tick's commit waits for one step at most).
What SQLite does by hand after the deletes (vacuum, checkpoint) is
autovacuum's job here.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

import structlog

from cdnreq.aiotasks import sleep_or_stop
from cdnreq.store.prune import _TABLES, PruneReport
from cdnreq.store.prune import prune_if_due as shared_prune_if_due
from cdnreq.store.retention import BATCH_ROWS, PASS_INTERVAL_S, Retention

if TYPE_CHECKING:
    from cdnreq.decide.leadership import Term
    from cdnreq.metrics import Metrics

log = structlog.get_logger("cdnreq.store")


class PgStore(Protocol):
    """What a pass needs of the PostgreSQL engine (cdnreq.store.postgres.PgStore)."""

    @property
    def term(self) -> Term | None: ...

    async def _write_turn(self, work: Callable[[Any], Awaitable[Any]]) -> Any: ...

    async def load_guards(self) -> dict[str, Any]: ...

    async def save_guards(self, values: Mapping[str, Any], now: float) -> None: ...


async def prune(store: PgStore, retention: Retention, *, now: float | None = None,
                stop: asyncio.Event | None = None, batch: int = BATCH_ROWS) -> PruneReport:
    """One pass, `batch` rows a transaction, until done or `stop`."""
    began = time.monotonic()
    report = PruneReport()
    cutoff = retention.cutoff(time.time() if now is None else now)
    if cutoff is not None:
        for table, column, deletable in _TABLES:
            while True:
                report.stopped = stop is not None and stop.is_set()
                if report.stopped:
                    break
                sql = (f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {column} < $1 "
                       f"AND {deletable} ORDER BY id LIMIT {int(batch)})")
                step = time.monotonic()
                status = await store._write_turn(lambda c, sql=sql: c.execute(sql, cutoff))
                took = time.monotonic() - step
                report.steps += 1
                report.longest_step_s = max(report.longest_step_s, took)
                report.longest_s["delete"] = max(report.longest_s.get("delete", 0.0), took)
                deleted = int(status.rsplit(" ", 1)[-1])
                report.deleted[table] += deleted
                if deleted < batch:
                    break
    report.duration_s = time.monotonic() - began
    return report


async def prune_if_due(store: PgStore, days: int, now: float, *, metrics: Metrics | None = None,
                       stop: asyncio.Event | None = None, interval_s: float = PASS_INTERVAL_S) -> PruneReport | None:
    """A pass unless one ended within `interval_s` (cdnreq.store.prune's rule, with this engine's pass)."""
    return await shared_prune_if_due(store, days, now, metrics=metrics, stop=stop, interval_s=interval_s, run=prune)


async def prune_passes(store: PgStore, days: Callable[[], int], stop: asyncio.Event, *,
                       metrics: Metrics | None = None, interval_s: float = PASS_INTERVAL_S) -> None:
    """The leader's background pruning, until `stop`."""
    while not stop.is_set():
        if store.term is not None:
            try:
                await prune_if_due(store, days(), time.time(), metrics=metrics, stop=stop, interval_s=interval_s / 2)
            except Exception as error:  # never a reason to stop
                log.error("pruning the history failed", error=f"{type(error).__name__}: {error}")
        await sleep_or_stop(stop, interval_s)

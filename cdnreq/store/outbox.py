"""The webhook outbox, on either engine: per consumer, a cursor in the change
feed and the deliveries taken from it that are not done.

Filling takes the changes after the cursor that are in the consumer's
scope into `deliveries` and moves the cursor, in one transaction, so a
change is queued once whatever a kill interrupts. A delivery is deleted
once the consumer took it; a failed one is rescheduled or dead-lettered
(cdnreq.decide.deliveries decides which). Writes go through the store's
commit: fenced by the lease on PostgreSQL, so only the leader delivers.
"""

from __future__ import annotations

from typing import Any, Iterable

from cdnreq.decide.deliveries import Delivery, Retry

# a consumer stops taking changes into its outbox while this many are in it
# (pending or dead): the feed itself is the backlog, bounded by its retention
MAX_QUEUED = 10_000

_CURSOR = "SELECT cursor FROM consumer_cursors WHERE consumer = ?"
_SET_CURSOR = ("INSERT INTO consumer_cursors (consumer, cursor) VALUES (?, ?) "
               "ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor")
_QUEUE = ("INSERT INTO deliveries (consumer, change_id, instance_guid, next_at) VALUES (?, ?, ?, ?) "
          "ON CONFLICT (consumer, change_id) DO NOTHING")
_QUEUED = "SELECT COUNT(*) FROM deliveries WHERE consumer = ?"
# the oldest undone delivery of each instance, when it is due: one at a time per instance
_DUE = (
    "SELECT d.change_id, d.instance_guid, d.attempts, d.first_at, c.at, c.kind, c.payload, c.name "
    "FROM deliveries d LEFT JOIN changes c ON c.id = d.change_id "
    "WHERE d.consumer = ? AND d.dead_at IS NULL AND d.next_at <= ? AND d.change_id = ("
    "SELECT MIN(e.change_id) FROM deliveries e WHERE e.consumer = d.consumer "
    "AND e.instance_guid = d.instance_guid AND e.dead_at IS NULL) "
    "ORDER BY d.change_id LIMIT ?"
)
_NEXT_DUE = "SELECT MIN(next_at) FROM deliveries WHERE consumer = ? AND dead_at IS NULL"
_DONE = "DELETE FROM deliveries WHERE consumer = ? AND change_id = ?"
_LOST = ("INSERT INTO deliveries (consumer, change_id, instance_guid, attempts, first_at, next_at, last_error, "
         "dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, change_id) DO NOTHING")
_FAILED = ("UPDATE deliveries SET attempts = ?, first_at = ?, next_at = ?, last_error = ?, dead_at = ? "
           "WHERE consumer = ? AND change_id = ?")
_REDELIVER = ("UPDATE deliveries SET dead_at = NULL, attempts = 0, first_at = NULL, next_at = ?, last_error = NULL "
              "WHERE consumer = ? AND dead_at IS NOT NULL")
_SUMMARY = (
    "SELECT consumer, SUM(CASE WHEN dead_at IS NULL THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN dead_at IS NULL THEN 0 ELSE 1 END), "
    "MIN(CASE WHEN dead_at IS NULL THEN COALESCE(first_at, next_at) END), MAX(last_error) "
    "FROM deliveries GROUP BY consumer"
)
_CURSORS = "SELECT consumer, cursor FROM consumer_cursors"


class Outbox:
    """One consumer's outbox in `store` (an engine: `_all` and `commit`)."""

    def __init__(self, store: Any, consumer: str):
        self.store = store
        self.consumer = consumer

    async def cursor(self) -> int | None:
        rows = await self.store._all(_CURSOR, (self.consumer,))
        return rows[0][0] if rows else None

    async def start_at(self, last_id: int) -> None:
        """A new consumer receives the changes written from now on (earlier ones: GET /changes)."""
        await self.store.commit(also=[(_SET_CURSOR, [(self.consumer, last_id)])])

    async def queued(self) -> int:
        return (await self.store._all(_QUEUED, (self.consumer,)))[0][0]

    async def fill(self, changes: Iterable[tuple[int, str]], cursor: int, now: float) -> None:
        """Queue (change id, instance guid) pairs and move the cursor, at once."""
        rows = [(self.consumer, change_id, guid, now) for change_id, guid in changes]
        steps = [(_QUEUE, rows)] if rows else []
        await self.store.commit(also=[*steps, (_SET_CURSOR, [(self.consumer, cursor)])])

    async def due(self, now: float, limit: int) -> list[Delivery]:
        return [Delivery(*row) for row in await self.store._all(_DUE, (self.consumer, now, limit))]

    async def next_due(self) -> float | None:
        return (await self.store._all(_NEXT_DUE, (self.consumer,)))[0][0]

    async def record(self, done: list[int], failed: list[tuple[int, Retry]], now: float) -> None:
        """A round's outcomes in one transaction: `done` leave, `failed` are rescheduled or dead."""
        failed_rows = [(r.attempts, r.first_at, r.next_at if r.next_at is not None else now, r.error[:1000],
                        now if r.next_at is None else None, self.consumer, change_id) for change_id, r in failed]
        steps = [(sql, rows) for sql, rows in ((_DONE, [(self.consumer, c) for c in done]), (_FAILED, failed_rows))
                 if rows]
        if steps:
            await self.store.commit(also=steps)

    async def lost(self, first: int, last: int, why: str, now: float) -> None:
        """Changes `first`..`last` pruned before they were queued: one dead
        letter that says so, and the cursor past them."""
        row = (self.consumer, first, "", 0, now, now, why[:1000], now)
        await self.store.commit(also=[(_LOST, [row]), (_SET_CURSOR, [(self.consumer, last)])])

    async def redeliver(self, now: float) -> None:
        """Dead-lettered deliveries are tried again, from now."""
        await self.store.commit(also=[(_REDELIVER, [(now, self.consumer)])])


async def summary(store: Any, now: float) -> dict[str, dict[str, Any]]:
    """Per consumer: pending, dead, oldest undelivered age (s), an error, its cursor."""
    found: dict[str, dict[str, Any]] = {}
    for consumer, pending, dead, oldest, error in await store._all(_SUMMARY):
        found[consumer] = {"pending": int(pending or 0), "dead": int(dead or 0), "last_error": error,
                           "oldest_undelivered_s": None if oldest is None else round(max(0.0, now - oldest), 1)}
    for consumer, cursor in await store._all(_CURSORS):
        found.setdefault(consumer, {"pending": 0, "dead": 0, "last_error": None, "oldest_undelivered_s": None})
        found[consumer]["cursor"] = cursor
    return found

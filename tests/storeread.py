"""Reads of the store that only tests need (the product has none for them,
issue 13): plain SQL run on the Store's own connection, between its other
statements, so they see exactly what its other reads see (a snapshot's
transaction, a read-only file, a -wal not yet checkpointed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cdnreq.model import Event, Phase
from cdnreq.store import Store
from cdnreq.store.rows import EVENT_COLUMNS


async def _rows(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    if not hasattr(store, "in_turn"):  # PostgreSQL: its reads are each their own snapshot
        return await store._all(sql, params)

    async def read(conn: Any) -> list[Any]:
        return list(await conn.execute_fetchall(sql, params))

    return await store.in_turn(read)


async def select(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of one query (SQLite's `?` placeholders; either engine)."""
    return await _rows(store, sql, params)


def query(config: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple]:
    """Rows of `sql` from the store the configuration file names (either
    engine), opened as `cdnreq status` opens it: no lock, no lease."""
    from cdnreq.configfile import load_config
    from cdnreq.service.opening import open_store

    async def read() -> list[tuple]:
        store = await open_store(load_config(config), lock=False)
        try:
            return [tuple(row) for row in await select(store, sql, params)]
        finally:
            await store.close()

    return asyncio.run(read())


async def events_since(store: Store, after_id: int = 0, limit: int = 1000) -> list[tuple[int, Event]]:
    """The change feed: events after `after_id`, oldest first, with their ids."""
    rows = await _rows(store, f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
    return [(row[0], Event(*row[1:])) for row in rows]


async def counts_by_phase(store: Store) -> dict[str, int]:
    """Instances per phase; every known phase is present, at 0 if empty."""
    counts = {p.value: 0 for p in Phase}
    for phase, n in await _rows(store, "SELECT phase, COUNT(*) FROM instances GROUP BY phase"):
        counts[phase] = n
    return counts

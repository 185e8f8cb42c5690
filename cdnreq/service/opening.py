"""Which store a daemon or a tick may start on: never an empty one while its
backups are not (the store was lost, not new), and never with a tick the
last process left open."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from cdnreq.config import Config
from cdnreq.store import Engine, StoreError, start_refusal
from cdnreq.store.copying import COPYING
from cdnreq.store.engines import is_postgres, open_engine

log = structlog.get_logger("cdnreq.daemon")

KILLED_MID_TICK = "interrupted: the process ended during this tick (killed or crashed); found at the next start"


NO_SCHEMA = ("holds no cdnreq schema yet: no node has led on this database (start `cdnreq run` on a node, "
             "or run `cdnreq once`)")


async def open_store(config: Config, *, lock: bool = True) -> Engine:
    """The store; a command that only reads (`lock=False`) is told plainly
    when a PostgreSQL database is still empty, rather than of a missing table."""
    store = await open_engine(config, lock=lock)
    if not lock and is_postgres(config) and store.schema_version == 0:
        await store.close()
        raise StoreError(f"{store.name} {NO_SCHEMA}")
    return store


class EmptyStoreRefused(StoreError):
    """The database is missing or empty while a backup of it is not."""


async def open_checked(
    config: Config, *, fresh: bool = False, config_path: Path | None = None, lead: bool = True
) -> Engine:
    """The store for a daemon or a tick, unless it was lost.

    A missing or empty database (no instance, no proven host, no challenge)
    while the newest backup in `[store].backup_dir` is not empty means the
    store was lost: raise EmptyStoreRefused, naming the backup and the two
    ways out (`cdnreq restore`, or `--fresh`). A missing database is checked
    before it is opened, so the refusal does not create it. `fresh` lets the
    start go ahead (it deletes nothing; it only allows an empty store).
    On PostgreSQL, `lead` takes the leader lease now (`cdnreq once`); a
    daemon opens without it and leads through its leadership loop.
    """
    if is_postgres(config):  # its backups are PostgreSQL's: nothing here to tell a lost store by
        store = await open_engine(config, lock=lead)
        try:
            if store.schema_version > 0:  # a new database: its leader creates the schema (and checks then)
                await refuse_unfinished_copy(store)
            if lead:
                await _end_unfinished(store)
        except BaseException:
            await store.close()
            raise
        return store
    database, backups = config.daemon.database, config.backup_path()

    async def refusal(missing: bool) -> str | None:
        return await asyncio.to_thread(
            start_refusal, database, backups, missing=missing, config=config_path
        )

    if not fresh and not database.exists():
        reason = await refusal(True)
        if reason is not None:
            raise EmptyStoreRefused(reason)
    store = await open_store(config)
    try:
        if await store.is_empty():
            reason = await refusal(False)
            if reason is not None:
                if not fresh:
                    raise EmptyStoreRefused(reason)
                log.warning(
                    "starting on an empty store (--fresh) although backups exist",
                    database=str(database), backup_dir=str(backups),
                )
        await refuse_unfinished_copy(store)
        await _end_unfinished(store)
    except BaseException:
        await store.close()
        raise
    return store


async def _end_unfinished(store: Engine) -> None:
    """A tick the last process began and never ended is recorded as
    interrupted, not left open (nor mistaken for a success)."""
    for tick in await store.end_unfinished_ticks(time.time(), KILLED_MID_TICK):
        log.warning("tick interrupted", tick=tick, error=KILLED_MID_TICK)


async def refuse_unfinished_copy(store: Engine) -> None:
    """A store `cdnreq migrate-store` began to fill and never finished holds
    part of the state: acting on it would challenge or request again
    customers it lacks."""
    mark = (await store.load_guards()).get(COPYING)
    if mark is not None:
        source = mark.get("from", "?") if isinstance(mark, dict) else "?"
        raise StoreError(f"{store.path}: a copy into this store (cdnreq migrate-store from {source}) did not "
                         "finish: it holds part of a store. Empty it and run migrate-store again")

"""The daemon's persistent state, behind one long-lived connection.

A single connection (and an asyncio lock in front of it) keeps every
transaction whole: a tick's upserts, forgets, host claims, challenges and
events land together or not at all, so a crash between two master calls never
leaves a half-told story.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, TypeVar

import aiosqlite

from cdnreq.store.errors import SchemaTooNew, StoreError, StoreLost
from cdnreq.store.lock import DatabaseLock
from cdnreq.store.online_copy import online_copy
from cdnreq.store.opening import connect, connect_read_only, connect_snapshot
from cdnreq.store.rows import dump
from cdnreq.store.reads import SqlReads
from cdnreq.store.writes import SqlWrites
from cdnreq.store.prune import PruneReport, prune_if_due, prune_passes

if TYPE_CHECKING:
    from cdnreq.metrics import Metrics

_T = TypeVar("_T")
SOME = 500  # guids read per statement by records_of and challenges_of


class Store(SqlReads, SqlWrites):
    """cdnreq's SQLite database. Build it with `await Store.open(path)`."""

    def __init__(
        self, path: Path, conn: aiosqlite.Connection, lock: DatabaseLock | None, version: int
    ) -> None:
        self._path = path
        self._conn = conn
        self._lock = lock
        self._busy = asyncio.Lock()  # one statement sequence at a time on the connection
        self.schema_version = version
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, lock: bool = True) -> "Store":
        """Open (creating and migrating as needed) the database at `path`.

        `lock=False` is for read-only tools that run next to the daemon.
        """
        db = Path(path)
        if not lock:
            try:
                return cls(db, *await connect(db, lock=False))
            except StoreError as error:
                if isinstance(error, SchemaTooNew) or not db.is_file():
                    raise
                try:  # a read-only place: SQLite cannot add its -shm file there
                    return cls(db, *await connect_read_only(db))
                except StoreError:
                    raise error from None
        return cls(db, *await connect(db, lock=True))

    @classmethod
    async def open_snapshot(cls, path: str | os.PathLike[str]) -> "Store":
        """One consistent, read-only view of the database for `cdnreq plan`
        (cdnreq.store.opening.connect_snapshot): no lock, nothing migrated or
        created, every read as of the first one."""
        db = Path(path)
        return cls(db, *await connect_snapshot(db))

    async def close(self) -> None:
        async with self._busy:
            if self._closed:
                return
            self._closed = True
            try:
                await self._conn.close()
            finally:
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        async with self._busy:
            try:
                return list(await self._conn.execute_fetchall(sql, tuple(params)))
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc

    async def _some(self, select: str, guids: Iterable[str]) -> list[Any]:
        """`select` for the rows of `guids`, a bounded number at a time (SQLite's host parameter limit)."""
        wanted = sorted(set(guids))
        rows: list[Any] = []
        for at in range(0, len(wanted), SOME):
            part = wanted[at:at + SOME]
            rows += await self._all(f"{select} WHERE guid IN ({','.join('?' * len(part))})", part)
        return rows

    async def _apply(self, steps: list[tuple[str, list[Any]]]) -> None:
        await _shielded(self._transaction(steps))

    async def _transaction(self, steps: list[tuple[str, list[Any]]]) -> None:
        async with self._busy:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                for sql, rows in steps:
                    await self._conn.executemany(sql, rows)
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                await self._rollback()
                if isinstance(exc, sqlite3.Error):
                    msg = f"{self._path}: commit failed, nothing written: {exc}"
                    raise StoreError(msg) from exc
                raise

    async def _rollback(self) -> None:
        # Unconditional: in_transaction may lag behind the worker thread. With
        # no transaction open, SQLite just says so and there is nothing to undo.
        try:
            await self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    async def clear_guard(self, name: str, value: Any) -> None:
        """Delete a guard state only if it still holds `value` (another
        process may have written a new one meanwhile)."""
        await self._write("DELETE FROM guards WHERE name = ? AND value = ?", (name, json.dumps(value, sort_keys=True)))

    async def _write(self, sql: str, params: tuple[Any, ...]) -> tuple[int | None, int]:
        async with self._busy:
            try:
                async with self._conn.execute(sql, params) as cur:
                    return cur.lastrowid, cur.rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc

    async def in_turn(self, work: Callable[[aiosqlite.Connection], Awaitable[_T]]) -> _T:
        """Run `work` on the connection between the store's other statement
        sequences (cdnreq.store.prune's small steps). Shielded like a commit:
        a cancelled caller never leaves a transaction half-run."""

        async def turn() -> _T:
            async with self._busy:
                if self._closed:
                    raise StoreError(f"{self._path}: the store is closed")
                try:
                    return await work(self._conn)
                except BaseException as exc:
                    await self._rollback()
                    if isinstance(exc, sqlite3.Error):
                        raise StoreError(f"{self._path}: {exc}") from exc
                    raise

        return await _shielded(turn())

    async def prune_if_due(self, days: int, now: float) -> PruneReport | None:
        """A pass over the history past `days`, unless one ran within the hour (cdnreq.store.prune)."""
        return await prune_if_due(self, days, now)

    async def prune_passes(
        self, days: Callable[[], int], stop: asyncio.Event, *, metrics: Metrics | None = None
    ) -> None:
        """The daemon's hourly passes over the history, until `stop` (cdnreq.store.prune)."""
        await prune_passes(self, days, stop, metrics=metrics)

    def size_bytes(self) -> int:
        """The database file and its write-ahead log, in bytes."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self._path}{suffix}").st_size
            except OSError:
                pass
        return total

    def lost(self) -> str | None:
        """Why the database file is no longer the one this store opened
        (deleted, replaced); None while it is, and for readers."""
        return None if self._lock is None else self._lock.lost()

    async def begin_tick(self, started_at: float) -> int:
        """Checks first that the file is still the store's: writing on would
        go into an unlinked file, lost at the next start."""
        if (why := self.lost()) is not None:
            raise StoreLost(why)
        rowid, _ = await self._write("INSERT INTO ticks (started_at) VALUES (?)", (started_at,))
        return int(rowid)

    async def end_tick(
        self, tick_id: int, *, finished_at: float, result: str, summary: Mapping[str, Any]
    ) -> None:
        try:
            text = dump(summary)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self._path}: cannot encode tick summary: {exc}") from exc
        _, changed = await self._write(
            "UPDATE ticks SET finished_at = ?, result = ?, summary = ? WHERE id = ?",
            (finished_at, result, text, tick_id),
        )
        if changed != 1:
            raise StoreError(f"{self._path}: no tick {tick_id} to end")

    async def end_unfinished_ticks(self, now: float, error: str) -> list[int]:
        """Ticks begun and never ended (the process was killed or crashed
        mid-tick) ended now as `interrupted`; their ids. Only the holder of
        the store's lock may call it: nobody else can have a tick running."""
        rows = await self._all("SELECT id FROM ticks WHERE finished_at IS NULL ORDER BY id")
        if rows:
            text = dump({"ok": False, "interrupted": True, "error": error})
            await self._write(
                "UPDATE ticks SET finished_at = ?, result = 'interrupted', summary = ? WHERE finished_at IS NULL",
                (now, text),
            )
        return [i for (i,) in rows]

    async def backup(self, dest: str | os.PathLike[str], *, now: float | None = None) -> Path:
        """An online, consistent copy of the database in the directory `dest`,
        as ``cdnreq-YYYYmmddTHHMMSSZ.db`` (UTC); returns its path (cdnreq.store.online_copy)."""
        return await online_copy(self, self._path, Path(dest), time.time() if now is None else now)


async def _shielded(work: Awaitable[_T]) -> _T:
    """Run `work` to its end even when the caller is cancelled: a transaction
    is never left half-run; it finishes (or rolls back) on its own and the
    next caller waits for it. Nobody awaits a cancelled caller's outcome, so
    it is taken here."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)

"""The SQLite engine's online copy of its database (Store.backup).

SQLite's backup API copies every page in one step on the store's own
connection, in its turn (Store.in_turn), while the store's other statements
wait: the copy is the database between two transactions. With WAL, a daemon
writing through another connection is not blocked. The copy is written to a
temporary file in the backup directory, switched to a rollback journal (one
self-contained file), checked (`PRAGMA integrity_check`, schema version),
fsync'd, then renamed into place. The domain secret is not in the database:
see cdnreq.store.backup.take_backup.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Awaitable, Callable, Protocol, TypeVar

import aiosqlite

from cdnreq.store.backupdir import install, make_backup_dir, new_temp
from cdnreq.store.errors import StoreError
from cdnreq.store.verify import finish_copy

_T = TypeVar("_T")


class Turns(Protocol):
    async def in_turn(self, work: Callable[[aiosqlite.Connection], Awaitable[_T]]) -> _T: ...


async def online_copy(store: Turns, path: Path, directory: Path, when: float) -> Path:
    """A checked copy of the database at `path` in `directory`, named for `when`; its path."""
    await asyncio.to_thread(make_backup_dir, directory)
    tmp = await asyncio.to_thread(new_temp, directory)
    try:
        try:
            target = await asyncio.to_thread(sqlite3.connect, tmp, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the backup {tmp}: {exc}") from exc

        async def copy(conn: aiosqlite.Connection) -> None:
            try:
                await conn.backup(target, pages=-1)
            except sqlite3.Error as exc:
                raise StoreError(f"{path}: backup to {directory} failed: {exc}") from exc

        try:
            await store.in_turn(copy)
        except BaseException:
            try:
                await asyncio.to_thread(target.close)
            except sqlite3.Error:
                pass  # the temporary file goes anyway
            raise
        try:
            await asyncio.to_thread(finish_copy, target, tmp)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: backup to {directory} failed: {exc}") from exc
        return await asyncio.to_thread(install, tmp, directory, when)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

"""Opening the database: the writer (locked, migrated, WAL, checked
writable), a reader beside a running daemon, and the snapshot `cdnreq plan`
reads. Each returns the connection, the file lock (the writer's only) and
the schema version, for the Store to hold."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from cdnreq.notify import Notifier
from cdnreq.store.errors import StoreError
from cdnreq.store.files import make_private_dirs, too_open
from cdnreq.store.lock import DatabaseLock
from cdnreq.store.migrations import LATEST, incremental_auto_vacuum, migrate, read_version

log = structlog.get_logger("cdnreq.store")

# the -wal file is cut back to this after a checkpoint (pruning and its
# vacuum steps write a lot through it, once)
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
VACUUM_START_BUDGET_US = 30 * 60 * 1_000_000  # systemd's start timeout, extended for the one-time VACUUM

Opened = tuple[aiosqlite.Connection, DatabaseLock | None, int]  # connection, lock, schema version


async def connect_read_only(db: Path) -> Opened:
    """For readers of a database in a read-only place (a snapshot, a
    read-only mount): `mode=ro` when SQLite's -shm and -wal files are there
    to read, `immutable=1` when there is no write-ahead log to miss."""
    real = db.resolve()  # SQLite keeps the -wal beside the real file, not beside a symlink
    uri = real.as_uri()
    wal = Path(f"{real}-wal")
    targets = [f"{uri}?mode=ro"]
    if not wal.exists() or wal.stat().st_size == 0:
        targets.append(f"{uri}?immutable=1")
    problem: Exception | None = None
    for target in targets:
        conn: aiosqlite.Connection | None = None
        try:
            conn = await aiosqlite.connect(target, uri=True, isolation_level=None)
            version = await read_version(conn, str(db))
        except (sqlite3.Error, StoreError) as exc:
            problem = exc
            if conn is not None:
                await conn.close()
            continue
        if version != LATEST:
            await conn.close()
            raise StoreError(f"{db}: schema version {version}, not {LATEST}; read-only, so it cannot be migrated here")
        return conn, None, version
    raise StoreError(f"cannot open {db} read-only: {problem}")


async def connect_snapshot(db: Path) -> Opened:
    """One consistent, read-only view of the database for `cdnreq plan`:
    no lock taken (it works next to a running daemon), nothing migrated,
    nothing created. `mode=ro` reads through the daemon's write-ahead log;
    with no -wal file, `immutable=1`, since `mode=ro` would create the
    -wal and -shm files. A read transaction is held until close, so every
    read sees the database as it was at the first one."""
    if not db.is_file():
        raise StoreError(f"no database at {db}")
    real = db.resolve()  # the daemon opens the real path: its -wal is beside it, not beside a symlink
    uri = real.as_uri()
    wal = Path(f"{real}-wal").exists()
    if wal and not Path(f"{real}-shm").exists():
        # a writer that has it open keeps the -shm: this log was left by a
        # killed one, and `mode=ro` would create the -shm to read it
        raise StoreError(
            f"{db}: a write-ahead log without its -shm file (left by a stopped cdnreq);"
            " reading it would create a file, so the plan waits: run `cdnreq once` or start the daemon"
        )
    target = f"{uri}?mode=ro" if wal else f"{uri}?immutable=1"
    conn: aiosqlite.Connection | None = None
    try:
        conn = await aiosqlite.connect(target, uri=True, isolation_level=None)
        await conn.execute("BEGIN")
        version = await read_version(conn, str(db))  # the snapshot starts at this first read
    except (sqlite3.Error, StoreError) as exc:
        if conn is not None:
            await conn.close()
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot read {db}: {exc}") from exc
    if version != LATEST:
        await conn.close()
        raise StoreError(f"{db}: schema version {version}, not {LATEST}; run `cdnreq once` to migrate it first")
    return conn, None, version


async def connect(db: Path, *, lock: bool) -> Opened:
    try:
        make_private_dirs(db.parent)
    except OSError as exc:
        raise StoreError(f"cannot create directory for {db}: {exc}") from exc
    # the writer creates the file (0600: SQLite gives -wal and -shm its mode) and locks it
    file_lock = DatabaseLock.acquire(db) if lock else None
    conn: aiosqlite.Connection | None = None
    try:
        try:
            conn = await aiosqlite.connect(file_lock.real if file_lock else db, isolation_level=None)
            if await _pragma(conn, "page_count") == 0:
                # a new file starts in incremental auto-vacuum (set before WAL writes
                # its header); an existing one switches by a VACUUM (_writer_settings)
                await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = await _pragma(conn, "journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA busy_timeout = 5000")
            await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.OperationalError as exc:  # a full disk, a read-only place: not the file's fault
            raise StoreError(f"cannot open {db}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{db} is not a cdnreq database (not SQLite: {exc})") from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {db}: {exc}") from exc
        if str(mode).lower() != "wal":
            raise StoreError(f"{db}: cannot switch to WAL journal mode (got {mode!r})")
        version = await migrate(conn, str(db))
        if lock:
            await _writer_settings(conn, db)
        if lock:  # the writer: refuse a database it cannot write now, not at the first commit
            try:
                await conn.execute("BEGIN IMMEDIATE")
                await conn.execute("UPDATE schema_version SET version = version")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write {db}: {exc}") from exc
            finally:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
    except BaseException:
        if conn is not None:
            await conn.close()
        if file_lock is not None:
            file_lock.release()
        raise
    if file_lock is not None:
        files = [file_lock.real + suffix for suffix in ("", "-wal", "-shm", ".lock")]
        if wide := too_open(files):
            log.warning("database files readable by others than their owner; chmod 600 them", files=wide)
    return conn, file_lock, version


async def _writer_settings(conn: aiosqlite.Connection, db: Path) -> None:
    """The writer's: a bounded -wal, and (once per file) incremental auto-vacuum.
    A failed switch (a full disk) is logged and tried again at the next start."""
    try:
        await conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {db}: {exc}") from exc
    try:
        took = await incremental_auto_vacuum(conn, str(db), before=lambda: _announce_vacuum(db))
    except StoreError as error:
        log.warning("database keeps its vacuum mode for now", database=str(db), error=str(error))
        return
    if took is not None:
        log.info("database switched to incremental auto-vacuum", database=str(db), duration_s=round(took, 3))


def _announce_vacuum(db: Path) -> None:
    """The one-time VACUUM rewrites the whole file (tens of seconds for a large
    store): say so in the log and to systemd, whose start timeout it must not
    trip (a killed start would roll it back and try again, for ever)."""
    size = os.stat(db).st_size
    log.info("switching the database to incremental auto-vacuum: a VACUUM, once", database=str(db), size_bytes=size)
    notifier = Notifier()
    notifier.send(EXTEND_TIMEOUT_USEC=VACUUM_START_BUDGET_US, STATUS="VACUUM of the database, once (schema 4)")
    notifier.close()


async def _pragma(conn: aiosqlite.Connection, assignment: str) -> Any:
    async with conn.execute(f"PRAGMA {assignment}") as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]

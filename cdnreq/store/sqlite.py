"""The daemon's persistent state, behind one long-lived connection.

A single connection (and an asyncio lock in front of it) keeps every
transaction whole: a tick's upserts, forgets and events land together or not
at all, so a crash between two master calls never leaves a half-told story.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Mapping

import aiosqlite

from cdnreq.model import Event, InstanceGuid, Phase, Record, RequestedState
from cdnreq.store.errors import StoreError
from cdnreq.store.lock import FileLock
from cdnreq.store.migrations import migrate

_COLUMNS = (
    "guid, title, phase, created_at, updated_at, param_hash, requested_state, "
    "spec_hash, tech_guid, connection, published, published_error, last_action, "
    "last_error, failures, retry_at"
)  # Record's field order, so rows map onto it positionally
_SELECT = f"SELECT {_COLUMNS} FROM instances"
_UPSERT = (
    f"INSERT INTO instances ({_COLUMNS}) VALUES ({', '.join('?' * 16)}) "
    "ON CONFLICT (guid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:] if c != "created_at")
)
_INSERT_EVENT = (
    "INSERT INTO events (at, tick, instance_guid, action, outcome, detail) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM instances WHERE guid = ?"
_EVENT_COLUMNS = "id, instance_guid, action, outcome, at, detail, tick"

_PHASES = {p.value: p for p in Phase}
_STATES = {s.value: s for s in RequestedState}


def _dump(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(value if isinstance(value, dict) else dict(value), sort_keys=True)


def _to_row(r: Record) -> tuple[Any, ...]:
    return (
        r.guid, r.title, Phase(r.phase).value, r.created_at, r.updated_at, r.param_hash,
        None if r.requested_state is None else RequestedState(r.requested_state).value,
        r.spec_hash, r.tech_guid, _dump(r.connection), _dump(r.published),
        r.published_error, r.last_action, r.last_error, r.failures, r.retry_at,
    )  # fmt: skip


_raw_decode = json.JSONDecoder().raw_decode


def _load_json(text: str) -> Any:
    # raw_decode skips json.loads' whitespace regexes: twice as fast, and the
    # text is ours (json.dumps output). Anything odd goes the strict way.
    value, end = _raw_decode(text)
    return value if end == len(text) else json.loads(text)


def _to_record(row: tuple[Any, ...]) -> Record:
    (guid, title, phase, created, updated, param_hash, state, spec_hash, tech_guid,
     connection, published, published_error, last_action, last_error, failures,
     retry_at) = row  # fmt: skip
    return Record(
        guid, title, _PHASES[phase], created, updated, param_hash,
        None if state is None else _STATES[state], spec_hash, tech_guid,
        None if connection is None else _load_json(connection),
        None if published is None else _load_json(published),
        published_error, last_action, last_error, failures, retry_at,
    )  # fmt: skip


def _to_records(rows: list[tuple[Any, ...]]) -> dict[InstanceGuid, Record]:
    return {row[0]: _to_record(row) for row in rows}


def _to_event(row: tuple[Any, ...]) -> tuple[int, Event]:
    return row[0], Event(*row[1:])


class Store:
    """cdnreq's SQLite database. Build it with `await Store.open(path)`."""

    def __init__(
        self, path: Path, conn: aiosqlite.Connection, lock: FileLock | None, version: int
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
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create directory for {db}: {exc}") from exc
        file_lock = FileLock.acquire(f"{db}.lock", str(db)) if lock else None
        conn: aiosqlite.Connection | None = None
        try:
            try:
                conn = await aiosqlite.connect(db, isolation_level=None)
                mode = await _pragma(conn, "journal_mode = WAL")
                await conn.execute("PRAGMA synchronous = NORMAL")
                await conn.execute("PRAGMA busy_timeout = 5000")
                await conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{db} is not a cdnreq database (not SQLite: {exc})") from exc
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open {db}: {exc}") from exc
            if str(mode).lower() != "wal":
                raise StoreError(f"{db}: cannot switch to WAL journal mode (got {mode!r})")
            version = await migrate(conn, str(db))
        except BaseException:
            if conn is not None:
                await conn.close()
            if file_lock is not None:
                file_lock.release()
            raise
        return cls(db, conn, file_lock, version)

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

    async def load(self) -> dict[InstanceGuid, Record]:
        """Every instance. At 100k rows building the Records takes a good part
        of a second, so it runs in a thread to keep the event loop answering."""
        rows = await self._all(_SELECT)
        return await asyncio.to_thread(_to_records, rows)

    async def get(self, guid: str) -> Record | None:
        rows = await self._all(_SELECT + " WHERE guid = ?", (guid,))
        return _to_record(rows[0]) if rows else None

    async def commit(
        self,
        *,
        upserts: Iterable[Record] = (),
        forgets: Iterable[str] = (),
        events: Iterable[Event] = (),
    ) -> None:
        """Write everything in one transaction, or nothing.

        Forgets run before upserts, so a title freed by a forgotten instance can
        be taken by another one in the same commit.
        """
        try:
            upsert_rows = [_to_row(r) for r in upserts]
            forget_rows = [(g,) for g in forgets]
            event_rows = [(e.at, e.tick, e.instance_guid, e.action, e.outcome, e.detail)
                          for e in events]  # fmt: skip
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self._path}: cannot encode commit: {exc}") from exc
        both = {r[0] for r in upsert_rows} & {g for (g,) in forget_rows}
        if both:
            raise StoreError(f"{self._path}: commit both upserts and forgets {sorted(both)}")
        if not (upsert_rows or forget_rows or event_rows):
            return
        # Shielded: a cancelled caller must not leave the transaction half-run;
        # it finishes (or rolls back) on its own and the next caller waits for it.
        await asyncio.shield(self._transaction(forget_rows, upsert_rows, event_rows))

    async def _transaction(
        self, forget_rows: list[Any], upsert_rows: list[Any], event_rows: list[Any]
    ) -> None:
        async with self._busy:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                if forget_rows:
                    await self._conn.executemany(_DELETE, forget_rows)
                if upsert_rows:
                    await self._conn.executemany(_UPSERT, upsert_rows)
                if event_rows:
                    await self._conn.executemany(_INSERT_EVENT, event_rows)
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

    async def events_for(self, guid: str, limit: int = 50) -> list[tuple[int, Event]]:
        """The instance's latest events, newest first."""
        rows = await self._all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE instance_guid = ? "
            "ORDER BY id DESC LIMIT ?",
            (guid, limit),
        )
        return [_to_event(r) for r in rows]

    async def events_since(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, Event]]:
        """The change feed: events after `after_id`, oldest first."""
        rows = await self._all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [_to_event(r) for r in rows]

    async def _write(self, sql: str, params: tuple[Any, ...]) -> tuple[int | None, int]:
        async with self._busy:
            try:
                async with self._conn.execute(sql, params) as cur:
                    return cur.lastrowid, cur.rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc

    async def begin_tick(self, started_at: float) -> int:
        rowid, _ = await self._write("INSERT INTO ticks (started_at) VALUES (?)", (started_at,))
        return int(rowid)

    async def end_tick(
        self, tick_id: int, *, finished_at: float, result: str, summary: Mapping[str, Any]
    ) -> None:
        try:
            text = _dump(summary)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self._path}: cannot encode tick summary: {exc}") from exc
        _, changed = await self._write(
            "UPDATE ticks SET finished_at = ?, result = ?, summary = ? WHERE id = ?",
            (finished_at, result, text, tick_id),
        )
        if changed != 1:
            raise StoreError(f"{self._path}: no tick {tick_id} to end")

    async def last_ticks(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT id, started_at, finished_at, result, summary FROM ticks "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            {"id": i, "started_at": s, "finished_at": f, "result": r,
             "summary": None if j is None else json.loads(j)}
            for i, s, f, r, j in rows
        ]  # fmt: skip

    async def counts_by_phase(self) -> dict[str, int]:
        """Instances per phase; every known phase is present, at 0 if empty."""
        counts = {p.value: 0 for p in Phase}
        for phase, n in await self._all("SELECT phase, COUNT(*) FROM instances GROUP BY phase"):
            counts[phase] = n
        return counts


async def _pragma(conn: aiosqlite.Connection, assignment: str) -> Any:
    async with conn.execute(f"PRAGMA {assignment}") as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]

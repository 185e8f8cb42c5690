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
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Awaitable, Callable, Iterable, Mapping, TypeVar

import aiosqlite
import structlog

from cdnreq.model import (
    Challenge,
    Event,
    HostClaim,
    InstanceGuid,
    Phase,
    Record,
    FrozenJson,
    RequestedState,
    fast_maker,
    shown_digest,
)
from cdnreq.notify import Notifier
from cdnreq.store.backupdir import install, make_backup_dir, new_temp
from cdnreq.store.errors import SchemaTooNew, StoreError, StoreLost
from cdnreq.store.files import make_private_dirs, too_open
from cdnreq.store.lock import DatabaseLock
from cdnreq.store.migrations import LATEST, incremental_auto_vacuum, migrate, read_version
from cdnreq.store.verify import finish_copy

log = structlog.get_logger("cdnreq.store")

_COLUMNS = (
    "guid, title, phase, created_at, updated_at, param_hash, requested_state, "
    "spec_hash, tech_guid, connection, published, published_error, last_action, "
    "last_error, failures, retry_at, served, gone_at"
)  # Record's field order, so rows map onto it positionally
_SELECT = f"SELECT {_COLUMNS} FROM instances"
# `published` holds what the customer was shown; a Record keeps only its
# digest, so the text is written apart, when a publication changes it.
_WRITTEN = [c for c in _COLUMNS.split(", ") if c != "published"]
_UPSERT = (
    f"INSERT INTO instances ({', '.join(_WRITTEN)}) VALUES ({', '.join('?' * len(_WRITTEN))}) "
    "ON CONFLICT (guid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _WRITTEN[1:] if c != "created_at")
)
_SET_PUBLISHED = "UPDATE instances SET published = ? WHERE guid = ?"
_INSERT_EVENT = (
    "INSERT INTO events (at, tick, instance_guid, action, outcome, detail) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM instances WHERE guid = ?"

_HOST_COLUMNS = "host, guid, registrable, proven_at, checked_at, failing_since"  # HostClaim's order
_SELECT_HOSTS = f"SELECT {_HOST_COLUMNS} FROM hosts"
_UPSERT_HOST = (
    f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (host) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _HOST_COLUMNS.split(", ")[1:])
)
_DELETE_HOST = "DELETE FROM hosts WHERE host = ?"
_DELETE_HOSTS_OF = "DELETE FROM hosts WHERE guid = ?"

_CHALLENGE_COLUMNS = "guid, domain, salt, token, created_at"  # Challenge's order
_SELECT_CHALLENGES = f"SELECT {_CHALLENGE_COLUMNS} FROM challenges"
_UPSERT_CHALLENGE = (
    f"INSERT INTO challenges ({_CHALLENGE_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (guid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _CHALLENGE_COLUMNS.split(", ")[1:])
)
_DELETE_CHALLENGE = "DELETE FROM challenges WHERE guid = ?"
_EVENT_COLUMNS = "id, instance_guid, action, outcome, at, detail, tick"

_UPSERT_GUARD = (
    "INSERT INTO guards (name, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
_DELETE_GUARD = "DELETE FROM guards WHERE name = ?"

_PHASES = {p.value: p for p in Phase}
_T = TypeVar("_T")
# the -wal file is cut back to this after a checkpoint (pruning and its
# vacuum steps write a lot through it, once)
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
VACUUM_START_BUDGET_US = 30 * 60 * 1_000_000  # systemd's start timeout, extended for the one-time VACUUM
_STATES = {s.value: s for s in RequestedState}


def _dump(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(value if isinstance(value, dict) else dict(value.items()), sort_keys=True)


def _dump_hosts(hosts: Iterable[str] | None) -> str | None:
    """A JSON array, in the given order; None stays NULL (unknown), () is `[]`."""
    if hosts is None:
        return None
    if isinstance(hosts, (str, bytes)):
        raise TypeError(f"served must be a sequence of hosts, not {type(hosts).__name__}")
    hosts = list(hosts)
    for host in hosts:
        if not isinstance(host, str):
            raise TypeError(f"served hosts must be strings, not {type(host).__name__}")
    return json.dumps(hosts)


def _to_row(r: Record) -> tuple[Any, ...]:
    return (
        r.guid, r.title, Phase(r.phase).value, r.created_at, r.updated_at, r.param_hash,
        None if r.requested_state is None else RequestedState(r.requested_state).value,
        r.spec_hash, r.tech_guid, _dump(r.connection),
        r.published_error, r.last_action, r.last_error, r.failures, r.retry_at,
        _dump_hosts(r.served), r.gone_at,
    )  # fmt: skip


def _host_row(h: HostClaim) -> tuple[Any, ...]:
    return (h.host, h.guid, h.registrable, h.proven_at, h.checked_at, h.failing_since)


def _challenge_row(c: Challenge) -> tuple[Any, ...]:
    return (c.guid, c.domain, c.salt, c.token, c.created_at)


_raw_decode = json.JSONDecoder().raw_decode


def _load_json(text: str) -> Any:
    # raw_decode skips json.loads' whitespace regexes: twice as fast, and the
    # text is ours (json.dumps output). Anything odd goes the strict way.
    value, end = _raw_decode(text)
    return value if end == len(text) else json.loads(text)


_make_record = fast_maker(Record)


# Loaded strings are interned where many rows hold the same value (the CDN
# spec hash, last actions) or other tables hold it too (guids, hosts): one
# object instead of one per row and table, about 300 bytes an instance.
_i = sys.intern


def _to_record(row: tuple[Any, ...]) -> Record:
    (guid, title, phase, created, updated, param_hash, state, spec_hash, tech_guid,
     connection, published, published_error, last_action, last_error, failures,
     retry_at, served, gone_at) = row  # fmt: skip
    return _make_record(
        _i(guid), title, _PHASES[phase], created, updated, param_hash,
        None if state is None else _STATES[state], None if spec_hash is None else _i(spec_hash), tech_guid,
        None if connection is None else FrozenJson(connection.encode("utf-8", "surrogatepass")),
        None if published is None else shown_digest(_load_json(published)),
        published_error, None if last_action is None else _i(last_action), last_error, failures, retry_at,
        None if served is None else tuple(_i(h) for h in _load_json(served)), gone_at,
    )  # fmt: skip


def _to_records(rows: list[tuple[Any, ...]]) -> dict[InstanceGuid, Record]:
    records = (_to_record(row) for row in rows)
    return {r.guid: r for r in records}


def _to_hosts(rows: list[tuple[Any, ...]]) -> dict[str, HostClaim]:
    claims = (HostClaim(_i(host), _i(guid), _i(registrable), *rest) for host, guid, registrable, *rest in rows)
    return {c.host: c for c in claims}


def _to_challenges(rows: list[tuple[Any, ...]]) -> dict[InstanceGuid, Challenge]:
    challenges = (Challenge(_i(guid), _i(domain), *rest) for guid, domain, *rest in rows)
    return {c.guid: c for c in challenges}


def _to_event(row: tuple[Any, ...]) -> tuple[int, Event]:
    return row[0], Event(*row[1:])


class Store:
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
                return await cls._open(db, lock=False)
            except StoreError as error:
                if isinstance(error, SchemaTooNew) or not db.is_file():
                    raise
                try:  # a read-only place: SQLite cannot add its -shm file there
                    return await cls._open_read_only(db)
                except StoreError:
                    raise error from None
        return await cls._open(db, lock=True)

    @classmethod
    async def _open_read_only(cls, db: Path) -> "Store":
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
            return cls(db, conn, None, version)
        raise StoreError(f"cannot open {db} read-only: {problem}")

    @classmethod
    async def open_snapshot(cls, path: str | os.PathLike[str]) -> "Store":
        """One consistent, read-only view of the database for `cdnreq plan`:
        no lock taken (it works next to a running daemon), nothing migrated,
        nothing created. `mode=ro` reads through the daemon's write-ahead log;
        with no -wal file, `immutable=1`, since `mode=ro` would create the
        -wal and -shm files. A read transaction is held until close, so every
        read sees the database as it was at the first one."""
        db = Path(path)
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
        return cls(db, conn, None, version)

    @classmethod
    async def _open(cls, db: Path, *, lock: bool) -> "Store":
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

    async def published_of(self, guid: str) -> dict[str, Any] | None:
        """What the customer was last shown (Records keep only its digest)."""
        rows = await self._all("SELECT published FROM instances WHERE guid = ?", (guid,))
        return _load_json(rows[0][0]) if rows and rows[0][0] is not None else None

    async def load_hosts(self) -> dict[str, HostClaim]:
        """Every host claim, by host."""
        rows = await self._all(_SELECT_HOSTS)
        return await asyncio.to_thread(_to_hosts, rows)

    async def load_challenges(self) -> dict[InstanceGuid, Challenge]:
        """Every outstanding DNS challenge, by instance."""
        rows = await self._all(_SELECT_CHALLENGES)
        return await asyncio.to_thread(_to_challenges, rows)

    async def hosts_of(self, guid: str) -> list[HostClaim]:
        """The hosts `guid` holds, sorted by host."""
        rows = await self._all(_SELECT_HOSTS + " WHERE guid = ? ORDER BY host", (guid,))
        return [HostClaim(*row) for row in rows]

    async def challenge_of(self, guid: str) -> Challenge | None:
        rows = await self._all(_SELECT_CHALLENGES + " WHERE guid = ?", (guid,))
        return Challenge(*rows[0]) if rows else None

    async def commit(
        self,
        *,
        upserts: Iterable[Record] = (),
        forgets: Iterable[str] = (),
        events: Iterable[Event] = (),
        host_upserts: Iterable[HostClaim] = (),
        host_deletes: Iterable[str] = (),
        challenge_upserts: Iterable[Challenge] = (),
        challenge_deletes: Iterable[str] = (),
        shown: Mapping[str, Mapping[str, Any]] | None = None,
        also: Iterable[tuple[str, list[Any]]] = (),
    ) -> None:
        """Write everything in one transaction, or nothing.

        `also`: further (sql, rows) steps run last in the same transaction
        (an import's own bookkeeping, see cdnreq.store.imports).

        In order: forgets (each with the instance's hosts and challenge, since
        a forgotten instance owns nothing), host deletes, challenge deletes,
        upserts, what was shown (by guid; upserted or stored instances only),
        host upserts, challenge upserts, events. So a title or a host
        freed by one instance can be taken by another in the same commit; a
        host upsert with another guid transfers the host.
        """
        try:
            upsert_rows = [_to_row(r) for r in upserts]
            forget_rows = [(g,) for g in forgets]
            event_rows = [(e.at, e.tick, e.instance_guid, e.action, e.outcome, e.detail)
                          for e in events]  # fmt: skip
            host_rows = [_host_row(h) for h in host_upserts]
            host_delete_rows = [(h,) for h in host_deletes]
            challenge_rows = [_challenge_row(c) for c in challenge_upserts]
            challenge_delete_rows = [(g,) for g in challenge_deletes]
            shown_rows = [(_dump(v), g) for g, v in (shown or {}).items()]
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self._path}: cannot encode commit: {exc}") from exc
        forgotten = {g for (g,) in forget_rows}
        for what, guids in (
            ("upserts", {r[0] for r in upsert_rows}),
            ("host_upserts", {r[1] for r in host_rows}),
            ("challenge_upserts", {r[0] for r in challenge_rows}),
            ("shown", {r[1] for r in shown_rows}),
        ):
            both = guids & forgotten
            if both:
                raise StoreError(f"{self._path}: commit both {what} and forgets {sorted(both)}")
        steps = [
            (_DELETE, forget_rows),
            (_DELETE_HOSTS_OF, forget_rows),
            (_DELETE_CHALLENGE, forget_rows),
            (_DELETE_HOST, host_delete_rows),
            (_DELETE_CHALLENGE, challenge_delete_rows),
            (_UPSERT, upsert_rows),
            (_SET_PUBLISHED, shown_rows),
            (_UPSERT_HOST, host_rows),
            (_UPSERT_CHALLENGE, challenge_rows),
            (_INSERT_EVENT, event_rows),
            *also,
        ]
        steps = [(sql, rows) for sql, rows in steps if rows]
        if not steps:
            return
        # Shielded: a cancelled caller must not leave the transaction half-run;
        # it finishes (or rolls back) on its own and the next caller waits for it.
        task = asyncio.ensure_future(self._transaction(steps))
        # if the caller is cancelled, nobody awaits the outcome: take it here
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(task)

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

    async def events_for(self, guid: str, limit: int = 50) -> list[tuple[int, Event]]:
        """The instance's latest events, newest first."""
        rows = await self._all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE instance_guid = ? "
            "ORDER BY id DESC LIMIT ?",
            (guid, limit),
        )
        return [_to_event(r) for r in rows]

    async def load_guards(self) -> dict[str, Any]:
        """The guards' state by name (cdnreq/decide/guards.py)."""
        rows = await self._all("SELECT name, value FROM guards")
        return {name: _load_json(value) for name, value in rows}

    async def save_guards(self, values: Mapping[str, Any], now: float) -> None:
        """Write the named guard states in one transaction (None deletes one).
        Only the lock holder writes: the daemon, or `cdnreq approve` when no
        daemon runs (with one, approve goes through its endpoint)."""
        try:
            rows = [(n, json.dumps(v, sort_keys=True), now) for n, v in values.items() if v is not None]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self._path}: cannot encode guard state: {exc}") from exc
        deletes = [(n,) for n, v in values.items() if v is None]
        steps = [(sql, r) for sql, r in ((_UPSERT_GUARD, rows), (_DELETE_GUARD, deletes)) if r]
        if steps:
            await asyncio.shield(asyncio.ensure_future(self._transaction(steps)))

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

        task = asyncio.ensure_future(turn())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

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

    async def end_unfinished_ticks(self, now: float, error: str) -> list[int]:
        """Ticks begun and never ended (the process was killed or crashed
        mid-tick) ended now as `interrupted`; their ids. Only the holder of
        the store's lock may call it: nobody else can have a tick running."""
        rows = await self._all("SELECT id FROM ticks WHERE finished_at IS NULL ORDER BY id")
        if rows:
            text = _dump({"ok": False, "interrupted": True, "error": error})
            await self._write(
                "UPDATE ticks SET finished_at = ?, result = 'interrupted', summary = ? WHERE finished_at IS NULL",
                (now, text),
            )
        return [i for (i,) in rows]

    async def is_empty(self) -> bool:
        """Nothing worth keeping: no instance, no proven host, no challenge
        (ticks do not count). What a freshly created database looks like."""
        rows = await self._all(
            "SELECT EXISTS (SELECT 1 FROM instances) OR EXISTS (SELECT 1 FROM hosts) "
            "OR EXISTS (SELECT 1 FROM challenges)"
        )
        return not rows[0][0]

    async def backup(self, dest: str | os.PathLike[str], *, now: float | None = None) -> Path:
        """An online, consistent copy of the database in the directory `dest`,
        as ``cdnreq-YYYYmmddTHHMMSSZ.db`` (UTC); returns its path.

        SQLite's backup API copies every page in one step on this connection,
        in its thread, while the store's other statements wait: the copy is
        the database between two transactions. With WAL, a daemon writing
        through another connection is not blocked. The copy is written to a
        temporary file in `dest`, switched to a rollback journal (one
        self-contained file), checked (`PRAGMA integrity_check`, schema
        version), fsync'd, then renamed into place. The domain secret is not in
        the database: see cdnreq.store.backup.take_backup.
        """
        directory = Path(dest)
        when = time.time() if now is None else now
        await asyncio.to_thread(make_backup_dir, directory)
        tmp = await asyncio.to_thread(new_temp, directory)
        try:
            try:
                target = await asyncio.to_thread(
                    sqlite3.connect, tmp, check_same_thread=False, isolation_level=None
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write the backup {tmp}: {exc}") from exc
            try:
                async with self._busy:
                    if self._closed:
                        raise StoreError(f"{self._path}: the store is closed")
                    try:
                        await self._conn.backup(target, pages=-1)
                    except sqlite3.Error as exc:
                        raise StoreError(f"{self._path}: backup to {directory} failed: {exc}") from exc
            except BaseException:
                try:
                    await asyncio.to_thread(target.close)
                except sqlite3.Error:
                    pass  # the temporary file goes anyway
                raise
            try:
                await asyncio.to_thread(finish_copy, target, tmp)
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: backup to {directory} failed: {exc}") from exc
            return await asyncio.to_thread(install, tmp, directory, when)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


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

"""cdnreq's store on PostgreSQL: the same tables, statements and contract as
the SQLite engine (cdnreq.store.interface), for several nodes of which one
leads (cdnreq.store.pglease).

The statements are the SQLite engine's, translated (cdnreq.store.dialect);
a commit is the same steps (cdnreq.store.commit) in one transaction, which
the leader's fence opens. A node that does not hold the lease can read
everything and write nothing. Backups are PostgreSQL's job (pg_dump, PITR):
`backup` says so instead of copying.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Iterable, Mapping, TypeVar

import asyncpg

from cdnreq.aiotasks import within

from cdnreq.decide.leadership import Term
from cdnreq.store.pgconn import drop, transaction
from cdnreq.store.pglease import Lease, NotLeading
from cdnreq.store.dialect import postgres
from cdnreq.store.pgbackups import BACKUPS_ARE_POSTGRES
from cdnreq.store.errors import StoreError, StoreUnreachable
from cdnreq.store.reads import SqlReads
from cdnreq.store.writes import SqlWrites
from cdnreq.store.pgschema import migrate_pg, read_version
from cdnreq.store.prune import PruneReport
from cdnreq.store.rows import dump
from cdnreq.store.url import PostgresAt

if TYPE_CHECKING:
    import ssl

    from cdnreq.metrics import Metrics

_T = TypeVar("_T")

CLOSE_S = 5.0  # a clean close takes milliseconds; a partitioned database never answers
COMMAND_TIMEOUT_S = 60.0  # one statement; a commit of 100,000 rows takes seconds


class PgStore(SqlReads, SqlWrites):
    """The store on PostgreSQL. Build it with `await PgStore.open(...)`."""

    def __init__(self, at: PostgresAt, pool: asyncpg.Pool, version: int, *, holder: str):
        self.at = at
        self._pool = pool
        self.schema_version = version
        self.holder = holder
        self.lease = Lease(self._run, holder, at.display())
        self._busy = asyncio.Lock()  # one write transaction at a time, as on SQLite
        self._connect_kw: dict[str, Any] = {}  # how open() connected: for connect_one
        self._closed = False

    @property
    def path(self) -> Path:
        return Path(self.at.display().replace("://", ":"))

    @property
    def name(self) -> str:
        return self.at.display()

    @classmethod
    async def open(
        cls, at: PostgresAt, *, holder: str, password: str | None = None, ssl: ssl.SSLContext | bool | None = None,
        lease_s: float | None = None, connect_timeout_s: float = 10.0,
    ) -> "PgStore":
        """Connect. With `lease_s`, take the lease now (StoreLocked naming the
        node that holds it) and migrate: `cdnreq once`, the commands that
        write. Without, only read the schema version: a daemon leads later,
        through its leadership loop, and migrates then."""
        try:
            pool = await asyncpg.create_pool(
                host=at.host, port=at.port, user=at.user, database=at.database, password=password, ssl=ssl,
                min_size=1, max_size=4, timeout=connect_timeout_s, command_timeout=COMMAND_TIMEOUT_S,
                init=_session_settings(lease_s),
            )
        except (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
            raise StoreUnreachable(f"{at.display()}: cannot connect: {type(exc).__name__}: {exc}") from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # refused: a wrong password, no such database
            raise StoreError(f"{at.display()}: cannot connect: {type(exc).__name__}: {exc}") from exc
        store = cls(at, pool, 0, holder=holder)
        store._connect_kw = dict(host=at.host, port=at.port, user=at.user, database=at.database, password=password,
                                 ssl=ssl, timeout=connect_timeout_s)
        try:
            if lease_s is not None:
                await store.lease.take_or_refuse(lease_s)
                store.schema_version = await store.migrate()
            else:
                store.schema_version = await store._run(lambda c: read_version(c, at.display()))
        except BaseException:
            await _close_pool(pool)
            raise
        return store

    # -- leadership (cdnreq.store.pglease) ------------------------------------

    async def connect_one(self) -> asyncpg.Connection:
        """A connection outside the pool, for another thread's loop (cdnreq.store.pgkeeper)."""
        return await asyncpg.connect(**self._connect_kw)

    @property
    def term(self) -> Term | None:
        return self.lease.term

    async def migrate(self) -> int:
        """Bring the schema to the latest version; only the leader may."""
        return await self._write_turn(lambda c: migrate_pg(c, self.name))

    # -- plumbing ------------------------------------------------------------

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        if self._closed:
            raise StoreError(f"{self.name}: the store is closed")
        try:
            async with self._pool.acquire() as conn:
                try:
                    return await work(conn)
                except asyncpg.exceptions.InternalClientError:
                    drop(conn)  # left mid-operation (a server restart): no later statement can use it
                    raise
                except asyncio.TimeoutError:
                    drop(conn)  # past the command timeout: never back to the pool (cdnreq.store.pgconn)
                    raise
        except asyncpg.exceptions.InternalClientError as exc:  # one failed statement, never a crash
            raise StoreError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except asyncio.TimeoutError as exc:  # a partition, or a server too busy: passing, and said so
            raise StoreUnreachable(f"{self.name}: no answer within {COMMAND_TIMEOUT_S:g} s") from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        args = tuple(params)
        if any(a.__class__ is str and "\x00" in a for a in args):
            return []  # a key (guid, host, name) never holds a NUL: nothing matches one (PostgreSQL refuses it)
        rows = await self._run(lambda c: c.fetch(postgres(sql), *args))
        return [tuple(r) for r in rows]

    async def _write_turn(self, work: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """`work` in one transaction opened by the fence; shielded like a
        commit. NotLeading, and nothing written, when the lease is not held."""

        async def turn() -> _T:
            async with self._busy:
                await self.lease.refresh()  # a term run out during a busy stretch, renewed if still ours
                term = self.lease.fence_term()

                async def fenced(conn: asyncpg.Connection) -> _T:
                    async with transaction(conn):
                        await self.lease.check(conn, term)
                        return await work(conn)

                return await self._run(fenced)

        return await _shielded(turn())

    async def _apply(self, steps: list[tuple[str, list[Any]]]) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            for sql, rows in steps:
                await conn.executemany(postgres(sql), [_pg_row(r) for r in rows])

        try:
            await self._write_turn(work)
        except NotLeading:
            raise
        except StoreError as exc:
            raise StoreError(f"{self.name}: commit failed, nothing written: {exc}") from exc

    async def close(self) -> None:
        """Hand the lease over and close the connections, each within
        CLOSE_S: a partitioned database answers neither (asyncpg would wait
        for ever), and a stop must not hang on it: the lease expires by
        itself, the server drops the sessions."""
        if self._closed:
            return
        try:
            if self.lease.term is not None:  # else, or failing, it expires by itself
                await _at_most(self.lease.release(), "cdnreq lease release")
        finally:
            self._closed = True
            await _close_pool(self._pool)

    # -- the tick's reads ----------------------------------------------------

    async def _some(self, select: str, guids: Iterable[str]) -> list[tuple[Any, ...]]:
        wanted = sorted(set(guids))
        if not wanted:
            return []
        rows = await self._run(lambda c: c.fetch(postgres(select) + " WHERE guid = ANY($1::text[])", wanted))
        return [tuple(r) for r in rows]

    # -- reads on demand -----------------------------------------------------

    async def phases(self) -> dict[str, int]:
        """Instances by phase (what a standby shows of the cluster's work)."""
        return {phase: int(n) for phase, n in await self._all("SELECT phase, COUNT(*) FROM instances GROUP BY phase")}

    # -- writes (the leader's, fenced) ---------------------------------------

    async def clear_guard(self, name: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True)
        await self._write_turn(lambda c: c.execute(postgres("DELETE FROM guards WHERE name = ? AND value = ?"), name, text))

    async def after_copy(self) -> None:
        """Identity columns go on after the ids a copy wrote (cdnreq.store.copying)."""

        async def work(conn: asyncpg.Connection) -> None:
            for table in ("events", "ticks", "imports", "import_findings", "deliveries"):
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                   f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")

        await self._write_turn(work)

    def lost(self) -> str | None:
        """None: the database stays the one opened. Losing the lease is the
        election's business (cdnreq.service.leader), not a lost store."""
        return None

    async def begin_tick(self, started_at: float) -> int:
        return int(await self._write_turn(
            lambda c: c.fetchval("INSERT INTO ticks (started_at) VALUES ($1) RETURNING id", started_at)
        ))

    async def end_tick(self, tick_id: int, *, finished_at: float, result: str, summary: Mapping[str, Any]) -> None:
        try:
            text = dump(summary)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self.name}: cannot encode tick summary: {exc}") from exc
        status = await self._write_turn(lambda c: c.execute(
            "UPDATE ticks SET finished_at = $1, result = $2, summary = $3 WHERE id = $4",
            finished_at, result, text, tick_id,
        ))
        if not status.endswith(" 1"):
            raise StoreError(f"{self.name}: no tick {tick_id} to end")

    async def end_unfinished_ticks(self, now: float, error: str) -> list[int]:
        """Ticks begun and never ended (the last leader died mid-tick), ended as interrupted."""
        text = dump({"ok": False, "interrupted": True, "error": error})
        rows = await self._write_turn(lambda c: c.fetch(
            "UPDATE ticks SET finished_at = $1, result = 'interrupted', summary = $2 WHERE finished_at IS NULL "
            "RETURNING id", now, text,
        ))
        return sorted(int(r[0]) for r in rows)

    def size_bytes(self) -> int:
        """Not known without a query; the database's size is PostgreSQL's to report (0)."""
        return 0

    async def backup(self, dest: Any, *, now: float | None = None) -> Path:
        raise StoreError(BACKUPS_ARE_POSTGRES)

    async def prune_if_due(self, days: int, now: float) -> PruneReport | None:
        from cdnreq.store.pgprune import prune_if_due

        return await prune_if_due(self, days, now)

    async def prune_passes(
        self, days: Callable[[], int], stop: asyncio.Event, *, metrics: Metrics | None = None
    ) -> None:
        from cdnreq.store.pgprune import prune_passes

        await prune_passes(self, days, stop, metrics=metrics)


def _pg_row(row: Iterable[Any]) -> tuple[Any, ...]:
    """A row as PostgreSQL takes it: text cannot hold NUL there (SQLite's can),
    so a NUL in free text (an error naming a customer's value) is written as
    the escape `\\u0000` instead of failing the whole commit."""
    return tuple(v.replace("\x00", "\\u0000") if v.__class__ is str and "\x00" in v else v for v in row)


def _session_settings(lease_s: float | None) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """Each connection's settings: a transaction left open by a paused or cut
    off node is ended by the server, so its row locks cannot hold a takeover."""
    idle_ms = int(1000 * (lease_s if lease_s is not None else 15.0))

    async def init(conn: asyncpg.Connection) -> None:
        await conn.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")

    return init


async def _shielded(work: Awaitable[_T]) -> _T:
    """As the SQLite engine's: a transaction runs to its end even when its caller is cancelled."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)


async def _at_most(work: Coroutine[Any, Any, Any], name: str) -> bool:
    """`work` given CLOSE_S; True when it ended (its error, if any, dropped).
    Past that it is abandoned (aiotasks.abandon): cancelling a query sends
    the server a cancel request, which a partitioned server never answers."""
    try:
        await within(work, CLOSE_S, name)
    except asyncio.TimeoutError:
        return False
    except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        pass  # ended, failing: the lease expires by itself, the server drops the sessions
    return True


async def _close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully within CLOSE_S, else drop the connections."""
    if not await _at_most(pool.close(), "cdnreq store close"):
        pool.terminate()

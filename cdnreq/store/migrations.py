"""Schema history, replayed in order so any old database can be brought up to date.

Migrations are append-only: never edit one that has shipped, add a new one.
Each runs in its own transaction together with the version bump, so a crash
leaves the database at a version it really has.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Callable, Final

import aiosqlite

from cdnreq.store.errors import SchemaTooNew, StoreError
from cdnreq.store.feedgaps import FEED_RESTORED, gaps_of

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (
        1,
        "instances, events, ticks",
        """
        CREATE TABLE schema_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        );
        CREATE TABLE migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at REAL NOT NULL
        );
        CREATE TABLE instances (
            guid TEXT PRIMARY KEY,
            title TEXT NOT NULL UNIQUE,
            phase TEXT NOT NULL,
            param_hash TEXT,
            requested_state TEXT,
            spec_hash TEXT,
            tech_guid TEXT,
            connection TEXT,
            published TEXT,
            published_error TEXT,
            last_action TEXT,
            last_error TEXT,
            failures INTEGER NOT NULL DEFAULT 0,
            retry_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX instances_phase ON instances (phase);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            tick INTEGER,
            instance_guid TEXT NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX events_instance ON events (instance_guid, id);
        CREATE TABLE ticks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            finished_at REAL,
            result TEXT,
            summary TEXT
        );
        """,
    ),
    (
        2,
        "served hosts and retention on instances; host claims; DNS challenges",
        """
        ALTER TABLE instances ADD COLUMN served TEXT;
        ALTER TABLE instances ADD COLUMN gone_at REAL;
        CREATE TABLE hosts (
            host TEXT PRIMARY KEY,
            guid TEXT NOT NULL,
            registrable TEXT NOT NULL,
            proven_at REAL NOT NULL,
            checked_at REAL NOT NULL,
            failing_since REAL
        );
        CREATE INDEX hosts_guid ON hosts (guid);
        CREATE INDEX hosts_registrable ON hosts (registrable);
        CREATE TABLE challenges (
            guid TEXT PRIMARY KEY,
            domain TEXT NOT NULL,
            salt TEXT NOT NULL,
            token TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
    (
        3,
        "guard state kept between ticks (held updates, removal window, approvals)",
        """
        CREATE TABLE guards (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
    (
        4,
        "history pruned past [store].events_retention_days: events indexed by instance and action;"
        " incremental auto-vacuum",
        # Pruning keeps each instance's newest event of every action: with
        # the action in the index, "is there a newer one?" is one seek.
        # (The switch to auto_vacuum=INCREMENTAL needs a VACUUM, which cannot
        # run in a transaction: see incremental_auto_vacuum.)
        """
        DROP INDEX events_instance;
        CREATE INDEX events_instance_action ON events (instance_guid, action, id);
        """,
    ),
    (
        5,
        "imports from the cron requester and what they found",
        """
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            source TEXT NOT NULL,
            summary TEXT NOT NULL
        );
        CREATE TABLE import_findings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            import_id INTEGER NOT NULL,
            guid TEXT NOT NULL,
            reference TEXT NOT NULL,
            kind TEXT NOT NULL,
            host TEXT,
            found TEXT NOT NULL,
            decision TEXT NOT NULL
        );
        CREATE INDEX import_findings_guid ON import_findings (guid);
        """,
    ),
    (
        6,
        "the domain step's verdicts and settled gates, kept for a restart (cdnreq/decide/kept.py)",
        """
        CREATE TABLE decisions (
            guid TEXT PRIMARY KEY,
            param_hash TEXT NOT NULL,
            stamp TEXT NOT NULL,
            verdict TEXT,
            gate TEXT,
            claims TEXT,
            next_lookup REAL
        );
        """,
    ),
    (
        7,
        "instances asleep: the mark a restart trusts to keep them asleep (cdnreq/decide/dormancy.py)",
        """
        ALTER TABLE instances ADD COLUMN sleep TEXT;
        CREATE INDEX instances_asleep ON instances (guid) WHERE sleep IS NOT NULL;
        """,
    ),
    (
        8,
        "the change feed (one row per customer-visible change, ids without gaps) and its webhook outbox",
        """
        CREATE TABLE changes (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            instance_guid TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL
        );
        CREATE INDEX changes_instance ON changes (instance_guid, id);
        CREATE TABLE feed_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            last_id INTEGER NOT NULL
        );
        INSERT INTO feed_state (id, last_id) VALUES (1, 0);
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            consumer TEXT NOT NULL,
            change_id INTEGER NOT NULL,
            instance_guid TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            first_at REAL,
            next_at REAL NOT NULL,
            last_error TEXT,
            dead_at REAL,
            UNIQUE (consumer, change_id)
        );
        CREATE INDEX deliveries_instance ON deliveries (consumer, instance_guid, change_id);
        CREATE TABLE consumer_cursors (
            consumer TEXT PRIMARY KEY,
            cursor INTEGER NOT NULL
        );
        ALTER TABLE instances ADD COLUMN live_at REAL;
        UPDATE instances SET live_at = updated_at WHERE phase = 'live';
        """,
    ),
    (
        9,
        "customers' titles (the feed's title scopes): stored once per instance, copied onto each change",
        """
        CREATE TABLE names (
            guid TEXT PRIMARY KEY,
            name TEXT NOT NULL
        );
        ALTER TABLE changes ADD COLUMN name TEXT;
        """,
    ),
)

LATEST: Final[int] = MIGRATIONS[-1][0]

assert [m[0] for m in MIGRATIONS] == list(range(1, LATEST + 1)), "versions must be 1..N"


def split_statements(sql: str) -> list[str]:
    """Split a script into statements, so they can run inside our own transaction.

    (`executescript` would commit first, breaking the one-transaction rule.)
    """
    statements: list[str] = []
    current = ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {current.strip()!r}")
    return statements


async def _version(conn: aiosqlite.Connection, path: str) -> int:
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ) as cur:
        tables = {row[0] for row in await cur.fetchall()}
    if "schema_version" not in tables:
        if tables:
            raise StoreError(
                f"{path} is not a cdnreq database (it has tables "
                f"{', '.join(sorted(tables))} but no schema_version)"
            )
        return 0
    async with conn.execute("SELECT version FROM schema_version WHERE id = 1") as cur:
        row = await cur.fetchone()
    if row is None:
        raise StoreError(f"{path} is not a usable cdnreq database (schema_version is empty)")
    return int(row[0])


async def read_version(conn: aiosqlite.Connection, path: str) -> int:
    """The schema version, for a reader that must not migrate."""
    try:
        return await _version(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a cdnreq database (not SQLite: {exc})") from exc


def _too_new(path: str, version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"database {path} has schema version {version}, newer than this cdnreq "
        f"knows ({LATEST}): upgrade cdnreq or use the matching database"
    )


FEED_MIGRATION: Final[int] = 8  # creates the change feed


async def _feed_past_restored_gaps(conn: aiosqlite.Connection) -> None:
    """A backup from before the feed, restored over a store whose feed was
    followed, holds only the gap of ids that store may have given
    (store/feedgaps.skip_lost_ids): its new feed starts past it, or its
    first changes would take ids the consumers already saw."""
    async with conn.execute("SELECT value FROM guards WHERE name = ?", (FEED_RESTORED,)) as cursor:
        row = await cursor.fetchone()
    try:
        gaps = gaps_of(json.loads(row[0])) if row is not None else ()
    except ValueError:
        gaps = ()
    if gaps:
        await conn.execute("UPDATE feed_state SET last_id = ? WHERE id = 1", (max(t for _, t in gaps),))


async def migrate(conn: aiosqlite.Connection, path: str) -> int:
    """Bring the database to LATEST; return the version it ends at.

    The connection must be in autocommit mode (isolation_level=None). The
    version is re-read under the write lock, so two processes opening a fresh
    database at once cannot both apply the same migration.
    """
    try:
        version = await _version(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a cdnreq database (not SQLite: {exc})") from exc
    if version > LATEST:
        raise _too_new(path, version)
    for number, description, sql in MIGRATIONS:
        if number <= version:
            continue
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                current = await _version(conn, path)
                if current > LATEST:
                    raise _too_new(path, current)
                if current < number:
                    for statement in split_statements(sql):
                        await conn.execute(statement)
                    if number == FEED_MIGRATION:
                        await _feed_past_restored_gaps(conn)
                    await conn.execute(
                        "INSERT INTO schema_version (id, version) VALUES (1, ?) "
                        "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                        (number,),
                    )
                    await conn.execute(
                        "INSERT INTO migrations (version, description, applied_at) "
                        "VALUES (?, ?, ?)",
                        (number, description, time.time()),
                    )
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: migration {number} ({description}) failed: {exc}") from exc
        version = max(version, number)
    return version


# SQLite's PRAGMA auto_vacuum values
_INCREMENTAL: Final[int] = 2


async def incremental_auto_vacuum(
    conn: aiosqlite.Connection, path: str, *, before: Callable[[], None] | None = None
) -> float | None:
    """Switch the file to auto_vacuum=INCREMENTAL, so pages freed by pruning
    can be given back to the file system a few at a time; return the seconds
    the switch took, or None when the file was already switched.

    An existing file only switches through a full VACUUM (one long write, a
    temporary copy of the database's size): only the writer holding the store
    lock calls this, after `migrate`, and it happens once per file. `before`
    is called just before the VACUUM starts (to say why the start is slow).
    """
    try:
        async with conn.execute("PRAGMA auto_vacuum") as cur:
            row = await cur.fetchone()
        if row is not None and int(row[0]) == _INCREMENTAL:
            return None
        if before is not None:
            before()
        began = time.monotonic()
        await conn.execute(f"PRAGMA auto_vacuum = {_INCREMENTAL}")
        await conn.execute("VACUUM")
        return time.monotonic() - began
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot switch to incremental auto-vacuum (VACUUM failed: {exc})") from exc

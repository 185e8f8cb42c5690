"""The versioned schema on PostgreSQL: cdnreq.store.migrations' list,
translated (cdnreq.store.dialect), applied in order, each migration in one
transaction with its version bump, as on SQLite. Only the leader migrates
(inside its fenced transaction); an advisory lock keeps even two leaders of
an upgrade from applying the same migration twice.
"""

from __future__ import annotations

import time

import asyncpg

from cdnreq.store.dialect import postgres
from cdnreq.store.errors import SchemaTooNew, StoreError
from cdnreq.store.pgconn import transaction
from cdnreq.store.migrations import LATEST, MIGRATIONS, split_statements

_LOCK = 0x63646E72  # "cdnr": the migrations' advisory lock

_TABLES = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema() AND table_name <> 'cdnreq_lease'"
)


async def read_version(conn: asyncpg.Connection, name: str) -> int:
    """The schema version; 0 for an empty database; StoreError for a database that is not cdnreq's."""
    tables = {r[0] for r in await conn.fetch(_TABLES)}
    if "schema_version" not in tables:
        if tables:
            raise StoreError(f"{name} is not a cdnreq database (it has tables {', '.join(sorted(tables))} "
                             "but no schema_version)")
        return 0
    version = await conn.fetchval("SELECT version FROM schema_version WHERE id = 1")
    if version is None:
        raise StoreError(f"{name} is not a usable cdnreq database (schema_version is empty)")
    return int(version)


def too_new(name: str, version: int) -> SchemaTooNew:
    return SchemaTooNew(f"database {name} has schema version {version}, newer than this cdnreq knows ({LATEST}): "
                        "upgrade cdnreq or use the matching database")


async def migrate_pg(conn: asyncpg.Connection, name: str) -> int:
    """Bring the schema to LATEST inside the caller's transaction; the version it ends at."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
    version = await read_version(conn, name)
    if version > LATEST:
        raise too_new(name, version)
    for number, description, sql in MIGRATIONS:
        if number <= version:
            continue
        try:
            async with transaction(conn):  # a savepoint: the migration and its bump, or neither
                for statement in split_statements(sql):
                    await conn.execute(postgres(statement))
                await conn.execute(
                    "INSERT INTO schema_version (id, version) VALUES (1, $1) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version", number,
                )
                await conn.execute(
                    "INSERT INTO migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                    number, description, time.time(),
                )
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{name}: migration {number} ({description}) failed: {exc}") from exc
        version = number
    return version

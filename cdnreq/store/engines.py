"""Which engine holds the store, from `[store].url`: the one place that
opens either (the rest of cdnreq names cdnreq.store.interface only).

SQLite (the default, `[daemon].database` when no URL is set) or PostgreSQL
(several nodes, one leader: cdnreq.store.postgres). `lock=True` is a
writer's open: SQLite's lock file, or PostgreSQL's leader lease, taken now
(StoreLocked while another process or node holds it). A daemon on
PostgreSQL opens without it and leads through its leadership loop.
"""

from __future__ import annotations

import os
import socket
import ssl
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from cdnreq.store.errors import StoreError
from cdnreq.store.url import PostgresAt, SqliteAt, StoreAt, StoreUrlError, parse_store_url

if TYPE_CHECKING:
    from cdnreq.config import Config
    from cdnreq.store.interface import Engine


def store_at(config: Config) -> StoreAt:
    """Where the configured store is (the URL was checked when the file was loaded)."""
    url = config.store.url
    return SqliteAt(config.daemon.database) if url is None else parse_store_url(url)


def is_postgres(config: Config) -> bool:
    return isinstance(store_at(config), PostgresAt)


def store_missing(config: Config) -> str | None:
    """Why there is no store to read yet ("no database at PATH"), or None.
    A SQLite file may not exist yet; a PostgreSQL database is there to read
    (what it holds, or that it cannot be reached, the reading tells)."""
    at = store_at(config)
    if isinstance(at, SqliteAt) and not at.path.exists():
        return f"no database at {at.path}"
    return None


def holder_id(config: Config) -> str:
    """This process's name in the lease: the node's name, its pid and a
    random part, so a restarted node never mistakes its predecessor's lease
    for its own."""
    node = config.store.node_name or socket.gethostname() or "node"
    return f"{node}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def ssl_of(config: Config) -> ssl.SSLContext | bool:
    """The TLS PostgreSQL's connections use, by `[store].sslmode` (libpq's meanings)."""
    mode, ca = config.store.sslmode, config.store.ssl_ca_file
    if mode == "disable":
        return False
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as error:
        raise StoreError(f"[store].ssl_ca_file = {str(ca)!r} cannot be used: {error}") from error
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    return context


def read_password(path: Path | None) -> str | None:
    """The password from `[store].password_file` (its first line), or None."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise StoreError(f"[store].password_file = {str(path)!r} cannot be read: {error}") from error
    password = text.splitlines()[0] if text else ""
    if not password:
        raise StoreError(f"[store].password_file = {str(path)!r} is empty")
    return password


async def open_engine(config: Config, *, lock: bool = True, lead: bool | None = None) -> Engine:
    """The configured store. On PostgreSQL, `lead` (default: `lock`) takes the
    lease now and migrates; without it the store only reads until a
    leadership loop makes this node lead."""
    try:
        at = store_at(config)
    except StoreUrlError as error:
        raise StoreError(f"[store].url: {error}") from None
    return await open_at(config, at, lock=lock, lead=lead)


async def open_at(config: Config, at: StoreAt, *, lock: bool = True, lead: bool | None = None) -> Engine:
    """The store at `at`, with [store]'s password file and TLS for PostgreSQL."""
    if isinstance(at, SqliteAt):
        from cdnreq.store.sqlite import Store

        return await Store.open(at.path, lock=lock)
    from cdnreq.store.postgres import PgStore

    lead = lock if lead is None else lead
    return await PgStore.open(
        at, holder=holder_id(config), password=read_password(config.store.password_file), ssl=ssl_of(config),
        lease_s=config.store.lease_s if lead else None,
    )

"""A PostgreSQL connection that did not answer within the command timeout
is dropped, never given back to the pool nor asked for a ROLLBACK.

On a timeout, asyncpg sends the server a cancel request and waits, up to
the command timeout again, for the connection to acknowledge it: the pool
waits for that before it takes the connection back, and a transaction's
ROLLBACK waits behind it. A connection gone dead (a partition that healed
without a reset, the old primary's address gone quiet) never acknowledges,
so each would double the time a statement may take. Dropped, the session
ends, and the server rolls back whatever it had begun.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg


def drop(conn: Any) -> None:
    """Close `conn` at once, without a word to the server (already gone back
    to the pool: asyncpg's background cancel ended it first)."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


@contextlib.asynccontextmanager
async def transaction(conn: Any) -> AsyncIterator[None]:
    """As `conn.transaction()` (a savepoint when nested), except that a
    statement past the command timeout drops the connection instead of
    waiting for a ROLLBACK the server may never answer."""
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except asyncio.TimeoutError:
        drop(conn)
        raise
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()

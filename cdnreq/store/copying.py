"""Copying a whole store from one engine to another (`cdnreq migrate-store`),
offline, verified by each table's row count and digest.

Every table of the schema is copied row for row, ids included (events keep
their ids, so nothing that points at one breaks). The destination must be
empty. A guard row marks it as being copied from the first write to the
last: a daemon refuses to start on a copy that did not finish (`copying`).
Values are compared as the destination holds them: numbers as floats
(SQLite keeps 1 in a REAL column as an integer, PostgreSQL as 1.0) and, on
PostgreSQL, a NUL in text as the escape `\\u0000` the engine writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from cdnreq.store.errors import StoreError
from cdnreq.store.interface import Engine

COPYING = "store-copy"  # the guard row present while a copy is unfinished
CHUNK_ROWS = 5000

# every table of the schema but the engine's own bookkeeping (schema_version,
# migrations): name, key (rows are read in its order), columns
TABLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("instances", "guid", ("guid", "title", "phase", "param_hash", "requested_state", "spec_hash", "tech_guid",
                           "connection", "published", "published_error", "last_action", "last_error", "failures",
                           "retry_at", "created_at", "updated_at", "served", "gone_at", "sleep", "live_at")),
    ("hosts", "host", ("host", "guid", "registrable", "proven_at", "checked_at", "failing_since")),
    ("challenges", "guid", ("guid", "domain", "salt", "token", "created_at")),
    ("decisions", "guid", ("guid", "param_hash", "stamp", "verdict", "gate", "claims", "next_lookup")),
    ("guards", "name", ("name", "value", "updated_at")),
    ("events", "id", ("id", "at", "tick", "instance_guid", "action", "outcome", "detail")),
    ("ticks", "id", ("id", "started_at", "finished_at", "result", "summary")),
    ("imports", "id", ("id", "at", "source", "summary")),
    ("import_findings", "id", ("id", "import_id", "guid", "reference", "kind", "host", "found", "decision")),
    ("changes", "id", ("id", "at", "instance_guid", "kind", "payload", "name")),
    ("feed_state", "id", ("id", "last_id")),
    ("deliveries", "id", ("id", "consumer", "change_id", "instance_guid", "attempts", "first_at", "next_at",
                          "last_error", "dead_at")),
    ("consumer_cursors", "consumer", ("consumer", "cursor")),
    ("names", "guid", ("guid", "name")),
)


@dataclass
class CopyReport:
    """What was copied: rows and digest by table, NULs escaped, seconds."""

    rows: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    escaped: int = 0
    seconds: float = 0.0


def normal(value: Any, escape_nul: bool) -> Any:
    """A value as both engines compare equal: numbers as floats, text as the destination stores it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if escape_nul and isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\\u0000")
    return value


class Digest:
    """A table's rows as one SHA-256, whatever order they come in: the sum
    (mod 2**256) of each row's SHA-256. Each engine reads its rows in its
    own order of the key, and a PostgreSQL database's collation (en_US, ICU)
    orders text keys otherwise than SQLite's bytes: a digest of the rows in
    the order read differed for an exact copy."""

    def __init__(self, escape_nul: bool):
        self.sum, self.rows, self.escape_nul = 0, 0, escape_nul

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for row in rows:
            line = json.dumps([normal(v, self.escape_nul) for v in row], ensure_ascii=True)
            self.sum += int.from_bytes(hashlib.sha256(line.encode("ascii")).digest(), "big")
            self.rows += 1

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self.rows}:{self.sum % 2**256:064x}".encode("ascii")).hexdigest()


async def chunks(store: Any, table: str, key: str, columns: tuple[str, ...]):
    """The table's rows in key order (the engine's), CHUNK_ROWS at a time
    (keyset pagination). A row with a NULL key (a hand-edited SQLite file:
    a TEXT PRIMARY KEY takes one) is not read, as by the store's own reads
    (cdnreq.store.reads): a page of them was read again and again for ever."""
    select = f"SELECT {', '.join(columns)} FROM {table} WHERE {key} IS NOT NULL"
    at = columns.index(key)
    last: Any = None
    while True:
        if last is None:
            rows = await store._all(f"{select} ORDER BY {key} LIMIT ?", (CHUNK_ROWS,))
        else:
            rows = await store._all(f"{select} AND {key} > ? ORDER BY {key} LIMIT ?", (last, CHUNK_ROWS))
        if not rows:
            return
        yield [tuple(r) for r in rows]
        last = rows[-1][at]


async def digest_of(store: Any, escape_nul: bool = False) -> dict[str, tuple[int, str]]:
    """Each table's row count and digest (without the copy's own mark)."""
    found = {}
    for table, key, columns in TABLES:
        digest = Digest(escape_nul)
        async for rows in chunks(store, table, key, columns):
            digest.add(r for r in rows if not (table == "guards" and r[0] == COPYING))
        found[table] = (digest.rows, digest.hexdigest())
    return found


async def copy_store(source: Engine, target: Engine, *, nul_escaped: bool,
                     progress: Callable[[str, int], None] | None = None) -> CopyReport:
    """Copy every table of `source` into the empty `target`, then verify
    both sides' counts and digests (StoreError naming the table that differs)."""
    began = time.monotonic()
    if not await target.is_empty():
        raise StoreError(f"{target.path}: the destination already holds a store; migrate-store fills an empty one")
    report = CopyReport()
    await target.save_guards({COPYING: {"from": str(source.path), "since": time.time()}}, time.time())
    for table, key, columns in TABLES:
        insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        if table == "guards":
            insert += " ON CONFLICT (name) DO NOTHING"  # the copy's own mark stays until the end
        elif table == "feed_state":
            insert += " ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id"  # its row comes with the schema
        copied = 0
        async for rows in chunks(source, table, key, columns):
            if nul_escaped:
                report.escaped += sum(1 for r in rows for v in r if isinstance(v, str) and "\x00" in v)
            await target.commit(also=[(insert, rows)])
            copied += len(rows)
            if progress is not None:
                progress(table, copied)
    after = getattr(target, "after_copy", None)
    if after is not None:
        await after()
    want, got = await digest_of(source, escape_nul=nul_escaped), await digest_of(target, escape_nul=False)
    for table, _, _ in TABLES:
        if want[table] != got[table]:
            raise StoreError(f"{target.path}: the copy of {table} differs from its source "
                             f"({got[table][0]} rows vs {want[table][0]}): drop the destination and copy again")
        report.rows[table], report.digests[table] = want[table]
    await target.save_guards({COPYING: None}, time.time())
    report.seconds = time.monotonic() - began
    return report


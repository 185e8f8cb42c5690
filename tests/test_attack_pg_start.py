"""Attacks on the start of a PostgreSQL cluster: several nodes opening the
same empty database at the same moment (as a fleet does after a deploy or
a power cut). Each must open, exactly one may lead, and the schema is
created once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cdnreq.store import StoreError, StoreLocked
from cdnreq.store.migrations import LATEST
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url

pytestmark = [pytest.mark.postgres]

NODES = 6
ROUNDS = 3


async def _open_all(url: str, lease_s: float | None) -> list[PgStore | BaseException]:
    at = parse_store_url(url)
    return await asyncio.gather(
        *(PgStore.open(at, holder=f"node-{i}", lease_s=lease_s) for i in range(NODES)), return_exceptions=True
    )


async def _close(opened: list[PgStore | BaseException]) -> None:
    for store in opened:
        if isinstance(store, PgStore):
            await store.close()


async def test_standbys_opening_an_empty_database_at_once_all_open(pg_server):
    """A daemon opens without the lease (it leads later): six at once on a
    new database must all open (CREATE TABLE IF NOT EXISTS of the lease
    table is not safe against a concurrent one in PostgreSQL)."""
    failures = []
    for _ in range(ROUNDS):
        url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
        opened = await _open_all(url, None)
        try:
            failures += [f"{type(s).__name__}: {s}" for s in opened if isinstance(s, BaseException)]
        finally:
            await _close(opened)
    assert failures == [], failures


async def test_nodes_taking_the_lease_of_an_empty_database_at_once(pg_server):
    """`cdnreq once` on several nodes at once (the lease taken at the open,
    then migrations): exactly one leads and migrates to the latest schema,
    every other is refused with StoreLocked, never another error."""
    problems = []
    for _ in range(ROUNDS):
        url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
        opened = await _open_all(url, 30.0)
        try:
            leaders = [s for s in opened if isinstance(s, PgStore)]
            others = [s for s in opened if not isinstance(s, PgStore)]
            if len(leaders) != 1:
                problems.append(f"{len(leaders)} leaders")
            problems += [f"{type(e).__name__}: {e}" for e in others if not isinstance(e, StoreLocked)]
            if leaders and leaders[0].schema_version != LATEST:
                problems.append(f"schema {leaders[0].schema_version}")
        finally:
            await _close(opened)
    assert problems == [], problems


async def test_standbys_racing_for_a_lease_no_node_held_yet(pg_server):
    """Six standbys open (one by one), then all try to take the never-held
    lease at the same moment: one term, epoch 1, no error."""
    for _ in range(ROUNDS):
        url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
        at = parse_store_url(url)
        stores = [await PgStore.open(at, holder=f"node-{i}") for i in range(NODES)]
        try:
            terms = await asyncio.gather(*(s.lease.take(30.0) for s in stores), return_exceptions=True)
            errors = [t for t in terms if isinstance(t, BaseException)]
            assert not errors, errors
            held = [t for t in terms if t is not None]
            assert len(held) == 1 and held[0].epoch == 1, terms
        finally:
            for s in stores:
                await s.close()

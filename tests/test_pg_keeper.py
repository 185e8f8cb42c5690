"""The leader lease renewed from the keeper's thread (cdnreq.store.pgkeeper):
a leader whose event loop a big tick keeps busy longer than the lease keeps
it; a loop hung longer than [store].loop_stall_s gives it up to another
node, whose takeover fences the hung node's writes (issue 15: the first
reconcile of 100,000 instances never completed with the default lease)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import SimpleNamespace
from typing import AsyncIterator

import pytest

from cdnreq.model import InstanceGuid, Phase, Record, Title
from cdnreq.store.pgkeeper import LeaseKeeper
from cdnreq.store.postgres import NotLeading, PgStore
from cdnreq.store.url import parse_store_url

pytestmark = pytest.mark.postgres

LEASE_S, RENEW_S = 2.0, 0.4


def rec(guid: str) -> Record:
    return Record(guid=InstanceGuid(guid), title=Title(f"cdn-{guid}"), phase=Phase.NEW, created_at=1.0, updated_at=2.0)


class Rival(threading.Thread):
    """Another node, on its own loop, trying to take the lease every 0.1 s."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.done, self.took, self.ready = url, threading.Event(), None, threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        other = await PgStore.open(parse_store_url(self.url), holder="node-b")
        try:
            self.ready.set()
            while not self.done.is_set() and self.took is None:
                self.took = await other.lease.take(LEASE_S)
                await asyncio.sleep(0.1)
        finally:
            await other.close()


def block_the_loop(seconds: float, rival: Rival | None = None) -> None:
    """The event loop held by synchronous work, as by validating and planning
    100,000 new instances; with a rival, until it took the lease."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (rival is None or rival.took is None):
        time.sleep(0.05)


async def started(url: str, loop_stall_s: float) -> tuple[PgStore, LeaseKeeper]:
    store = await PgStore.open(parse_store_url(url), holder="node-a", lease_s=LEASE_S)
    settings = SimpleNamespace(lease_s=LEASE_S, renew_s=RENEW_S, loop_stall_s=loop_stall_s)
    keeper = LeaseKeeper(store.lease, store.connect_one, lambda: settings)
    keeper.start()
    return store, keeper


@contextlib.asynccontextmanager
async def raced(url: str, loop_stall_s: float) -> AsyncIterator[tuple[PgStore, LeaseKeeper, Rival]]:
    """A leader with its keeper, and a rival trying to take the lease."""
    store, keeper = await started(url, loop_stall_s)
    rival = Rival(url)
    rival.start()
    try:
        rival.ready.wait(10)
        yield store, keeper, rival
    finally:
        rival.done.set()
        rival.join(10)
        await keeper.stop()
        await store.close()


async def test_a_leader_busy_longer_than_its_lease_keeps_it(pg_url):
    async with raced(pg_url, loop_stall_s=30.0) as (store, keeper, rival):
        block_the_loop(3 * LEASE_S)
        assert rival.took is None, "another node took the lease while the leader was only busy"
        assert store.lease.acts() and store.term.epoch == 1
        await store.commit(upserts=[rec("SOFTINST-1")])
        assert set(await store.load()) == {"SOFTINST-1"}
        await asyncio.sleep(0)  # the keeper's probe answered
        assert keeper.longest_stall_s >= 2 * LEASE_S
    assert not keeper.alive()


async def test_a_hung_leader_gives_the_lease_up_and_its_late_writes_are_fenced(pg_url):
    async with raced(pg_url, loop_stall_s=1.0) as (store, keeper, rival):
        block_the_loop(20.0, rival)
        assert rival.took is not None and rival.took.epoch == 2, "no other node took over from a hung leader"
        with pytest.raises(NotLeading):
            await store.commit(upserts=[rec("SOFTINST-1")])
        assert await store.load() == {}
        assert not store.lease.acts()


async def test_the_keeper_stops_renewing_a_released_lease(pg_url):
    """A clean stop hands the lease over at once, the keeper running or not."""
    store, keeper = await started(pg_url, loop_stall_s=30.0)
    try:
        await store.lease.release()
        block_the_loop(3 * RENEW_S)
        row = await store.lease.leader()
        assert row is not None and row[2] <= 0, "the released lease was renewed"
    finally:
        await keeper.stop()
        await store.close()

"""Attack on the lease keeper (cdnreq.store.pgkeeper): a keeper whose own
connection cannot be made (one connection more than before: a role's
CONNECTION LIMIT, max_connections) stays alive, so the election loop never
renews on the pool that works, and the leader loses its lease every lease_s
and takes it again (each takeover re-migrates, ends ticks, re-reads)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from cdnreq.decide.leadership import Term
from cdnreq.service.leader import Leadership, take_over
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url

LEASE_S, RENEW_S = 2.0, 0.4


@pytest.mark.postgres
async def test_a_keeper_that_cannot_connect_does_not_cost_a_healthy_leader_its_lease(pg_url):
    store = await PgStore.open(parse_store_url(pg_url), holder="node-a", lease_s=LEASE_S)

    async def refused():
        raise OSError("FATAL: too many connections for role")

    store.connect_one = refused  # type: ignore[method-assign]
    stop = asyncio.Event()
    settings = SimpleNamespace(lease_s=LEASE_S, renew_s=RENEW_S, loop_stall_s=30.0)
    leadership = Leadership(store, lambda: settings, stop)  # type: ignore[arg-type]
    task = asyncio.create_task(leadership.run())
    epochs, lost = set(), set()
    try:
        deadline = time.monotonic() + 4 * LEASE_S
        while time.monotonic() < deadline:  # the event loop free: the pool answers all along
            term = store.lease.term
            epochs.add(None if term is None else term.epoch)
            if store.lease.lost:
                lost.add(store.lease.lost)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await store.close()
    assert epochs == {1} and not lost, f"epochs seen {epochs}, lost: {lost}"


class _Metric:
    def set(self, value) -> None:
        pass


async def test_take_over_survives_the_keeper_stepping_down_between_its_reads():
    """The keeper's thread may set the term to None between take_over's
    leading() and its `store.term.epoch` (no await between them, but another
    thread): simulated by a term that is gone at the second read."""

    class Store:
        def __init__(self) -> None:
            self.lease, self.reads = SimpleNamespace(bound=None, lost=None, holder="n"), 0

        @property
        def term(self):
            self.reads += 1
            return Term("n", 1, time.monotonic() + 60) if self.reads == 1 else None

        async def migrate(self) -> int:
            return 9

        async def load_guards(self) -> dict:
            return {}

        async def end_unfinished_ticks(self, now: float, why: str) -> list:
            return []

    store = Store()
    leadership = Leadership(store, lambda: SimpleNamespace(renew_s=0.01), asyncio.Event())  # type: ignore[arg-type]
    metrics = SimpleNamespace(leader=_Metric(), lease_epoch=_Metric())
    reconciler = SimpleNamespace(reread=lambda: None)
    await take_over(leadership, store, reconciler, metrics)  # AttributeError: 'NoneType' ... 'epoch'


async def test_a_keeper_stopped_right_after_its_start_ends():
    """stop() signals the thread through the loop and event the thread makes
    itself: called before they exist, the signal is lost, stop() waits JOIN_S
    and returns with the thread still running (renewing, were a term held)."""
    from cdnreq.store.pgkeeper import LeaseKeeper

    lease = SimpleNamespace(term=None, lease_s=None)
    settings = SimpleNamespace(lease_s=15.0, renew_s=30.0, loop_stall_s=120.0)
    keeper = LeaseKeeper(lease, None, lambda: settings)  # type: ignore[arg-type]
    keeper.start()
    began = time.monotonic()
    await keeper.stop()
    assert not keeper.alive(), f"the keeper outlived its stop ({time.monotonic() - began:.1f} s waited)"

"""`cdnreq once`: one pass with the daemon's own parts, then the history's pruning.

One pass is one tick, or more when new instances wait for admission
([daemon].admit_per_tick): each further tick takes on the next of them, as
the daemon does, until every listed instance has been planned once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Coroutine

import structlog

from cdnreq.aiotasks import abandon, spawn
from cdnreq.config import Config
from cdnreq.fdlimit import fit_config, raise_fd_limit
from cdnreq.preflight import check
from cdnreq.reconcile.tick import Reconciler, TickReport
from cdnreq.service.leader import Leadership, leadership_of
from cdnreq.service.opening import open_checked
from cdnreq.wiring import master_client

log = structlog.get_logger("cdnreq.once")

LOST = "the leader lease was lost"  # how a pass given up with its lease is reported
LEASE_POLL_S = 0.2


async def run_once(config: Config, *, fresh: bool = False, config_path: Path | None = None) -> TickReport:
    context = check(config, config_path or "(configuration)")
    config = fit_config(config, raise_fd_limit())
    store = await open_checked(config, fresh=fresh, config_path=config_path)
    # PostgreSQL: the lease taken at the open is renewed while the tick runs
    leadership = leadership_of(store, lambda: config.store, stop := asyncio.Event())
    renewing = spawn(leadership.run(), "cdnreq lease") if leadership is not None else None
    try:
        async with master_client(config, ssl_context=context,
                                 may_call=None if leadership is None else leadership.may_call,
                                 before_call=None if leadership is None else leadership.refresh) as master:
            reconciler = Reconciler(config=config, store=store, master=master)
            try:
                report = await _until_lost(_pass(reconciler), leadership)
            finally:
                await reconciler.resolver.close()
        if report.error is None or not report.error.startswith(LOST):
            # after the tick, whatever its result: `once` from a timer keeps the history
            # bounded too, at one pass an hour however often it runs
            await store.prune_if_due(config.store.events_retention_days, time.time())
        return report
    finally:
        stop.set()
        if renewing is not None:
            renewing.cancel()
        await store.close()



async def _pass(reconciler: Reconciler) -> TickReport:
    await reconciler.load()
    report = await reconciler.tick()
    while report.ok and report.admit_again:  # one pass takes every listed instance on
        report = await reconciler.tick(at_once=True)
    return report


async def _until_lost(work: Coroutine[Any, Any, TickReport], leadership: Leadership | None) -> TickReport:
    """The pass, given up once the lease is lost (PostgreSQL): a partitioned
    database would keep it waiting a command timeout per statement while
    another node may lead. What it committed stays; what it did not, the
    next pass or leader redoes (every action is safe to repeat)."""
    started = time.time()
    passing = spawn(work, "cdnreq once pass")
    if leadership is None:
        return await passing
    while not passing.done():
        if not leadership.leading():
            abandon(passing)
            why = leadership.store.lease.lost or "not renewed"
            log.error("pass given up: the leader lease was lost; is the database reachable?", reason=why,
                      database=getattr(leadership.store, "name", None))
            return TickReport(id=0, started_at=started, error=f"{LOST}: {why}", duration_s=time.time() - started)
        await asyncio.wait({passing}, timeout=LEASE_POLL_S)
    return passing.result()

"""The apply half of a tick: the executor, fed as decisions are made, and
the committer that stores its outcomes in batches while it runs. It decides
nothing: what each outcome leads to is decided in cdnreq/decide/."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from cdnreq.aiotasks import spawn
from cdnreq.decide.plan import Plan
from cdnreq.reconcile.committer import Committer
from cdnreq.reconcile.execute import Feed
from cdnreq.reconcile.report import TickReport
from cdnreq.wiring import settings_of


class Applying:
    """The executor of one tick, fed as decisions are made, its outcomes
    committed in batches while it runs."""

    def __init__(self, tick: Any, first: Plan, report: TickReport, stop: asyncio.Event | None):
        """`tick` is the Reconciler: its store, copy of the store, clients and settings."""
        assert tick.known is not None and tick.domains is not None
        self.tick, self.report, self.stop = tick, report, stop
        self.planned = Counter(report.planned)
        self.committer = Committer(
            tick.store, tick.known, tick.domains, tick.batch, tick.flush_every_s, tick.observe_outcome
        )
        self.feed = Feed(first.actions)
        self.executing = spawn(
            tick.executor(
                self.feed,
                master=tick.master,
                settings=settings_of(tick.config),
                concurrency=tick.config.daemon.concurrency,
                sink=self.committer.add,
                stop=stop,
                clock=tick.clock,
                tick=report.id,
            ),
            f"cdnreq tick {report.id} executor",
        )

    async def finish(self) -> None:
        """No more actions: wait for the calls still to run."""
        self.feed.close()
        self.tick.progress.phase("executing", self.feed.total - self.committer.count, self.tick.clock())
        await self.executing

    async def settle(self) -> None:
        """Whatever happened: abandon the calls of a failed tick, commit what
        was done, and report it."""
        self.feed.close()
        if not self.executing.done():  # the tick failed: calls in flight are abandoned
            self.executing.cancel()
        await asyncio.gather(self.executing, return_exceptions=True)
        self.tick.progress.phase("committing", None, self.tick.clock())
        await self.committer.flush()
        if self.stop is not None and self.stop.is_set() and self.committer.count < self.feed.total:
            self.report.interrupted = True  # planned actions never started
        self.report.results = self.committer.results
        self.report.shortages = dict(self.committer.shortages)
        self.report.planned = dict(self.planned)

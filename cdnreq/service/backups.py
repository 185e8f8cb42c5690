"""Backups and the history's pruning in the background, beside the ticks:
a slow backup directory or a long pruning pass never delays a tick, and a
failure is an error to see, never a reason to stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from cdnreq.aiotasks import end_within, spawn
from cdnreq.config import Config
from cdnreq.metrics import Metrics
from cdnreq.store import Engine, StoreError, take_backup
from cdnreq.store.backupdir import backup_time, last_backup
from cdnreq.store.engines import is_postgres

log = structlog.get_logger("cdnreq.daemon")

GRACE_S = 5.0  # at a stop, how long a cancelled backup or pruning step may take to end


class Upkeep:
    """The backup task and the pruning task of one daemon."""

    def __init__(self, store: Engine, config: Callable[[], Config], metrics: Metrics, stop: asyncio.Event):
        self.store = store
        self.config = config  # read at each use: a reload may change the interval
        self.metrics = metrics
        self.stop = stop
        self._backup: asyncio.Task | None = None
        self._pruning: asyncio.Task | None = None
        self._taken_at: float | None = None  # time.monotonic() of this process's last backup

    async def show_last_backup(self) -> None:
        """The newest backup's time in the metrics, from the start (none on PostgreSQL)."""
        if is_postgres(self.config()):
            self.metrics.backups_elsewhere()
            return
        try:
            newest = await asyncio.to_thread(last_backup, self.config().backup_path())
        except StoreError:
            return
        when = backup_time(newest) if newest is not None else None
        if when is not None:
            self.metrics.last_backup.set(when)

    def backup_if_due(self, tick: int) -> None:
        """Start a backup in the background when the newest one is older than
        `[store].backup_interval_s` (0: never); not while one runs. The copy
        itself holds the store for a moment, the checks and the fsync do not.
        Its log lines carry the tick it follows."""
        config = self.config()
        if config.store.backup_interval_s <= 0 or is_postgres(config):  # PostgreSQL's are its own tools'
            return
        if self._backup is not None and not self._backup.done():
            return
        self._backup = spawn(self._back_up(config, tick), "cdnreq backup")

    async def _back_up(self, config: Config, tick: int) -> None:
        directory = config.backup_path()
        began = time.monotonic()
        try:
            newest = await asyncio.to_thread(last_backup, directory)
            when = backup_time(newest) if newest is not None else None
            if not self._due(when, config.store.backup_interval_s):
                return
            path = await take_backup(
                self.store, directory, secret=config.secret_path(), keep=config.store.backup_keep
            )
            self._taken_at = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a failed backup is an error to see, never a reason to stop
            log.error("backup failed", tick=tick, backup_dir=str(directory), error=str(error))
            return
        self.metrics.last_backup.set(backup_time(path) or time.time())
        log.info("backup done", tick=tick, path=str(path), duration_s=round(time.monotonic() - began, 3))

    def _due(self, newest: float | None, interval_s: float) -> bool:
        """Whether a backup is due, the newest one dated `newest`. One dated
        after now (taken while the clock ran ahead, then stepped back) is
        no proof of a recent one: the interval is then measured by this
        process's own monotonic clock, or backups would stop until the wall
        clock caught up (days, with the gauge's time in the future)."""
        if newest is None:
            return True
        age = time.time() - newest
        if age >= 0:
            return age >= interval_s
        return self._taken_at is None or time.monotonic() - self._taken_at >= interval_s

    def start_pruning(self) -> None:
        """After the first tick: the hourly pass over events and ticks past
        `[store].events_retention_days`, in small steps between the ticks' own."""
        if self._pruning is None:
            self._pruning = spawn(self.store.prune_passes(
                lambda: self.config().store.events_retention_days, self.stop, metrics=self.metrics
            ), "cdnreq pruning")

    async def finish(self) -> None:
        """At stop: a backup in progress may finish (it is bounded), up to the
        shutdown timeout; the pruning pass ends after its current step."""
        timeout = self.config().daemon.shutdown_timeout_s
        backup, self._backup = self._backup, None
        # cancelled ones get GRACE_S to end: a step waiting on a partitioned database never would
        if backup is not None and not await end_within(backup, timeout, grace=GRACE_S):
            log.warning("backup still running at the shutdown timeout; cancelling")
        pruning, self._pruning = self._pruning, None
        if pruning is not None:
            if not self.stop.is_set():
                await end_within(pruning, 0.0, grace=GRACE_S)
            elif await end_within(pruning, timeout, grace=GRACE_S):
                await asyncio.gather(pruning, return_exceptions=True)

"""The event loop: ticks on a schedule, never overlapping, and a clean stop.

The next tick is scheduled when the previous one ends. SIGTERM/SIGINT stop
the scheduling, let the calls in flight finish (up to
`[daemon].shutdown_timeout_s`), commit, and exit 0. SIGHUP re-reads the
configuration; a bad file is refused and the running one is kept.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import structlog

from cdnreq.config import Config, ConfigError, load_config
from cdnreq.master import MasterClient, TlsFiles
from cdnreq.reconcile.tick import Reconciler, TickReport
from cdnreq.store import Store

log = structlog.get_logger("cdnreq.daemon")

EXIT_OK = 0
EXIT_TICK_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3


def master_client(config: Config) -> MasterClient:
    master = config.master
    return MasterClient(
        url=str(master.url),
        timeout_s=master.timeout_s,
        partition_header=master.partition_header(),
        tls=TlsFiles(
            cert_file=_path(master.cert_file),
            key_file=_path(master.key_file),
            ca_file=_path(master.ca_file),
        ),
        max_connections=config.daemon.concurrency + 2,
    )


def _path(value: object) -> str | None:
    return None if value is None else str(value)


async def open_store(config: Config, *, lock: bool = True) -> Store:
    return await Store.open(config.daemon.database, lock=lock)


async def run_once(config: Config) -> TickReport:
    store = await open_store(config)
    try:
        async with master_client(config) as master:
            reconciler = Reconciler(config=config, store=store, master=master)
            try:
                await reconciler.load()
                return await reconciler.tick()
            finally:
                await reconciler.resolver.close()
    finally:
        await store.close()


class Daemon:
    """Owns the store, the master client and the schedule of ticks."""

    def __init__(self, config_path: Path, config: Config):
        self.config_path = config_path
        self.config = config
        self.stop = asyncio.Event()
        self.reconciler: Reconciler | None = None
        self.last_report: TickReport | None = None
        self._signals = 0
        self._new_master = False

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal, exiting at once", signal=sig.name)
            os._exit(128 + sig.value)
        log.info("stopping: no new tick, finishing the calls in flight", signal=sig.name)
        self.stop.set()

    def reload(self) -> None:
        try:
            config = load_config(self.config_path)
        except ConfigError as error:
            log.error("configuration refused, keeping the running one", error=str(error))
            return
        restart = [
            key
            for key, old, new in (
                ("[daemon].database", self.config.daemon.database, config.daemon.database),
                ("[daemon].listen", self.config.daemon.listen, config.daemon.listen),
            )
            if old != new
        ]
        if restart:
            log.warning("these changes apply after a restart", keys=restart)
        if (config.master, config.daemon.concurrency) != (
            self.config.master,
            self.config.daemon.concurrency,
        ):
            self._new_master = True
        self.config = config
        log.info("configuration reloaded; applies from the next tick", path=str(self.config_path))

    async def run(self) -> int:
        store = await open_store(self.config)
        master = master_client(self.config)
        self.reconciler = Reconciler(config=self.config, store=store, master=master)
        try:
            await self.reconciler.load()
        except BaseException:
            await master.close()
            await store.close()
            raise
        self.install_signals()
        log.info("started", database=str(self.config.daemon.database), master=str(self.config.master.url))
        try:
            while not self.stop.is_set():
                started = asyncio.get_running_loop().time()
                self.last_report = await self._tick()
                interval = self.reconciler.config.daemon.tick_interval_s
                elapsed = asyncio.get_running_loop().time() - started
                delay = max(0.0, interval - elapsed) + random.uniform(0, interval * 0.02)
                try:
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.reconciler.master.close()
            await self.reconciler.resolver.close()
            await store.close()
        log.info("stopped")
        return EXIT_OK

    async def _tick(self) -> TickReport | None:
        assert self.reconciler is not None
        self.reconciler.config = self.config
        if self._new_master:
            self._new_master = False
            await self.reconciler.master.close()
            self.reconciler.master = master_client(self.config)
        task = asyncio.create_task(self.reconciler.tick(self.stop))
        stopping = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                timeout = self.config.daemon.shutdown_timeout_s
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:
                    log.warning("calls still in flight after the shutdown timeout; cancelling", timeout_s=timeout)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return None
            return task.result()
        finally:
            stopping.cancel()

"""The event loop: ticks on a schedule, never overlapping, and a clean stop.

The next tick is scheduled when the previous one ends. SIGTERM/SIGINT stop
the scheduling, let the calls in flight finish (up to
`[daemon].shutdown_timeout_s`), commit, and exit 0; a second signal exits at
once. SIGHUP re-reads the configuration; a bad file is refused and the
running one is kept, and /status, `cdnreq status`, the metrics and systemd
(RELOADING=1 ... READY=1, Type=notify-reload) all say so. The HTTP endpoint
and systemd see the same state. Every background task is started in
`_spawn_tasks`, and the daemon reads the reconciler only through
`snapshot()` and changes it only through `reconfigure()`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import structlog

from cdnreq import __version__, logs, operator
from cdnreq.consumers import Consumers, read_consumers
from cdnreq.aiotasks import abandon, end_within, first_or_stop, sleep_or_stop, spawn, within
from cdnreq.config import Config
from cdnreq.configdigest import file_digest, load_with_digest
from cdnreq.configfile import ConfigError
from cdnreq.decide.admission import place
from cdnreq.decide.operator import REDELIVER, action_of, who
from cdnreq.endpoint import bound_address, make_app, serve
from cdnreq.explain import explain
from cdnreq.fdlimit import fit_config, limits_of, raise_fd_limit
from cdnreq.master import MasterClient
from cdnreq.metrics import Metrics
from cdnreq.notify import Notifier, watchdog_interval_s, watchdog_loop
from cdnreq.preflight import check, read_token
from cdnreq.progress import Progress
from cdnreq.reconcile.execute import Outcome
from cdnreq.reconcile.guardrun import guard_policy_of
from cdnreq.reconcile.snapshot import Snapshot
from cdnreq.reconcile.tick import Reconciler, TickReport
from cdnreq.reloadstate import ConfigState
from cdnreq.service.endpoint_view import DaemonEndpoint
from cdnreq.service.feed import Feed
from cdnreq.service.webhooks import Webhooks
from cdnreq.service.backups import Upkeep
from cdnreq.service.exits import EXIT_DATABASE, EXIT_OK, EXIT_TICK_FAILED
from cdnreq.service.opening import open_checked
from cdnreq.service.leader import (
    Leadership, cluster_view, leadership_of, standby_readiness, take_over,
)
from cdnreq.service.reload import reload_of
from cdnreq.service.status import PacedSnapshot, TickHistory, readiness, status_line, status_view
from cdnreq.store import Engine, take_backup
from cdnreq.wiring import master_client, resolver_of

log = structlog.get_logger("cdnreq.daemon")

# After the shutdown timeout, how long the cancelled tick may take to record
# itself interrupted: a store that cannot answer (a partitioned database) must
# not hold the stop; the next start or leader ends the tick it left open.
RECORD_GRACE_S = 5.0
# How long /instances/<guid> waits for the store before it answers 503.
STORE_READ_S = 10.0


class Daemon:
    """Owns the store, the clients, the endpoint and the schedule of ticks."""

    def __init__(self, config_path: Path, config: Config, *, fresh: bool = False):
        self.config_path = config_path
        self.fd_limit = raise_fd_limit()
        self.config = fit_config(config, self.fd_limit)
        self.fresh = fresh
        self.stop = asyncio.Event()
        self.metrics = Metrics()
        self.metrics.info(__version__)
        self.metrics.calls_in_flight.set_function(
            lambda: self.reconciler.calls_in_flight if self.reconciler is not None else 0
        )
        self.progress = Progress()
        self.notifier = Notifier()
        self._announced = False  # READY=1 sent once: only then may a reload say RELOADING=1
        digest, _ = file_digest(config_path)
        self.config_state = ConfigState(str(config_path), digest, time.time())
        self.metrics.config_loaded(True, self.config_state.loaded_at, digest, str(config_path))
        self.reconciler: Reconciler | None = None
        self.master: MasterClient | None = None  # the reconciler's, for operator actions
        self.ssl_context: ssl.SSLContext | None = None  # the master's, built by preflight.check
        self.store: Engine | None = None
        self.feed = Feed(lambda: self.store, self.stop)  # /changes, read from the store on any node
        self.consumers = Consumers()  # their tokens and webhook keys, read at start and at each reload
        self._token: str | None = None
        self.webhooks: Webhooks | None = None  # the consumers' deliveries, each its own task
        self.ticks = TickHistory()
        self.snapshot = PacedSnapshot(self._snapshot)
        self.upkeep: Upkeep | None = None
        self.address: str | None = None
        self._signals = 0
        self._new_master = False
        self._new_resolver = False
        self._watchdog: asyncio.Task | None = None
        self._lease: asyncio.Task | None = None
        self.leadership: Leadership | None = None  # PostgreSQL: the election (None on SQLite)
        self.exit_code = EXIT_OK
        self.writing = asyncio.Lock()  # ticks and operator actions, one at a time

    # -- signals and reloads -------------------------------------------------

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
        self.notifier.stopping()
        self.stop.set()

    def reload(self) -> None:
        """SIGHUP: RELOADING=1, re-read the file, then READY=1 with a STATUS=
        saying which configuration runs or why the file was refused."""
        if self._announced:
            self.notifier.reloading()
        try:
            self._reload()
        finally:
            if self._announced:
                self.notifier.send(READY=1, STATUS=self.config_state.status_line())

    def _reload(self) -> None:
        now = time.time()
        try:
            config, digest = load_with_digest(self.config_path)
            ssl_context = check(config, self.config_path)  # what run would refuse, a reload refuses
        except ConfigError as error:
            digest, _ = file_digest(self.config_path)
            self.config_state = self.config_state.refusal(digest, str(error), now)
            self.metrics.config_loaded(False, now)
            log.error("configuration refused, keeping the running one", error=str(error),
                      running_digest=self.config_state.digest, refused_digest=digest)
            return
        self.config_state = self.config_state.reloaded(digest, now)
        self.metrics.config_loaded(True, now, digest, str(self.config_path))
        change = reload_of(self.config, fit_config(config, self.fd_limit))
        if change.restart:
            log.warning("these changes apply after a restart", keys=list(change.restart))
        if change.new_master:
            self._new_master = True
            self.ssl_context = ssl_context
        self._new_resolver = self._new_resolver or change.new_resolver
        self.config = change.config
        self.consumers, _ = read_consumers(self.config, self._token)  # check() found no problem in them
        if self.webhooks is not None:
            self.webhooks.sync(self.config, self.consumers.keys)
        log.info("configuration reloaded; applies from the next tick", path=str(self.config_path), digest=digest)
        if change.new_logging:
            logs.configure(self.config.logging.format, self.config.logging.level)

    # -- what the endpoint shows ---------------------------------------------

    def _snapshot(self) -> Snapshot:
        return self.reconciler.snapshot() if self.reconciler is not None else Snapshot()

    def _may_call(self) -> str | None:
        return None if self.leadership is None else self.leadership.may_call()

    async def _before_call(self) -> None:
        if self.leadership is not None:
            await self.leadership.refresh()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.leadership is not None and not self.leadership.leading():
            return standby_readiness(self.leadership, time.time())
        return readiness(self.ticks, self.config.daemon.tick_interval_s, time.time())

    def status(self) -> dict[str, Any]:
        return status_view(
            self.ticks,
            self.snapshot(),
            tick_interval_s=self.config.daemon.tick_interval_s,
            progress=self.progress.snapshot(time.time()),
            config=self.config_state.view(*file_digest(self.config_path)),
        ) | cluster_view(self.leadership) | ({"webhooks": self.webhooks.view} if self.webhooks else {})

    async def instance(self, guid: str) -> dict[str, Any] | None:
        assert self.store is not None
        queue = self.reconciler.admission.queue if self.reconciler is not None else None  # replaced, never changed
        return await within(explain(  # asyncio.TimeoutError past STORE_READ_S: the endpoint answers 503
            self.store,
            guid,
            label=self.config.domain.challenge_label,
            retention_s=self.config.domain.retention_s,
            now=time.time(),
            admission=place(queue, guid) if queue is not None else None,
        ), STORE_READ_S, "cdnreq explain")

    async def act(self, name: str, query: Any, via: str) -> tuple[int, dict[str, Any]]:
        """An operator action from the endpoint: applied between ticks, then
        the store's records are read again at the next tick."""
        try:
            action = action_of(name, query, who(query.get("user") or "unknown", query.get("uid") or "?", via))
        except ValueError as error:
            return 400, {"ok": False, "message": str(error)}
        if self.store is None or self.reconciler is None or self.master is None:
            return 503, {"ok": False, "message": "the daemon is starting"}
        if self.leadership is not None and not self.leadership.leading():
            leader = self.leadership.seen.holder or "no node"
            return 503, {"ok": False, "message": f"this node stands by ({leader} leads): send the action to the "
                                                 "leader's endpoint (/leaderz answers 200 there)"}
        async with self.writing:
            result = await operator.apply(self.store, self.master, action, policy=guard_policy_of(self.config))
            if result.ok and action.name != REDELIVER:  # the outbox is read afresh anyway
                self.reconciler.reread()
        return (200 if result.ok else 409), {"ok": result.ok, "message": result.message}

    # -- the loop -------------------------------------------------------------

    async def run(self) -> int:
        self.ssl_context = check(self.config, self.config_path)  # ConfigError: exit 2, nothing started
        self._token = token = read_token(self.config)
        self.consumers, _ = read_consumers(self.config, token)
        listen = self.config.daemon.listen_endpoint()
        self.store = store = await open_checked(self.config, fresh=self.fresh, config_path=self.config_path,
                                                lead=False)
        self.leadership = leadership_of(store, lambda: self.config.store, self.stop)
        self.master = master_client(self.config, self.metrics, self.ssl_context, self._may_call, self._before_call)
        self.reconciler = Reconciler(
            config=self.config, store=store, master=self.master, resolver=self._resolver(),
            progress=self.progress, on_outcome=self._count,
        )
        self.upkeep = Upkeep(store, lambda: self.config, self.metrics, self.stop)
        self.webhooks = Webhooks(store, self.metrics, lambda: self.leadership is None or self.leadership.leading())
        self.webhooks.sync(self.config, self.consumers.keys)
        runner = None
        try:
            if self.leadership is None:
                await self.reconciler.load()
            else:  # the leader reads the store when it takes over (cdnreq.service.leader)
                self._lease = spawn(self.leadership.run(), "cdnreq lease")
            try:
                app = make_app(DaemonEndpoint(self), token=token, consumer_of=lambda t: self.consumers.of_token(t))
                runner = await serve(app, listen, limits_of(self.config))
            except OSError as error:  # a port in use may free itself: exit 1, restarted, no traceback
                log.error("cannot listen on [daemon].listen", listen=self.config.daemon.listen,
                          error=error.strerror or str(error), exit_code=EXIT_TICK_FAILED)
                return EXIT_TICK_FAILED
            self.address = bound_address(runner)
            self.install_signals()
            log.info("started", database=str(self.config.daemon.database), listen=self.address, version=__version__)
            await self.upkeep.show_last_backup()
            try:
                await self._loop()
            finally:
                for task in (self._watchdog, self._lease):
                    if task is not None:
                        task.cancel()
                await self.upkeep.finish()
                await self.webhooks.close()
        finally:
            if runner is not None:
                await runner.cleanup()
            await self.reconciler.close()
            await store.close()
            self.notifier.close()
        log.info("stopped")
        return self.exit_code

    def _resolver(self):
        resolver = resolver_of(self.config)
        metrics, progress = self.metrics, self.progress

        def observe(outcome: str, seconds: float) -> None:
            metrics.dns_lookup(outcome, seconds)
            progress.advance()

        resolver.observer = observe
        return resolver

    def _count(self, outcome: Outcome) -> None:
        self.metrics.action(outcome.action.kind.value, outcome.ok)

    def _spawn_tasks(self) -> None:
        """Every background task the daemon runs beside its ticks, started in
        one place once the first tick runs: the systemd watchdog and the
        history's pruning (backups are started after ticks, see Upkeep)."""
        self.notifier.ready()  # the endpoint listens and the first tick has started
        self._announced = True
        interval = watchdog_interval_s()
        if interval is not None:
            self._watchdog = spawn(watchdog_loop(self.notifier, interval, lambda: True), "cdnreq watchdog")

    async def _loop(self) -> None:
        assert self.reconciler is not None and self.upkeep is not None
        first = True
        backed_up = False
        at_once = False  # the last tick left newcomers waiting: this one takes them on (decide/admission.py)
        while not self.stop.is_set():
            if self.leadership is not None:
                # raced against the stop: a take-over's migration on a partitioned database waits
                # for the command timeout; abandoned, the lease expires and nothing was committed
                taking = spawn(take_over(self.leadership, self.store, self.reconciler, self.metrics),
                               "cdnreq take-over")
                if not await first_or_stop(taking, self.stop):
                    abandon(taking)
                    break
                if not taking.result():
                    at_once = False
                    continue
            started = time.monotonic()
            tick = spawn(self._tick(at_once), "cdnreq tick")
            if first:
                self._spawn_tasks()
                first = False
            report = await tick
            self.upkeep.start_pruning()
            if report is not None:
                self._after(report)
                if await self._store_lost():
                    return
                # after the first tick whatever its result (the state the daemon
                # started from, a restored one for instance), then after successes
                if report.ok or not backed_up:
                    backed_up = True
                    self.upkeep.backup_if_due(report.id)
            interval = self.config.daemon.tick_interval_s
            delay = max(0.0, interval - (time.monotonic() - started)) + random.uniform(0, interval * 0.02)
            at_once = report is not None and report.ok and report.admit_again
            if at_once:
                delay = 0.0  # new instances wait for admission: the next tick takes them on at once
            await sleep_or_stop(self.stop, delay)

    async def _store_lost(self) -> bool:
        """The database file was deleted or replaced: every later write would
        be lost, so the daemon stops (exit 3) once the failed tick is recorded
        (readyz, systemd status, log). What the open file still holds is
        first saved as a backup, which `cdnreq restore` puts back; a restart
        refuses the empty store meanwhile."""
        why = self.store.lost() if self.store is not None else None
        if why is None:
            return False
        assert self.store is not None
        log.error("the database is gone; saving what it held and exiting", error=why, exit_code=EXIT_DATABASE)
        self.exit_code = EXIT_DATABASE
        self.stop.set()
        directory = self.config.backup_path()
        try:
            path = await take_backup(self.store, directory, secret=self.config.secret_path(),
                                     keep=self.config.store.backup_keep)
        except Exception as error:  # noqa: BLE001 -- exiting anyway; say why nothing was saved
            log.error("could not save the lost database", backup_dir=str(directory), error=str(error))
        else:
            log.error("the lost database was saved; put it back with cdnreq restore", path=str(path))
        return True

    def _after(self, report: TickReport) -> None:
        now = time.time()
        self.ticks.record(report, now)
        self.metrics.tick_finished(report.ok, report.duration_s, now, self.ticks.failed_in_a_row)
        self.metrics.holds(report)
        assert self.reconciler is not None
        seen = self.reconciler.snapshot()
        if seen.loaded:
            self.metrics.instances(seen.phases)
            self.metrics.hosts(seen.hosts, seen.hosts_failing)
        self.notifier.status(status_line(report) + self.config_state.suffix())

    async def _tick(self, at_once: bool = False) -> TickReport | None:
        async with self.writing:  # no operator action in the middle of a tick
            await self._apply_reload()
            return await self._tick_or_stop(at_once)

    async def _apply_reload(self) -> None:
        """A reload's new clients take over between ticks."""
        assert self.reconciler is not None
        master = resolver = None
        if self._new_master:
            self._new_master = False
            self.master = master = master_client(self.config, self.metrics, self.ssl_context, self._may_call, self._before_call)
        if self._new_resolver:
            self._new_resolver = False
            resolver = self._resolver()
        await self.reconciler.reconfigure(self.config, master=master, resolver=resolver)

    async def _tick_or_stop(self, at_once: bool = False) -> TickReport | None:
        """The tick; on a stop, the calls in flight get the shutdown timeout,
        then the tick is cancelled (it records itself as interrupted)."""
        assert self.reconciler is not None
        task = spawn(self.reconciler.tick(self.stop, at_once=at_once), "cdnreq reconcile")
        await first_or_stop(task, self.stop)
        timeout = self.config.daemon.shutdown_timeout_s
        if not await end_within(task, timeout, grace=RECORD_GRACE_S):
            log.warning("calls still in flight after the shutdown timeout; cancelling", timeout_s=timeout)
            return None
        return task.result()

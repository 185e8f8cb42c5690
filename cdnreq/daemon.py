"""The event loop: ticks on a schedule, never overlapping, and a clean stop.

The next tick is scheduled when the previous one ends. SIGTERM/SIGINT stop
the scheduling, let the calls in flight finish (up to
`[daemon].shutdown_timeout_s`), commit, and exit 0; a second signal exits at
once. SIGHUP re-reads the configuration; a bad file is refused and the
running one is kept, and /status, `cdnreq status`, the metrics and systemd
(RELOADING=1 ... READY=1, Type=notify-reload) all say so. The HTTP endpoint
and systemd see the same state.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from cdnreq import __version__, logs, operator
from cdnreq.config import Config
from cdnreq.configfile import ConfigError
from cdnreq.explain import explain, iso
from cdnreq.fdlimit import fit_config, limits_of, raise_fd_limit
from cdnreq.endpoint import make_app, serve, bound_address
from cdnreq.master import MasterClient, TlsFiles
from cdnreq.metrics import Metrics
from cdnreq.notify import Notifier, watchdog_interval_s, watchdog_loop
from cdnreq.preflight import check, read_token
from cdnreq.progress import Progress
from cdnreq.configdigest import file_digest, load_with_digest
from cdnreq.reloadstate import ConfigState
from cdnreq.reconcile.execute import Outcome
from cdnreq.reconcile.guardrun import guard_policy_of, held_reason, held_removals
from cdnreq.decide.operator import action_of, who
from cdnreq.reconcile.tick import Reconciler, TickReport, resolver_of
from cdnreq.store import Store, StoreError, start_refusal, take_backup
from cdnreq.store.backupdir import backup_time, last_backup
from cdnreq.store.prune import prune_logged, prune_passes

log = structlog.get_logger("cdnreq.daemon")

EXIT_OK = 0
EXIT_TICK_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3

# /status counts the instances by phase at most this often (a walk over the fleet)
STATUS_COUNT_S = 1.0


def master_client(
    config: Config, metrics: Metrics | None = None, ssl_context: ssl.SSLContext | None = None
) -> MasterClient:
    """The client for [master]; `ssl_context` is the one preflight.check built
    at start-up (without it, the TLS files are loaded at the first call)."""
    master = config.master
    return MasterClient(
        url=str(master.url),
        timeout_s=master.timeout_s,
        partition_header=master.partition_header(),
        ssl_context=ssl_context,
        tls=TlsFiles(
            cert_file=_path(master.cert_file),
            key_file=_path(master.key_file),
            ca_file=_path(master.ca_file),
        ),
        max_connections=config.daemon.concurrency + 2,
        max_listing_bytes=master.max_listing_bytes,
        max_parameters_bytes=config.validation.max_parameters_bytes,
        observer=metrics.master_call if metrics is not None else None,
    )


def _path(value: object) -> str | None:
    return None if value is None else str(value)


async def open_store(config: Config, *, lock: bool = True) -> Store:
    return await Store.open(config.daemon.database, lock=lock)


class EmptyStoreRefused(StoreError):
    """The database is missing or empty while a backup of it is not."""


async def open_checked(config: Config, *, fresh: bool = False, config_path: Path | None = None) -> Store:
    """The store for a daemon or a tick, unless it was lost.

    A missing or empty database (no instance, no proven host, no challenge)
    while the newest backup in `[store].backup_dir` is not empty means the
    store was lost: raise EmptyStoreRefused, naming the backup and the two
    ways out (`cdnreq restore`, or `--fresh`). A missing database is checked
    before it is opened, so the refusal does not create it. `fresh` lets the
    start go ahead (it deletes nothing; it only allows an empty store).
    """
    database, backups = config.daemon.database, config.backup_path()

    async def refusal(missing: bool) -> str | None:
        return await asyncio.to_thread(
            start_refusal, database, backups, missing=missing, config=config_path
        )

    if not fresh and not database.exists():
        reason = await refusal(True)
        if reason is not None:
            raise EmptyStoreRefused(reason)
    store = await open_store(config)
    try:
        if await store.is_empty():
            reason = await refusal(False)
            if reason is not None:
                if not fresh:
                    raise EmptyStoreRefused(reason)
                log.warning(
                    "starting on an empty store (--fresh) although backups exist",
                    database=str(database), backup_dir=str(backups),
                )
        await _end_unfinished(store)
    except BaseException:
        await store.close()
        raise
    return store


KILLED_MID_TICK = "interrupted: the process ended during this tick (killed or crashed); found at the next start"


async def _end_unfinished(store: Store) -> None:
    """A tick the last process began and never ended is recorded as
    interrupted, not left open (nor mistaken for a success)."""
    for tick in await store.end_unfinished_ticks(time.time(), KILLED_MID_TICK):
        log.warning("tick interrupted", tick=tick, error=KILLED_MID_TICK)


async def run_once(config: Config, *, fresh: bool = False, config_path: Path | None = None) -> TickReport:
    context = check(config, config_path or "(configuration)")
    config = fit_config(config, raise_fd_limit())
    store = await open_checked(config, fresh=fresh, config_path=config_path)
    try:
        async with master_client(config, ssl_context=context) as master:
            reconciler = Reconciler(config=config, store=store, master=master)
            try:
                await reconciler.load()
                report = await reconciler.tick()
            finally:
                await reconciler.resolver.close()
        # after the tick, whatever its result: `once` from a timer keeps the history bounded too
        await prune_logged(store, config.store.events_retention_days)
        return report
    finally:
        await store.close()


def _keep_running(new: Config, running: Config) -> Config:
    """`new` with the keys that apply only after a restart at their running
    values: what is derived from them (the domain secret's path, the
    backups' directory) must not move under the open store, or the next
    reload of the store's state would read, or create, another secret."""
    daemon = new.daemon.model_copy(update={
        "database": running.daemon.database, "listen": running.daemon.listen,
        "token_file": running.daemon.token_file,
    })  # fmt: skip
    domain = new.domain.model_copy(update={"secret_file": running.domain.secret_file})
    return new.model_copy(update={"daemon": daemon, "domain": domain})


class Daemon:
    """Owns the store, the master client, the endpoint and the schedule of ticks."""

    def __init__(self, config_path: Path, config: Config, *, fresh: bool = False):
        self.config_path = config_path
        self.fd_limit = raise_fd_limit()
        self.config = fit_config(config, self.fd_limit)
        self.fresh = fresh
        self.stop = asyncio.Event()
        self.metrics = Metrics()
        self.metrics.info(__version__)
        self.metrics.calls_in_flight.set_function(
            lambda: self.reconciler.master.in_flight if self.reconciler is not None else 0
        )
        self.progress = Progress()
        self.notifier = Notifier()
        self._announced = False  # READY=1 sent once: only then may a reload say RELOADING=1
        digest, _ = file_digest(config_path)
        self.config_state = ConfigState(str(config_path), digest, time.time())
        self.metrics.config_loaded(True, self.config_state.loaded_at, digest, str(config_path))
        self.reconciler: Reconciler | None = None
        self.ssl_context: ssl.SSLContext | None = None  # the master's, built by preflight.check
        self.store: Store | None = None
        self.last_report: TickReport | None = None
        self.last_success_at: float | None = None
        self.failed_ticks = 0
        self.address: str | None = None
        self._signals = 0
        self._new_master = False
        self._new_resolver = False
        self._watchdog: asyncio.Task | None = None
        self._backup_task: asyncio.Task | None = None
        self._prune_task: asyncio.Task | None = None
        self.exit_code = EXIT_OK
        self._phases: tuple[float, dict[str, int]] | None = None  # (when, instances by phase)
        self.writing = asyncio.Lock()  # ticks and operator actions, one at a time

    # -- signals ------------------------------------------------------------

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
        config = fit_config(config, self.fd_limit)
        restart = [
            key
            for key, old, new in (
                ("[daemon].database", self.config.daemon.database, config.daemon.database),
                ("[daemon].listen", self.config.daemon.listen, config.daemon.listen),
                ("[daemon].token_file", self.config.daemon.token_file, config.daemon.token_file),
                ("[domain].secret_file", self.config.domain.secret_file, config.domain.secret_file),
                ("[daemon].http_*", limits_of(self.config), limits_of(config)),
            )
            if old != new
        ]
        if restart:
            log.warning("these changes apply after a restart", keys=restart)
            config = _keep_running(config, self.config)
        # TLS files are read again at each reload: a renewed certificate at the same path is taken
        renewed = config.master.cert_file is not None or config.master.ca_file is not None
        if renewed or (config.master, config.daemon.concurrency) != (self.config.master, self.config.daemon.concurrency):
            self._new_master = True
            self.ssl_context = ssl_context
        if config.dns != self.config.dns:
            self._new_resolver = True
        new_logging = config.logging != self.config.logging
        self.config = config
        log.info("configuration reloaded; applies from the next tick", path=str(self.config_path), digest=digest)
        if new_logging:
            logs.configure(config.logging.format, config.logging.level)

    # -- what the endpoint shows ---------------------------------------------

    def alive(self) -> bool:
        return True  # answering at all means the event loop runs

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = time.time()
        limit = 3 * self.config.daemon.tick_interval_s
        if self.last_report is None:
            return False, {"ready": False, "reason": "the first tick has not finished"}
        if not self.last_report.ok:
            reason = f"the last {self.failed_ticks} tick(s) failed: {self.last_report.error}"
            return False, {"ready": False, "reason": reason, "last_success_at": iso(self.last_success_at)}
        assert self.last_success_at is not None
        if now - self.last_success_at > limit:
            return False, {
                "ready": False,
                "reason": f"no successful tick for more than {limit:g} s",
                "last_success_at": iso(self.last_success_at),
            }
        why: dict[str, Any] = {"ready": True, "last_success_at": iso(self.last_success_at)}
        held = held_reason(self.last_report)
        if held is not None:  # serving goes on: a hold is for an operator to see, not a failure
            why["reason"] = held
        return True, why

    def phase_counts(self) -> dict[str, int]:
        """Instances by phase, counted at most once per STATUS_COUNT_S: the
        count walks the whole fleet on the event loop, and a flood of /status
        must not stall the ticks."""
        now = time.monotonic()
        if self._phases is None or not 0 <= now - self._phases[0] < STATUS_COUNT_S:
            known = self.reconciler.known if self.reconciler is not None else None
            self._phases = (now, dict(Counter(r.phase.value for r in known.values())) if known else {})
        return self._phases[1]

    def status(self) -> dict[str, Any]:
        ready, why = self.readiness()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "ready": ready,
            "readiness": why,
            "instances": self.phase_counts(),
            "consecutive_failed_ticks": self.failed_ticks,
            "held_updates": self.last_report.held_updates if self.last_report else None,
            "held_removals": held_removals(self.last_report),
            "tick_interval_s": self.config.daemon.tick_interval_s,
            "progress": self.progress.snapshot(time.time()),
            "config": self.config_state.view(*file_digest(self.config_path)),
        }

    async def instance(self, guid: str) -> dict[str, Any] | None:
        assert self.store is not None
        return await explain(
            self.store,
            guid,
            label=self.config.domain.challenge_label,
            retention_s=self.config.domain.retention_s,
            now=time.time(),
        )

    async def act(self, name: str, query: Any, via: str) -> tuple[int, dict[str, Any]]:
        """An operator action from the endpoint: applied between ticks, then
        the store's records are read again at the next tick."""
        try:
            action = action_of(name, query, who(query.get("user") or "unknown", query.get("uid") or "?", via))
        except ValueError as error:
            return 400, {"ok": False, "message": str(error)}
        if self.store is None or self.reconciler is None:
            return 503, {"ok": False, "message": "the daemon is starting"}
        async with self.writing:
            result = await operator.apply(
                self.store, self.reconciler.master, action, policy=guard_policy_of(self.config)
            )
            if result.ok:
                self.reconciler.known = None
        return (200 if result.ok else 409), {"ok": result.ok, "message": result.message}

    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    # -- the loop -------------------------------------------------------------

    async def run(self) -> int:
        self.ssl_context = check(self.config, self.config_path)  # ConfigError: exit 2, nothing started
        token = read_token(self.config)
        listen = self.config.daemon.listen_endpoint()
        self.store = store = await open_checked(self.config, fresh=self.fresh, config_path=self.config_path)
        master = master_client(self.config, self.metrics, self.ssl_context)
        self.reconciler = Reconciler(
            config=self.config,
            store=store,
            master=master,
            resolver=self._resolver(),
            progress=self.progress,
            on_outcome=self._count,
        )
        runner = None
        try:
            await self.reconciler.load()
            try:
                runner = await serve(make_app(_Endpoint(self), token=token), listen, limits_of(self.config))
            except OSError as error:  # a port in use may free itself: exit 1, restarted, no traceback
                log.error("cannot listen on [daemon].listen", listen=self.config.daemon.listen,
                          error=error.strerror or str(error), exit_code=EXIT_TICK_FAILED)
                return EXIT_TICK_FAILED
            self.address = bound_address(runner)
            self.install_signals()
            log.info("started", database=str(self.config.daemon.database), listen=self.address, version=__version__)
            await self._show_last_backup()
            try:
                await self._loop()
            finally:
                if self._watchdog is not None:
                    self._watchdog.cancel()
                await self._finish_backup()
                await self._finish_pruning()
        finally:
            if runner is not None:
                await runner.cleanup()
            await self.reconciler.master.close()
            await self.reconciler.resolver.close()
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

    def _start_watchdog(self) -> asyncio.Task | None:
        interval = watchdog_interval_s()
        if interval is None:
            return None
        return asyncio.create_task(watchdog_loop(self.notifier, interval, lambda: True))

    async def _loop(self) -> None:
        assert self.reconciler is not None
        first = True
        backed_up = False
        while not self.stop.is_set():
            started = time.monotonic()
            tick = asyncio.create_task(self._tick())
            if first:
                self.notifier.ready()  # the endpoint listens and the first tick has started
                self._announced = True
                self._watchdog = self._start_watchdog()
                first = False
            report = await tick
            self._start_pruning()
            if report is not None:
                self._after(report)
                if await self._store_lost():
                    return
                # after the first tick whatever its result (the state the daemon
                # started from, a restored one for instance), then after successes
                if report.ok or not backed_up:
                    backed_up = True
                    self._maybe_backup(report.id)
            interval = self.config.daemon.tick_interval_s
            delay = max(0.0, interval - (time.monotonic() - started)) + random.uniform(0, interval * 0.02)
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

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

    # -- backups ----------------------------------------------------------------

    async def _show_last_backup(self) -> None:
        try:
            newest = await asyncio.to_thread(last_backup, self.config.backup_path())
        except StoreError:
            return
        when = backup_time(newest) if newest is not None else None
        if when is not None:
            self.metrics.last_backup.set(when)

    def _maybe_backup(self, tick: int) -> None:
        """Start a backup in the background when the newest one is older than
        `[store].backup_interval_s` (0: never); not while one runs. It runs next
        to the ticks: the copy itself holds the store for a moment, the checks
        and the fsync do not, and a slow backup directory never delays a tick.
        Its log lines carry the tick it follows."""
        if self.config.store.backup_interval_s <= 0 or self.store is None:
            return
        if self._backup_task is not None and not self._backup_task.done():
            return
        self._backup_task = asyncio.create_task(self._backup_if_due(self.config, tick))

    async def _backup_if_due(self, config: Config, tick: int) -> None:
        assert self.store is not None
        directory = config.backup_path()
        began = time.monotonic()
        try:
            newest = await asyncio.to_thread(last_backup, directory)
            when = backup_time(newest) if newest is not None else None
            if when is not None and time.time() - when < config.store.backup_interval_s:
                return
            path = await take_backup(
                self.store, directory, secret=config.secret_path(), keep=config.store.backup_keep
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a failed backup is an error to see, never a reason to stop
            log.error("backup failed", tick=tick, backup_dir=str(directory), error=str(error))
            return
        self.metrics.last_backup.set(backup_time(path) or time.time())
        log.info("backup done", tick=tick, path=str(path), duration_s=round(time.monotonic() - began, 3))

    async def _finish_backup(self) -> None:
        """At stop: let a backup in progress finish (it is bounded), up to the shutdown timeout."""
        task, self._backup_task = self._backup_task, None
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self.config.daemon.shutdown_timeout_s)
        if not done:
            log.warning("backup still running at the shutdown timeout; cancelling")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- history -----------------------------------------------------------------

    def _start_pruning(self) -> None:
        """After the first tick: the hourly pass over events and ticks past
        `[store].events_retention_days`, in small steps between the ticks' own."""
        if self._prune_task is None and self.store is not None:
            self._prune_task = asyncio.create_task(prune_passes(
                self.store, lambda: self.config.store.events_retention_days, self.stop, metrics=self.metrics
            ))

    async def _finish_pruning(self) -> None:
        """At stop: the pass ends after its current step (a step is short)."""
        task, self._prune_task = self._prune_task, None
        if task is None:
            return
        if not self.stop.is_set():
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.config.daemon.shutdown_timeout_s)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _after(self, report: TickReport) -> None:
        self.last_report = report
        now = time.time()
        if report.ok:
            self.failed_ticks = 0
            self.last_success_at = now
        else:
            self.failed_ticks += 1
        self.metrics.tick_finished(report.ok, report.duration_s, now)
        self.metrics.holds(report)
        assert self.reconciler is not None
        if self.reconciler.known is not None:
            self.metrics.instances(Counter(r.phase.value for r in self.reconciler.known.values()))
        if self.reconciler.domains is not None:
            claims = self.reconciler.domains.index.by_host.values()
            self.metrics.hosts(len(claims), sum(1 for c in claims if c.failing_since is not None))
        self.notifier.status(_status_line(report) + self.config_state.suffix())

    async def _tick(self) -> TickReport | None:
        async with self.writing:  # no operator action in the middle of a tick
            return await self._tick_locked()

    async def _tick_locked(self) -> TickReport | None:
        assert self.reconciler is not None
        self.reconciler.config = self.config
        if self._new_master:
            self._new_master = False
            await self.reconciler.master.close()
            self.reconciler.master = master_client(self.config, self.metrics, self.ssl_context)
        if self._new_resolver:
            self._new_resolver = False
            await self.reconciler.resolver.close()
            self.reconciler.resolver = self._resolver()
            if self.reconciler.domains is not None:
                self.reconciler.domains.resolver = self.reconciler.resolver
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


def _status_line(report: TickReport) -> str:
    """One line for `systemctl status`."""
    done = ", ".join(f"{n} {k}" for k, n in sorted(report.results.items())) or "nothing to do"
    if report.ok:
        return f"tick {report.id} ok in {report.duration_s:.2f} s: {done}"
    if report.interrupted:
        return f"tick {report.id} interrupted after {report.duration_s:.2f} s: {done}"
    return f"tick {report.id} FAILED after {report.duration_s:.2f} s: {report.error}"


class _Endpoint:
    """The daemon as the HTTP endpoint sees it (cdnreq.endpoint.Endpoint)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def alive(self) -> bool:
        return self.daemon.alive()

    def readiness(self) -> tuple[bool, dict]:
        return self.daemon.readiness()

    def metrics(self) -> tuple[bytes, str]:
        return self.daemon.render_metrics()

    def status(self) -> dict:
        return self.daemon.status()

    async def instance(self, guid: str) -> dict | None:
        return await self.daemon.instance(guid)

    async def act(self, name: str, query: Any, via: str) -> tuple[int, dict]:
        return await self.daemon.act(name, query, via)

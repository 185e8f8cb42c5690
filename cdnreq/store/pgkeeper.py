"""The leader lease renewed from a thread of its own (PostgreSQL).

A big tick holds the daemon's event loop for long synchronous stretches
(validating and planning 100,000 new instances takes longer than a lease).
A renewal waiting behind them on that loop comes too late: the lease runs
out mid-tick, another node takes over and does the same, and the first
reconcile never ends. The keeper renews on a connection of its own, in a
thread of its own, every `[store].renew_s`, as long as the event loop
still answers within `[store].loop_stall_s`. A loop that has not answered
for longer is taken as hung: the keeper stops renewing so another node
takes over, and the fence (cdnreq.store.pglease) refuses every write the
hung node attempts if it wakes up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, Protocol

import structlog

from cdnreq.store.pglease import Lease

log = structlog.get_logger("cdnreq.daemon")

JOIN_S = 5.0  # how long a stop waits for the thread: one renewal's timeout


class KeeperSettings(Protocol):
    lease_s: float
    renew_s: float
    loop_stall_s: float


class LeaseKeeper:
    """Renews `lease`'s term while the event loop that started it answers."""

    def __init__(self, lease: Lease, connect: Callable[[], Awaitable[Any]], settings: Callable[[], KeeperSettings]):
        self._lease, self._connect, self._settings = lease, connect, settings
        self._loop = asyncio.get_running_loop()  # the daemon's: the loop whose answers are awaited
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()  # set by stop(), looked at by the thread before each renewal
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None  # the thread's own: wakes it from its wait
        self.renewed_at: float | None = None  # monotonic time of the last renewal that worked
        self._posted: float | None = None  # when the probe not yet answered was posted
        self._answered = time.monotonic()
        self._hung = False  # logged once per stall
        self.longest_stall_s = 0.0  # the longest the loop took to answer a probe

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="cdnreq lease keeper", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def keeping(self, within_s: float) -> bool:
        """Alive, and renewed the term within `within_s`: otherwise (its own
        connection refused, say) the election loop renews on the pool."""
        renewed = self.renewed_at
        return self.alive() and renewed is not None and time.monotonic() - renewed <= within_s

    async def stop(self) -> None:
        """End the thread (it closes its connection), waiting up to JOIN_S."""
        self._halt.set()  # before the thread made its loop: it sees this first
        own, stopping = self._own_loop, self._stopping
        if own is not None and stopping is not None:
            try:
                own.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # its loop already closed
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, JOIN_S)

    # -- on the keeper's thread ----------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._keep())

    async def _keep(self) -> None:
        self._stopping = asyncio.Event()
        self._own_loop = asyncio.get_running_loop()
        conn = None
        try:
            while not self._halt.is_set() and not self._stopping.is_set():
                settings = self._settings()
                if not self._probe():
                    return  # the daemon's loop is closed
                conn = await self._renew(conn, settings)
                try:
                    await asyncio.wait_for(self._stopping.wait(), settings.renew_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            if conn is not None:
                await _close(conn)

    def _probe(self) -> bool:
        """Post a probe to the daemon's loop unless the last one is still waiting."""
        if self._posted is not None and self._answered < self._posted:
            return True
        self._posted = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._answer)
        except RuntimeError:
            return False
        return True

    def _answer(self) -> None:  # on the daemon's loop
        self._answered = time.monotonic()
        if self._posted is None:
            return
        stall = self._answered - self._posted
        self.longest_stall_s = max(self.longest_stall_s, stall)
        lease_s = self._lease.lease_s
        if lease_s is not None and stall > lease_s:
            log.warning("the event loop was busy for longer than the leader lease; the keeper renewed it meanwhile",
                        busy_s=round(stall, 1), lease_s=lease_s)

    def stalled_s(self) -> float:
        """How long the daemon's loop has left the waiting probe unanswered."""
        posted = self._posted
        return 0.0 if posted is None or self._answered >= posted else time.monotonic() - posted

    async def _renew(self, conn: Any, settings: KeeperSettings) -> Any:
        """One renewal on the keeper's connection; the connection to use next."""
        term = self._lease.term
        if term is None:  # not leading: no connection held for nothing
            if conn is not None:
                await _close(conn)
            return None
        stalled = self.stalled_s()
        if stalled > settings.loop_stall_s:
            if not self._hung:
                self._hung = True
                log.error("the event loop has not answered for longer than [store].loop_stall_s: "
                          "no longer renewing the leader lease, so another node takes over",
                          stalled_s=round(stalled, 1), loop_stall_s=settings.loop_stall_s, epoch=term.epoch)
            return conn
        self._hung = False
        try:
            if conn is None or conn.is_closed():
                conn = await asyncio.wait_for(self._connect(), settings.renew_s)
            timeout = max(settings.renew_s, 1.0)
            if await self._lease.renew(settings.lease_s, run=lambda work: asyncio.wait_for(work(conn), timeout)):
                self.renewed_at = time.monotonic()
        except Exception as error:  # noqa: BLE001 -- the database away: try again at the next renewal
            log.warning("renewing the leader lease failed", error=f"{type(error).__name__}: {error}")
            if conn is not None:
                await _close(conn)
            return None
        return conn


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except Exception:  # noqa: BLE001 -- a connection already broken
        conn.terminate()

"""A node's part in the election (PostgreSQL only): take the lease when it
is free, renew it while leading, and tell the daemon when it leads.

The daemon ticks only while `leading()`; the master client asks `may_call()`
before each call, so a leader that could not renew stops calling the master
before its lease can expire (cdnreq.decide.leadership), and its writes are
fenced by the store (cdnreq.store.pglease). A standby tries to take the
lease every `[store].renew_s` and meanwhile serves what the endpoint shows
from the shared store.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import structlog

from cdnreq.aiotasks import sleep_or_stop
from cdnreq.config import StoreConfig
from cdnreq.decide.leadership import Term
from cdnreq.reconcile.admitting import Admission
from cdnreq.service.opening import refuse_unfinished_copy
from cdnreq.store.errors import StoreError
from cdnreq.store.pgkeeper import LeaseKeeper

log = structlog.get_logger("cdnreq.daemon")

LEADER, STANDBY = "leader", "standby"


class LeaseStore(Protocol):
    """What the election needs of the store (cdnreq.store.postgres.PgStore)."""

    lease: Any

    @property
    def term(self) -> Term | None: ...

    async def last_ticks(self, limit: int = 10) -> list[dict[str, Any]]: ...

    async def phases(self) -> dict[str, int]: ...

    async def connect_one(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class LeaderSeen:
    """The lease as this node last read it."""

    holder: str | None = None
    epoch: int | None = None
    seconds_left: float | None = None
    read_at: float | None = None  # time.time() of the last read that worked
    error: str | None = None  # why the last attempt failed

    def view(self) -> dict[str, Any]:
        return {"holder": self.holder, "epoch": self.epoch, "read_at": self.read_at, "error": self.error,
                "seconds_left": None if self.seconds_left is None else round(self.seconds_left, 3)}


class Leadership:
    """The lease's loop for one node; read by the daemon, its endpoint and its master client."""

    def __init__(self, store: LeaseStore, settings: Callable[[], StoreConfig], stop: asyncio.Event):
        self.store, self.settings, self.stop = store, settings, stop
        self.seen = LeaderSeen()
        self.changed = asyncio.Event()  # set at every change of role; the daemon clears it
        self.acting = False  # the daemon took over (cdnreq.service.leader.take_over)
        self.shared: dict[str, Any] = {}  # a standby's view of the store: the leader's last tick, instances
        self.keeper: LeaseKeeper | None = None  # renews the term from its own thread while run() runs
        self.asking_since: float | None = None  # time.time() the attempt under way began (None between attempts)

    @property
    def holder(self) -> str:
        return self.store.lease.holder

    def valid_term(self) -> Term | None:
        """The term this node holds, unexpired; read once (the keeper's thread may change it)."""
        term = self.store.term
        return term if term is not None and term.valid(time.monotonic()) else None

    def leading(self) -> bool:
        return self.valid_term() is not None

    def role(self) -> str:
        return LEADER if self.leading() else STANDBY

    def may_call(self) -> str | None:
        """None while this node may call the master (it leads, in the term
        its work was decided in: cdnreq.store.pglease.Lease.bound); why not otherwise."""
        if self.store.lease.acts():
            return None
        if self.leading():
            return "the lease was lost and taken again since this tick's decisions: the next tick redoes them"
        return self.store.lease.lost or "this node does not hold the leader lease"

    async def refresh(self) -> None:
        """Before a master call: a term run out during a busy stretch is
        renewed if still this node's (cdnreq.store.pglease.Lease.refresh);
        may_call() then says whether the call may go."""
        try:
            await self.store.lease.refresh()
        except Exception as error:  # the database away: may_call() refuses the call
            log.warning("renewing a late lease failed", error=f"{type(error).__name__}: {error}")

    def healthy(self, now: float) -> bool:
        """The store answered the last attempts (within three renew intervals)."""
        read_at = self.seen.read_at
        return read_at is not None and now - read_at <= 3 * self.settings().renew_s

    async def run(self) -> None:
        self.keeper = LeaseKeeper(self.store.lease, self.store.connect_one, self.settings)
        self.keeper.start()
        try:
            while not self.stop.is_set():
                try:
                    await self.step()
                except Exception as error:  # noqa: BLE001 -- the election must outlive any one attempt
                    log.error("taking or renewing the leader lease failed", error=f"{type(error).__name__}: {error}")
                await sleep_or_stop(self.stop, self.settings().renew_s)
        finally:
            await asyncio.shield(self.keeper.stop())

    async def step(self) -> None:
        """One attempt: take the lease (standby) or renew it (leader), then read who leads."""
        settings, lease, was = self.settings(), self.store.lease, self.leading()
        self.asking_since = time.time()
        try:
            if lease.current() is None:
                await lease.take(settings.lease_s)
            elif self.keeper is None or not self.keeper.keeping(1.5 * settings.renew_s):  # or it renews itself
                await lease.renew(settings.lease_s)
            found = await lease.leader()
        except StoreError as error:
            self.seen = LeaderSeen(self.seen.holder, self.seen.epoch, None, self.seen.read_at, str(error))
            log.warning("cannot reach the store to take or renew the leader lease", error=str(error))
        else:
            holder, epoch, left = found if found is not None else (None, None, None)
            self.seen = LeaderSeen(holder, epoch, left, time.time(), None)
            if not self.leading():
                await self._read_shared()
        finally:
            self.asking_since = None
        term = self.valid_term()
        if (term is not None) != was:
            if term is not None:
                log.warning("this node leads", node=self.holder, epoch=term.epoch)
            else:
                log.warning("this node stopped leading", node=self.holder, reason=lease.lost, leader=self.seen.holder)
            self.changed.set()

    async def _read_shared(self) -> None:
        """What a standby's /status shows: the store as the leader left it."""
        try:
            ticks = await self.store.last_ticks(1)
            self.shared = {"last_tick": ticks[0] if ticks else None, "instances": await self.store.phases()}
        except StoreError as error:  # a schema not created yet, a store that went away
            self.shared = {"error": str(error)}

    async def wait(self, timeout_s: float) -> None:
        """Until the role may have changed, the daemon stops, or `timeout_s`."""
        waiters = [asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(self.stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.changed.clear()

    def view(self) -> dict[str, Any]:
        """For /status: this node, its role and the leader as last read."""
        term = self.store.term
        view = {"node": self.holder, "role": self.role(), "epoch": None if term is None else term.epoch,
                "leader": self.seen.view(), "lost": self.store.lease.lost,
                # the longest the event loop kept the lease keeper's probe waiting (compare with loop_stall_s)
                "loop_longest_busy_s": None if self.keeper is None else round(self.keeper.longest_stall_s, 1)}
        if view["role"] == STANDBY:
            view["store"] = self.shared
        return view


LEADER_CHANGED = "interrupted: the node running it stopped leading (killed, paused or cut off); ended by the next leader"


def leadership_of(store: Any, settings: Callable[[], StoreConfig], stop: asyncio.Event) -> Leadership | None:
    """The election, for a store that has a lease (PostgreSQL); None on SQLite, where the lock file decides."""
    return None if getattr(store, "lease", None) is None else Leadership(store, settings, stop)


async def take_over(leadership: Leadership, store: Any, reconciler: Any, metrics: Any) -> bool:
    """Whether the daemon may tick now. A node that just took the lease
    migrates the schema, ends the ticks the last leader left open and reads
    the store afresh (the last leader changed it); one that lost the lease
    forgets what it read and waits to lead again."""
    term = leadership.valid_term()
    metrics.leader.set(0 if term is None else 1)
    if leadership.seen.epoch is not None:
        metrics.lease_epoch.set(leadership.seen.epoch)
    if term is None:
        if leadership.acting:
            leadership.acting = False
            reconciler.reread()
        await leadership.wait(leadership.settings().renew_s)
        return False
    if not leadership.acting or store.lease.bound != term.epoch:  # a new term: start from the store
        store.lease.bound = term.epoch  # between ticks: no work of an earlier term is under way
        try:
            await store.migrate()
            await refuse_unfinished_copy(store)
            for tick in await store.end_unfinished_ticks(time.time(), LEADER_CHANGED):
                log.warning("tick interrupted", tick=tick, error=LEADER_CHANGED)
        except StoreError as error:
            log.error("took the leader lease but cannot prepare the store; handing it over", error=str(error))
            try:
                await store.lease.release()
            except StoreError:
                pass  # it expires by itself
            await leadership.wait(leadership.settings().renew_s)
            return False
        reconciler.reread()
        reconciler.admission = Admission()  # an earlier term's queue and runs are not this term's
        leadership.acting = True
    return True


def standby_readiness(leadership: Leadership, now: float) -> tuple[bool, dict[str, Any]]:
    """A standby is ready while it reaches the store: it answers for the
    cluster and can take over (/leaderz tells the leader apart)."""
    seen = leadership.seen
    if leadership.healthy(now):
        who = seen.holder if seen.holder is not None and (seen.seconds_left or 0) > 0 else None
        return True, {"ready": True, "role": STANDBY, "leader": who,
                      "reason": f"standby: {'node ' + who if who else 'no node'} leads"}
    return False, {"ready": False, "role": STANDBY, "leader": seen.holder,
                   "reason": f"standby cannot reach the store: {unreachable(seen, leadership.asking_since, now)}"}


def unreachable(seen: LeaderSeen, asking_since: float | None, now: float) -> str:
    """Why a standby's store is not reached, as far as it knows: the last
    attempt's error, or the attempt still waiting for an answer (a
    partition: the statement hangs until the command timeout), and when
    the store was last read; "not read yet" only when it never was."""
    if seen.error is not None:
        why = seen.error
    elif asking_since is not None:
        why = f"no answer for {max(0.0, now - asking_since):.0f} s"
    else:
        why = "the last attempt failed (see the log)"
    if seen.read_at is None:
        return f"{why}; not read yet" if seen.error is not None or asking_since is not None else "not read yet"
    return f"{why}; last read {max(0.0, now - seen.read_at):.0f} s ago"


def leader_answer(leadership: Leadership | None) -> tuple[bool, dict[str, Any]]:
    """/leaderz: 200 only on the node that leads (always on SQLite, where one node runs)."""
    if leadership is None:
        return True, {"leader": True}
    return leadership.leading(), {"leader": leadership.leading(), "node": leadership.holder,
                                  "current": leadership.seen.holder}


def cluster_view(leadership: Leadership | None) -> dict[str, Any]:
    """What /status adds about the cluster: nothing on SQLite."""
    return {} if leadership is None else {"cluster": leadership.view()}

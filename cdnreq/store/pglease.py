"""The leader lease on PostgreSQL: one row, its epoch the fencing token.

A node leads by taking the lease once it has expired (by the database's
clock, never a node's), which increments the epoch; it renews it well
before it expires. Every write transaction of the leader first takes the
lease row `FOR KEY SHARE` and checks that it still holds this epoch,
unexpired: a takeover changes the epoch, which has a unique index, so it
needs the row `FOR UPDATE` and waits for that transaction to end. So no
write of an old leader can land after a new leader took over, however
long the old one was paused or cut off. Renewing changes no key: a long
write never holds up its own renewal.

The lease lives outside the versioned schema: it must exist before any
node can lead, and only the leader migrates.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Awaitable, Callable, Final

import asyncpg
import structlog

from cdnreq.decide.leadership import Term, acts_until
from cdnreq.store.errors import StoreLocked, StoreLost
from cdnreq.store.pgconn import transaction

log = structlog.get_logger("cdnreq.lease")

NOW: Final[str] = "extract(epoch FROM clock_timestamp())::double precision"
NAME: Final[str] = "leader"

# the lease table's creation, serialised: CREATE TABLE IF NOT EXISTS is not
# safe against a concurrent one (nodes started at once on a new database)
LOCK_CREATE: Final[str] = "SELECT pg_advisory_xact_lock(1667526258)"
CREATE: Final[str] = """
CREATE TABLE IF NOT EXISTS cdnreq_lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL UNIQUE,
    expires_at DOUBLE PRECISION NOT NULL,
    taken_at DOUBLE PRECISION NOT NULL
)"""

# $1 holder, $2 lease seconds: the new epoch, or no row while another holds it.
# A node may take again at once the lease it still holds by the database's
# clock (it gave its term up when the term ran out on its own, earlier,
# clock): under a new epoch, so whatever its old term decided is fenced
# (the holder names one process: a restarted node is another holder).
TAKE: Final[str] = f"""
INSERT INTO cdnreq_lease AS l (name, holder, epoch, expires_at, taken_at)
VALUES ('{NAME}', $1, 1, {NOW} + $2, {NOW})
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at, taken_at = excluded.taken_at
WHERE l.expires_at <= {NOW} OR l.holder = excluded.holder
RETURNING epoch"""

# $1 holder, $2 epoch, $3 lease seconds: a row while still held
RENEW: Final[str] = f"""
UPDATE cdnreq_lease SET expires_at = {NOW} + $3
WHERE name = '{NAME}' AND holder = $1 AND epoch = $2 AND expires_at > {NOW}
RETURNING epoch"""

# the first statement of every write transaction of the leader ($1 holder, $2 epoch)
FENCE: Final[str] = f"""
SELECT 1 FROM cdnreq_lease
WHERE name = '{NAME}' AND holder = $1 AND epoch = $2 AND expires_at > {NOW}
FOR KEY SHARE"""

# a leader stopping hands over at once instead of after its lease ($1 holder, $2 epoch)
RELEASE: Final[str] = f"""
UPDATE cdnreq_lease SET expires_at = {NOW}
WHERE name = '{NAME}' AND holder = $1 AND epoch = $2"""

# Sessions of an expired term still holding the fence's lock (FOR KEY SHARE is
# RowShareLock on the table), ended: how many. A leader paused in the middle of
# a write's statement (the server waiting for the rest of an executemany
# pipeline) is not "idle in transaction", so the server's idle timeout never
# ends it, and every takeover would wait on it for ever.
END_STUCK: Final[str] = f"""
SELECT count(*) FILTER (WHERE pg_terminate_backend(k.pid)) FROM pg_locks k
WHERE k.locktype = 'relation' AND k.relation = to_regclass('cdnreq_lease') AND k.mode = 'RowShareLock'
AND k.granted AND k.pid <> pg_backend_pid()
AND EXISTS (SELECT 1 FROM cdnreq_lease WHERE name = '{NAME}' AND expires_at <= {NOW})"""

# who leads: holder, epoch, seconds left (negative once expired)
CURRENT: Final[str] = f"SELECT holder, epoch, expires_at - {NOW} FROM cdnreq_lease WHERE name = '{NAME}'"

NOT_LEADING = "this node does not hold the leader lease: it reads the store and writes nothing"

Runner = Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]  # runs work on a pooled connection


class NotLeading(StoreLost):
    """A write by a node that does not lead (any more): nothing was written."""


class Lease:
    """One node's part in the lease: the term it holds, if any."""

    def __init__(self, run: Runner, holder: str, name: str):
        self._run, self.holder, self.name = run, holder, name
        # the term is renewed from the keeper's thread too (cdnreq.store.pgkeeper):
        # each change of it is made under this lock
        self._hold = threading.Lock()
        self.term: Term | None = None
        self.lost: str | None = None  # why this node stopped leading
        # the epoch the work under way was decided in: a lease lost and taken
        # again since is another term, whose writes that work may not make
        self.bound: int | None = None
        self._table = False  # cdnreq_lease made: by the first take, never by a node that only reads
        self.lease_s: float | None = None  # of the last take or renewal
        self.ended_stuck = 0  # sessions of an expired term this node ended to take the lease (END_STUCK)

    async def take(self, lease_s: float) -> Term | None:
        """The lease if it has expired: the new term; None while another node holds it."""
        if not self._table:
            await self._run(create_table)
            self._table = True
        asked = time.monotonic()

        async def take(conn: Any) -> Any:
            try:  # an old term's write open for as long as a lease is ended (END_STUCK): its term is over
                async with transaction(conn):
                    await conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lease_s * 1000))}")
                    return await conn.fetchval(TAKE, self.holder, lease_s)
            except asyncpg.UniqueViolationError:  # another node's first take of a never-held lease won
                return None
            except asyncpg.LockNotAvailableError:
                try:
                    ended = await conn.fetchval(END_STUCK)
                except asyncpg.PostgresError as error:  # not allowed to end them: it waits as before
                    log.error("a session of the expired term blocks the takeover", error=str(error))
                    return None
                self.ended_stuck += ended
                log.warning("ended sessions of the expired term that blocked the takeover", sessions=ended)
                return None  # taken at the next step

        epoch = await self._run(take)
        if epoch is None:
            return None
        self.lease_s = lease_s
        with self._hold:
            self.term, self.lost = Term(self.holder, int(epoch), acts_until(asked, lease_s)), None
        if self.bound is None:  # no work was under way in an earlier term
            self.bound = self.term.epoch
        return self.term

    async def take_or_refuse(self, lease_s: float) -> Term:
        term = await self.take(lease_s)
        if term is None:
            holder, _, left = await self.leader() or ("?", 0, 0.0)
            raise StoreLocked(f"{self.name}: node {holder} leads (its lease runs {max(left, 0):.1f} s more); "
                              "stop it, or act through its endpoint")
        self.bound = term.epoch
        return term

    async def renew(self, lease_s: float, run: Runner | None = None) -> Term | None:
        """Renew the term held; None once it is lost (taken over, or expired).
        `run`: another connection's runner (the keeper's thread)."""
        term = self.term
        if term is None:
            return None
        asked = time.monotonic()
        self.lease_s = lease_s
        epoch = await (run or self._run)(lambda c: c.fetchval(RENEW, term.holder, term.epoch, lease_s))
        with self._hold:
            held = self.term
            if held is None or held.epoch != term.epoch:  # given up or taken anew meanwhile: not this renewal's
                return held
            if epoch is None:
                self._step_down(f"the leader lease (epoch {term.epoch}) was lost")
                return None
            until = acts_until(asked, lease_s)
            if until > held.until:
                self.term = Term(term.holder, term.epoch, until)
            return self.term

    async def refresh(self) -> None:
        """Renew now a term that ran out on this node's clock while its event
        loop was busy (a long stretch of a big tick keeps the renewal task
        from running): the database renews it only while it is still this
        node's and unexpired by the database's clock, so no other node can
        have taken it meanwhile; otherwise this node steps down. Writes and
        master calls ask for it before they check the term."""
        term, lease_s = self.term, self.lease_s
        if term is None or lease_s is None or term.valid(time.monotonic()):
            return
        await self.renew(lease_s)

    async def release(self) -> None:
        """Hand the lease over at once (a clean stop)."""
        with self._hold:
            term, self.term = self.term, None
        if term is not None:
            await self._run(lambda c: c.execute(RELEASE, term.holder, term.epoch))

    def step_down(self, why: str, epoch: int | None = None) -> None:
        """Stop leading (only the term of `epoch`, when given)."""
        with self._hold:
            if epoch is None or (self.term is not None and self.term.epoch == epoch):
                self._step_down(why)

    def _step_down(self, why: str) -> None:
        self.term, self.lost = None, why

    def current(self) -> Term | None:
        """The term held, unless it ran out on this node's clock: then it is
        given up (checked and given up under the lock the keeper renews under)."""
        with self._hold:
            term = self.term
            if term is not None and not term.valid(time.monotonic()):
                self._step_down(f"the leader lease (epoch {term.epoch}) was not renewed in time")
                return None
            return term

    async def leader(self) -> tuple[str, int, float] | None:
        """Holder, epoch and seconds left (negative once expired); None before any node led."""

        async def current(conn: Any) -> Any:
            try:
                return await conn.fetchrow(CURRENT)
            except asyncpg.UndefinedTableError:  # no node took the lease yet
                return None

        row = await self._run(current)
        return None if row is None else (row[0], int(row[1]), float(row[2]))

    def fence_term(self) -> Term:
        """The term a write carries; NotLeading when none is held or it ran out."""
        term = self.current()
        if term is None:
            raise NotLeading(f"{self.name}: {self.lost or NOT_LEADING}")
        if term.epoch != self.bound:
            raise NotLeading(f"{self.name}: the lease was lost and taken again (epoch {self.bound} then "
                             f"{term.epoch}) since the work under way was decided: it is redone from the store")
        return term

    def acts(self) -> bool:
        """Holds the lease, unexpired, in the term the work under way was decided in."""
        term = self.term
        return term is not None and term.epoch == self.bound and term.valid(time.monotonic())

    async def check(self, conn: Any, term: Term) -> None:
        """The fence, first in a write transaction on `conn`."""
        if await conn.fetchval(FENCE, term.holder, term.epoch) is None:
            self.step_down(f"the leader lease (epoch {term.epoch}) is held by another node now", term.epoch)
            raise NotLeading(f"{self.name}: {self.lost}")


async def create_table(conn: Any) -> None:
    """cdnreq_lease, once, whichever node comes first (the advisory lock:
    CREATE TABLE IF NOT EXISTS alone races between nodes starting at once)."""
    async with transaction(conn):
        await conn.execute(LOCK_CREATE)
        await conn.execute(CREATE)

"""Batched, concurrent DNS lookups with aiodns (c-ares).

:meth:`Resolver.txt_many` resolves the TXT records of many names together,
at most ``concurrency`` lookups in flight, and classifies each name as a
:class:`Lookup`: ``"found"`` (TXT values), ``"absent"`` (NXDOMAIN or no TXT
record: NODATA) or ``"unknown"`` (the DNS did not say: timeout, SERVFAIL,
REFUSED, no server reachable, a CNAME loop or a chain too long, ...).
Only "found" and "absent" are answers; "unknown" must be asked again later.

Notes on c-ares 1.34 (pycares 5, aiodns 4) that shape this module:

* Name servers are given to c-ares as ``ip:port`` / ``[v6]:port`` strings
  (``ares_set_servers_csv``); :func:`parse_nameserver` validates and
  normalises them.
* c-ares retries by itself (``tries``) and falls back to TCP when a UDP
  answer is truncated. Its per-try timeout is adaptive: ``timeout_s`` is only
  the initial value; once it has measured a server, it uses five times the
  average latency, at least 250 ms, doubled on each retry. Against a fast
  server a silent name then gives up after ~0.5 s instead of ``timeout_s *
  tries`` (a slow recursion would be called a timeout too early), and against
  a slow one it may wait far longer. So each question gets ``timeout_s *
  tries`` (checked every 50 ms): asked again if c-ares gives up earlier, given
  up (``"timeout"``) when that time is spent. A lookup as a whole (all its
  CNAME hops) is also bounded by ``timeout_s * tries * 2 + 1``.
* For a TXT question on an alias, the answer holds the CNAME records and, if
  the server knows them, the target's TXT records (``DNSResult.answer`` in
  order, owners without trailing dot). If the target's records are missing
  (the target lives elsewhere), the answer holds only the CNAME with NOERROR:
  this module then asks the target itself, up to 8 hops, and calls a loop or
  a longer chain "unknown". So is an answer whose records all belong to
  other names than the one asked (c-ares checks only the question section):
  it is no NODATA.
* c-ares reports NXDOMAIN as ARES_ENOTFOUND and NOERROR-without-answer as
  ARES_ENODATA.
* c-ares caches answers for their TTL (at most an hour, negative answers
  only with an SOA) for the life of a :class:`Resolver`.
* c-ares' event thread makes each query and answer contend for the channel
  lock and the GIL, which halves the rate against a fast server. So with
  given nameservers the event loop drives c-ares (aiodns' fallback mode; the
  thread is kept for the system resolver, whose configuration it watches);
  c-ares then checks its timeouts on socket activity and every <= 1 s.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import aiodns
import idna
import pycares
from aiodns.error import DNSError

from cdnreq.dns.names import parse_nameserver
from cdnreq.model import Lookup

__all__ = ["Lookup", "Resolver", "MAX_CNAME_HOPS", "parse_nameserver"]

_log = logging.getLogger(__name__)

MAX_CNAME_HOPS = 8

FOUND, ABSENT, UNKNOWN = "found", "absent", "unknown"

_E = pycares.errno
_DETAILS = {
    _E.ARES_ENOTFOUND: "NXDOMAIN", _E.ARES_ENODATA: "NODATA", _E.ARES_ETIMEOUT: "timeout",
    _E.ARES_ESERVFAIL: "SERVFAIL", _E.ARES_EREFUSED: "REFUSED", _E.ARES_ENOTIMP: "NOTIMP",
    _E.ARES_EFORMERR: "FORMERR", _E.ARES_ECONNREFUSED: "connection refused", _E.ARES_EBADNAME: "bad name",
    _E.ARES_EBADRESP: "bad response", _E.ARES_ECANCELLED: "cancelled", _E.ARES_EDESTRUCTION: "cancelled",
}
_ABSENT_CODES = frozenset({_E.ARES_ENOTFOUND, _E.ARES_ENODATA})

_QTYPES = {"TXT": pycares.QUERY_TYPE_TXT, "A": pycares.QUERY_TYPE_A, "AAAA": pycares.QUERY_TYPE_AAAA}
_CNAME = pycares.QUERY_TYPE_CNAME

# Ask again after a c-ares timeout only if at least this much of the budget is left.
_REASK_MIN_S = 0.05


@dataclass(slots=True)
class _Chain:
    """One question followed through CNAMEs."""

    outcome: str
    records: tuple = ()
    aliases: tuple[str, ...] = ()  # the CNAME targets followed, in order
    detail: str = ""
    seconds: float = 0.0  # from a worker taking it to the end


class _Failure(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _key(name: str) -> str:
    """The form names are compared in: lower case, no trailing dot."""
    return name.strip().rstrip(".").lower()


def _ascii(name: str) -> str:
    """The name as asked on the wire (IDNA for non-ASCII labels); _Failure if unusable."""
    key = _key(name)
    if not key or ".." in key:
        raise _Failure(UNKNOWN, "bad name")
    if key.isascii():
        return key
    try:
        return idna.encode(key, uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        raise _Failure(UNKNOWN, "bad name") from None


def _walk(answer: list, start: str, qtype: int, aliases: list[str], first: str):
    """Follow CNAMEs inside one answer from start: (name reached, its records of qtype).

    Appends the targets followed to aliases; _Failure on a loop or a chain
    too long, or on records (of qtype, or CNAMEs) none of which is start's:
    an answer for another name says nothing about this one (not NODATA).
    """
    if all(rr.type == qtype and (rr.name == start or _key(rr.name) == start) for rr in answer):
        return start, answer  # the usual answer: no alias
    cnames: dict[str, str] = {}
    records: dict[str, list] = {}
    for rr in answer:
        owner = _key(rr.name)
        if rr.type == qtype:
            records.setdefault(owner, []).append(rr)
        elif rr.type == _CNAME:
            cnames.setdefault(owner, _key(rr.data.cname))
    if (records or cnames) and start not in records and start not in cnames:
        raise _Failure(UNKNOWN, "answer for another name")
    current = start
    while not records.get(current) and current in cnames:
        target = cnames[current]
        if target == first or target in aliases:
            raise _Failure(UNKNOWN, "CNAME loop")
        aliases.append(target)
        if len(aliases) > MAX_CNAME_HOPS:
            raise _Failure(UNKNOWN, "CNAME chain too long")
        current = target
    return current, records.get(current, [])


class _LoopDriven(aiodns.DNSResolver):
    """aiodns with c-ares run by the event loop, not by its own thread (see above)."""

    def _make_channel(self, **kwargs):
        this = weakref.ref(self)  # as aiodns' own fallback: no cycle through the channel

        def state(fd: int, readable: bool, writable: bool) -> None:
            if (resolver := this()) is not None:
                resolver._sock_state_cb(fd, readable, writable)

        return False, pycares.Channel(sock_state_cb=state, timeout=self._timeout, **kwargs)


# aiodns' private hooks; without them the default (threaded) channel is used.
_CAN_DRIVE = all(hasattr(aiodns.DNSResolver, a) for a in ("_make_channel", "_sock_state_cb"))


class Resolver:
    """Concurrent TXT and address lookups; see the module docstring.

    nameservers: ``ip``, ``ip:port`` or ``[v6]:port`` strings; None (or empty)
    uses the system resolver. timeout_s: c-ares' initial per-try timeout, and
    ``timeout_s * tries`` the time after which a silent name is a timeout.
    concurrency: questions in flight at most (a TXT lookup is one question at
    a time, addresses() two). observer(outcome, seconds) is called once per
    lookup, seconds counted from the moment a worker took it (queueing excluded).
    in_flight and peak_in_flight count the workers holding a slot, each asking
    one question at a time.

    The c-ares channel is made on first use and bound to that event loop.
    """

    def __init__(self, *, nameservers: Sequence[str] | None = None, timeout_s: float = 2.0, tries: int = 2,
                 concurrency: int = 256, observer: Callable[[str, float], None] | None = None) -> None:
        if isinstance(nameservers, str):
            raise ValueError(f"nameservers must be a list of strings, not the string {nameservers!r}")
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
            raise ValueError(f"bad timeout_s {timeout_s!r}")
        if not (isinstance(tries, int) and tries >= 1):
            raise ValueError(f"bad tries {tries!r}")
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(f"bad concurrency {concurrency!r}")
        self.nameservers = tuple(parse_nameserver(s) for s in nameservers) if nameservers else None
        self.timeout_s = float(timeout_s)
        self.tries = tries
        self.concurrency = concurrency
        self.observer = observer
        # A silent name is a timeout after this much; past the deadline a
        # lookup is given up whatever c-ares does (a safety net).
        self._budget_s = self.timeout_s * tries
        self._deadline_s = self._budget_s * 2 + 1
        self._tick_s = min(0.05, self._budget_s / 20)  # how often budgets are checked
        self._slots = asyncio.Semaphore(concurrency)
        self._dns: aiodns.DNSResolver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.in_flight = 0
        self.peak_in_flight = 0

    # -- life cycle ---------------------------------------------------------

    def _channel(self) -> aiodns.DNSResolver:
        if self._closed:
            raise RuntimeError("Resolver is closed")
        loop = asyncio.get_running_loop()
        if self._dns is None:
            kind = _LoopDriven if self.nameservers and _CAN_DRIVE else aiodns.DNSResolver
            self._dns = kind(nameservers=list(self.nameservers) if self.nameservers else None,
                             loop=loop, timeout=self.timeout_s, tries=self.tries)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("Resolver used from another event loop than the one it started in")
        return self._dns

    async def close(self) -> None:
        """Cancel pending queries and release the c-ares channel (idempotent)."""
        self._closed = True
        dns, self._dns = self._dns, None
        if dns is not None:
            await dns.close()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- public lookups -----------------------------------------------------

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        """TXT lookups of all names, concurrently; keyed by the names as given.

        Names equal but for case or a trailing dot are looked up once.
        """
        given = list(names)
        for name in given:
            if not isinstance(name, str):
                raise TypeError(f"a DNS name must be a str, not {type(name).__name__}: {name!r}")
        self._channel()
        keys = [_key(name) for name in given]
        firsts: dict[str, str] = {}
        for key, name in zip(keys, given):
            firsts.setdefault(key, name)
        chains = await self._pool([(name, "TXT") for name in firsts.values()])
        found: dict[str, Lookup] = {}
        for (key, name), chain in zip(firsts.items(), chains):
            if chain.outcome == FOUND:
                values = tuple([r.data.data.decode("utf-8", "replace") for r in chain.records])
                found[key] = Lookup(name, FOUND, values, _via(chain.aliases))
            else:
                found[key] = Lookup(name, chain.outcome, (), chain.detail)
            self._observe(chain.outcome, chain.seconds)
        return {name: lk if (lk := found[key]).name == name else replace(lk, name=name)
                for key, name in zip(keys, given)}

    async def txt(self, name: str) -> Lookup:
        """TXT lookup of one name."""
        return (await self.txt_many([name]))[name]

    async def addresses(self, name: str) -> Lookup:
        """A and AAAA of name, following CNAMEs.

        values: the IPv4 addresses, the IPv6 addresses, then the CNAME targets
        followed. "found" if any of these exists (an alias whose target has no
        address is found, with the target only); "unknown" if either question
        got no answer.
        """
        if not isinstance(name, str):
            raise TypeError(f"a DNS name must be a str, not {type(name).__name__}: {name!r}")
        self._channel()
        v4, v6 = await self._pool([(name, "A"), (name, "AAAA")])
        unknown = [f"{kind} {c.detail}" for kind, c in (("A", v4), ("AAAA", v6)) if c.outcome == UNKNOWN]
        if unknown:
            result = Lookup(name, UNKNOWN, (), "; ".join(unknown))
        else:
            values = list(dict.fromkeys(
                [r.data.addr for r in v4.records] + [r.data.addr for r in v6.records] + [*v4.aliases, *v6.aliases]))
            if values:
                result = Lookup(name, FOUND, tuple(values), _via(v4.aliases or v6.aliases))
            else:
                detail = "NXDOMAIN" if v4.detail == v6.detail == "NXDOMAIN" else "NODATA"
                result = Lookup(name, ABSENT, (), detail)
        self._observe(result.outcome, max(v4.seconds, v6.seconds))
        return result

    # -- internals ------------------------------------------------------------

    async def _pool(self, questions: list[tuple[str, str]]) -> list[_Chain]:
        """The chains of (name, qtype) questions, in order.

        At most ``concurrency`` workers take the questions in turn, each with
        one slot for all it takes: a task and a slot per name cost more than
        the lookup itself against a fast server.
        """
        loop, chains = self._loop, [None] * len(questions)
        todo = iter(enumerate(questions))
        asking = [[0.0, None] for _ in range(min(self.concurrency, len(questions)))]

        async def worker(cell: list) -> None:  # cell: [give_up, future] of its question
            async with self._slots:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    for i, (name, qtype_name) in todo:
                        chains[i] = await self._chain(name, qtype_name, cell)
                finally:
                    self.in_flight -= 1

        def sweep() -> None:  # one timer per batch: one per question costs more than a fast answer
            nonlocal timer
            now = loop.time()
            for give_up, future in asking:
                if give_up <= now and future is not None and not future.done():
                    future.set_exception(TimeoutError())  # aiodns itself never sets it
            timer = loop.call_later(self._tick_s, sweep)

        timer = loop.call_later(self._tick_s, sweep)
        try:
            await (worker(asking[0]) if len(asking) == 1 else asyncio.gather(*map(worker, asking)))
        finally:
            timer.cancel()
            sweep = None  # type: ignore[assignment]  # it names itself: a cycle that held the batch's answers
        return chains

    def _observe(self, outcome: str, seconds: float) -> None:
        if self.observer is None:
            return
        try:
            self.observer(outcome, seconds)
        except Exception:  # a metrics hook must not break lookups
            _log.exception("DNS lookup observer failed")

    async def _chain(self, name: str, qtype_name: str, cell: list) -> _Chain:
        """One question, CNAMEs followed, within the safety-net deadline."""
        qtype, aliases, loop = _QTYPES[qtype_name], [], self._loop
        started = loop.time()
        deadline = started + self._deadline_s
        try:
            first = current = _ascii(name)
            for _ in range(MAX_CNAME_HOPS + 1):
                answer = await self._ask(current, qtype_name, deadline, cell)
                reached, records = _walk(answer, current, qtype, aliases, first)
                if records or reached == current:
                    break
                current = reached  # an alias whose target's records were not given: ask the target
            else:
                raise _Failure(UNKNOWN, "CNAME chain too long")
            chain = _Chain(FOUND, tuple(records), tuple(aliases)) if records else (
                _Chain(ABSENT, (), tuple(aliases), "NODATA"))
        except _Failure as failure:
            chain = _Chain(failure.outcome, (), tuple(aliases), failure.detail)
        except Exception as error:  # never let one name sink the batch
            _log.exception("DNS lookup of %s %s failed", name, qtype_name)
            chain = _Chain(UNKNOWN, (), tuple(aliases), f"error: {error!r}")
        chain.seconds = loop.time() - started
        return chain

    async def _ask(self, name: str, qtype_name: str, deadline: float, cell: list) -> list:
        """One question, given timeout_s * tries in all (never past deadline).

        Asked again if c-ares gives up before the budget is spent (see above);
        the pool's sweep fails it with TimeoutError when the budget is spent.
        """
        dns, loop = self._dns, self._loop
        if self._closed or dns is None:
            raise _Failure(UNKNOWN, "cancelled")
        give_up = cell[0] = min(loop.time() + self._budget_s, deadline)
        while True:
            future = cell[1] = dns.query_dns(name, qtype_name)
            try:
                return (await future).answer
            except TimeoutError:
                raise _Failure(UNKNOWN, "timeout") from None
            except DNSError as error:
                code = error.args[0] if error.args else None
                if code == _E.ARES_ETIMEOUT and give_up - loop.time() > _REASK_MIN_S:
                    continue
                if code in _ABSENT_CODES:
                    raise _Failure(ABSENT, _DETAILS[code]) from None
                detail = _DETAILS.get(code) or (error.args[1] if len(error.args) > 1 else repr(error))
                raise _Failure(UNKNOWN, detail) from None
            finally:
                # A failed future holds its error, whose traceback holds this
                # frame, which held the future: a cycle per absent name, kept
                # until the collector runs after the tick (heap.collector_paused)
                future = cell[1] = None


def _via(aliases: Sequence[str]) -> str:
    return "via CNAME " + " -> ".join(aliases) if aliases else ""

"""The endpoint against a hostile network: slow or silent clients, floods.

aiohttp's server reads a request head for as long as the client takes, and
keeps any number of connections. On a listener others can reach, a few
hundred sockets that never send a byte would hold descriptors, and past the
process's RLIMIT_NOFILE every accept, every master call and every database
file would fail. So each connection is watched from the moment it is
accepted:

- a connection must deliver a complete request head (up to the blank line)
  within `header_timeout_s` of being accepted, and a later head within
  `header_timeout_s` of its first byte; otherwise it is cut;
- between requests, aiohttp's `keepalive_timeout` (`idle_timeout_s`) closes
  an idle keep-alive connection;
- a client that stops reading its answers (pipelined requests piling up
  unread) stalls the server's write with a request in flight, which no
  aiohttp timeout ends: a write stalled for `idle_timeout_s` is cut;
- at most `max_connections` are open. A new connection beyond it takes the
  place of the oldest one that has not sent a complete head yet (a silent
  one is the cheapest to drop and the likeliest attacker), or else of the
  one whose last head is the oldest (an answered keep-alive connection is
  idle, and HTTP lets a server close an idle one). So a probe of /healthz
  gets in at once even while the cap is held by sockets that sent nothing,
  or that each sent one request and then idle.

The watch is a wrapper around aiohttp's protocol: it sees the bytes and the
transport, forwards everything, and never parses HTTP beyond looking for the
end of a head. Our routes are GET without bodies; bytes after a head count
as the next head.

Out of descriptors, asyncio's accept loop reports "socket.accept() out of
system resource" on each retry; `AcceptErrorLog` logs that at most once a
second, with the count of what it held back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, cast

import structlog
from aiohttp import web

from cdnreq.resources import Throttle, local_errno

__all__ = ["AcceptErrorLog", "ConnectionGuard", "ConnectionLimits", "GuardedRunner"]

log = structlog.get_logger("cdnreq.endpoint")

_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 15.0
    max_connections: int = 256


class ConnectionGuard:
    """A protocol factory for asyncio servers: wraps `factory` (aiohttp's
    Server) and enforces `limits` on every connection it makes."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limits: ConnectionLimits):
        self.factory = factory
        self.limits = limits
        self.open: set[_Watch] = set()
        self.silent: dict[_Watch, None] = {}  # no complete head yet, oldest first
        self.spoken: dict[_Watch, None] = {}  # the others, least recent head first
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.stalled = 0

    def __call__(self) -> asyncio.Protocol:
        return _Watch(self)

    def admit(self, watch: _Watch) -> bool:
        """Room for `watch`, evicting the oldest silent connection, or else the
        least recently active one, if need be."""
        if len(self.open) >= self.limits.max_connections:
            victim = next(iter(self.silent), None) or next(iter(self.spoken), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            victim.cut()
        self.open.add(watch)
        self.silent[watch] = None
        return True

    def spoke(self, watch: _Watch) -> None:
        self.silent.pop(watch, None)
        self.spoken.pop(watch, None)
        self.spoken[watch] = None  # the most recent now

    def release(self, watch: _Watch) -> None:
        self.open.discard(watch)
        self.silent.pop(watch, None)
        self.spoken.pop(watch, None)


class _Watch(asyncio.Protocol):
    """One connection: forwards to aiohttp's handler, times the heads."""

    def __init__(self, guard: ConnectionGuard):
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # armed while writing is paused
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        if not self.guard.admit(self):
            transport.abort()  # before reading a byte
            return
        self._arm()
        self.inner = self.guard.factory()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        self._scan(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            if self.stall is None:
                loop = asyncio.get_running_loop()
                self.stall = loop.call_later(self.guard.limits.idle_timeout_s, self._stalled)
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        self.guard.release(self)
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def cut(self) -> None:
        """Drop the connection now (its descriptor is freed at once)."""
        self._unwatch()
        self.guard.release(self)
        if self.transport is not None:
            self.transport.abort()

    def _scan(self, data: bytes) -> None:
        """Track the end of each head; a head in progress has a deadline."""
        buffer = self.tail + data
        end = buffer.rfind(_HEAD_END)
        if end < 0:
            self.tail = buffer[-3:]
            if self.timer is None:
                self._arm()  # the first byte of a later head
            return
        self.guard.spoke(self)
        rest = buffer[end + len(_HEAD_END):]
        self.tail = rest[-3:]
        self._disarm()
        if rest:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.limits.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _unwatch(self) -> None:
        self._disarm()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _expire(self) -> None:
        self.timer = None
        self.guard.timed_out += 1
        self.cut()

    def _stalled(self) -> None:
        """The client read nothing of an answer for `idle_timeout_s`."""
        self.stall = None
        self.guard.stalled += 1
        self.cut()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites serve through a `ConnectionGuard`; idle
    keep-alive connections close after `limits.idle_timeout_s`."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any):
        super().__init__(app, keepalive_timeout=limits.idle_timeout_s, **kwargs)
        self.limits = limits
        self.guard: ConnectionGuard | None = None

    async def setup(self) -> None:
        await super().setup()
        inner = super().server
        assert inner is not None
        self.guard = ConnectionGuard(inner, self.limits)

    @property
    def server(self) -> Any:
        """What sites hand to the event loop as the protocol factory."""
        return None if super().server is None else self.guard


class AcceptErrorLog:
    """An event loop exception handler: accept failures for lack of
    descriptors are logged at most once per `interval_s` (asyncio retries
    each second per listener, and each retry reports); everything else goes
    to the handler that was there before."""

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[..., object] | None = None,
    ):
        self.previous = previous
        self.throttle = Throttle(interval_s)
        self.clock = clock
        self.emit = emit or log.error

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if "accept" not in str(context.get("message", "")) or local_errno(error) is None:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        dropped = self.throttle.allow(self.clock())
        if dropped is None:
            return
        self.emit(
            "the endpoint cannot accept connections: out of local resources",
            error=str(error),
            held_back=dropped,
        )

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> AcceptErrorLog:
        """Install on `loop` (once: an installed one is returned as is)."""
        current = loop.get_exception_handler()
        if isinstance(current, cls):
            return current
        handler = cls(current)
        loop.set_exception_handler(handler)
        return handler

"""The relay itself: UDP and TCP on one loopback port, each way delayed (see bench/relay/__init__.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
import time
from typing import Any, Self

__all__ = ["Relay", "check_loopback", "parse_address"]

_MAX_UPSTREAM_SOCKETS = 1024


def check_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the relay only uses loopback addresses, not {host!r}")
    return host


def parse_address(text: str) -> tuple[str, int]:
    """``ip:port`` or ``[v6]:port`` -> (ip, port), loopback only."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return check_loopback(host), int(port)


_BUFFER_BYTES = 8 * 1024 * 1024
_SO_RCVBUFFORCE, _SO_SNDBUFFORCE = 33, 32
_READS_PER_WAKEUP = 512


def _big_buffers(sock: socket.socket) -> None:
    """Room for bursts of datagrams (the default ~200 kB holds only ~100 of them on lo)."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER_BYTES)  # root: past rmem_max
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, _BUFFER_BYTES)


class Relay:
    """UDP and TCP on one loopback port, forwarded to `upstream` with `delay_s` each way."""

    def __init__(self, upstream: tuple[str, int], *, delay_s: float = 0.015,
                 host: str = "127.0.0.1", port: int = 0):
        self.upstream = (check_loopback(upstream[0]), int(upstream[1]))
        self.delay_s = float(delay_s)
        self.host = check_loopback(host)
        self.requested_port = port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._front: socket.socket | None = None
        self._tcp: asyncio.base_events.Server | None = None
        # client address -> a connected upstream socket (so answers find their way back)
        self._upstream: collections.OrderedDict[Any, socket.socket] = collections.OrderedDict()
        self._tcp_tasks: set[asyncio.Task] = set()
        self.reset()

    # -- counters -------------------------------------------------------------

    def reset(self) -> dict[str, Any]:
        self.udp_queries = 0
        self.udp_answers = 0
        self.udp_dropped = 0
        self.tcp_connections = 0
        self.first_query_at: float | None = None
        self.last_answer_at: float | None = None
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "delay_s": self.delay_s,
            "udp_queries": self.udp_queries,
            "udp_answers": self.udp_answers,
            "udp_dropped": self.udp_dropped,
            "tcp_connections": self.tcp_connections,
            "first_query_at": self.first_query_at,
            "last_answer_at": self.last_answer_at,
            "now": time.monotonic(),
        }

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> Self:
        self._loop = loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            front = socket.socket(family, socket.SOCK_DGRAM)
            front.setblocking(False)
            _big_buffers(front)
            front.bind((self.host, self.requested_port))
            port = front.getsockname()[1]
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port,
                                                       family=family, backlog=256)
            except OSError:
                front.close()
                if self.requested_port:
                    raise
                continue
            self._front, self.port = front, port
            loop.add_reader(front.fileno(), self._queries)
            return self
        raise OSError("no free port for both UDP and TCP on loopback")

    async def close(self) -> None:
        if self._front is not None:
            with contextlib.suppress(Exception):
                assert self._loop is not None
                self._loop.remove_reader(self._front.fileno())
            self._front.close()
            self._front = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            await asyncio.gather(*self._tcp_tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None
        for sock in self._upstream.values():
            self._forget_socket(sock)
        self._upstream.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- UDP ---------------------------------------------------------------------

    def _queries(self) -> None:
        """Every datagram queued on the front socket, each held `delay_s` on its own."""
        front, loop = self._front, self._loop
        assert front is not None and loop is not None
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, addr = front.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.udp_queries += 1
            if self.first_query_at is None:
                self.first_query_at = time.monotonic()
            loop.call_later(self.delay_s, self._forward, data, addr)

    def _socket_for(self, addr: Any) -> socket.socket:
        sock = self._upstream.get(addr)
        if sock is not None:
            self._upstream.move_to_end(addr)
            return sock
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _big_buffers(sock)
        sock.bind((self.upstream[0], 0))
        sock.connect(self.upstream)
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._answers, sock, addr)
        self._upstream[addr] = sock
        while len(self._upstream) > _MAX_UPSTREAM_SOCKETS:
            _, old = self._upstream.popitem(last=False)
            self._forget_socket(old)
        return sock

    def _forget_socket(self, sock: socket.socket) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        sock.close()

    def _forward(self, data: bytes, addr: Any) -> None:
        if self._front is None:
            return
        try:
            self._socket_for(addr).send(data)
        except OSError:  # UDP: a full buffer or a refused port loses the datagram
            self.udp_dropped += 1

    def _answers(self, sock: socket.socket, addr: Any) -> None:
        assert self._loop is not None
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from upstream
                self.udp_dropped += 1
                return
            self._loop.call_later(self.delay_s, self._answer, data, addr)

    def _answer(self, data: bytes, addr: Any) -> None:
        if self._front is None:
            return
        try:
            self._front.sendto(data, addr)
        except OSError:
            self.udp_dropped += 1
            return
        self.udp_answers += 1
        self.last_answer_at = time.monotonic()

    # -- TCP ---------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        self.tcp_connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tcp_tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy source to sink, each chunk written `delay_s` after it was read (order kept)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

        async def sender() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if chunk is None:
                    with contextlib.suppress(OSError):
                        if sink.can_write_eof():
                            sink.write_eof()
                    return
                sink.write(chunk)
                await sink.drain()

        sending = asyncio.create_task(sender())
        try:
            while True:
                try:
                    chunk = await source.read(65536)
                except (ConnectionError, OSError):
                    chunk = b""
                queue.put_nowait((loop.time() + self.delay_s, chunk or None))
                if not chunk:
                    break
            await sending
        except (ConnectionError, OSError):
            pass
        finally:
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)

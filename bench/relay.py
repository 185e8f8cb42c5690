"""A DNS relay on loopback that adds latency, for benchmarks ONLY.

The kernel here has no netem, so a 30 ms round trip to a DNS server is made
by this relay: it listens on 127.0.0.1 (UDP and TCP on the same port) and
forwards to an upstream server (nsd), holding every UDP datagram and every
TCP segment ``delay_s`` in each direction. Each datagram is delayed on its
own (``loop.call_later``), so 256 queries in flight stay 256 in flight; TCP
chunks keep their order through a per-direction queue of due times, never a
sleep per chunk that would add up.

It only ever binds and connects to loopback addresses (127.0.0.0/8, ::1).

Counters (:meth:`Relay.stats`): queries and answers relayed over UDP, TCP
connections, and the monotonic times of the first query and the last answer
since the last :meth:`Relay.reset` (``time.monotonic`` is system-wide, so a
benchmark runner in another process can compare them with its own clock).

In-process::

    relay = await Relay(("127.0.0.1", nsd_port), delay_s=0.015).start()
    ...  # point the resolver at f"127.0.0.1:{relay.port}"
    await relay.close()

In its own process (what the benchmark does, so the relay's CPU is not the
runner's): ``python -m bench.relay --upstream 127.0.0.1:PORT --delay-ms 15``
prints ``READY <port> <control_port>``; the control port answers one line
commands (``stats``, ``reset``, ``delay <ms>``) with one JSON line.
:class:`RelayProcess` starts and drives it. :func:`measure_rtt` checks the
round trip with a bare DNS query (dnslib, blocking socket).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import signal
import socket
import statistics
import sys
import time
from typing import Any, Self

from bench.child import ReadyChild

__all__ = ["Relay", "RelayProcess", "measure_rtt", "main"]

_MAX_UPSTREAM_SOCKETS = 1024


def _check_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the relay only uses loopback addresses, not {host!r}")
    return host


def parse_address(text: str) -> tuple[str, int]:
    """``ip:port`` or ``[v6]:port`` -> (ip, port), loopback only."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return _check_loopback(host), int(port)


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
        self.upstream = (_check_loopback(upstream[0]), int(upstream[1]))
        self.delay_s = float(delay_s)
        self.host = _check_loopback(host)
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


# -- a bare RTT check -------------------------------------------------------------


def measure_rtt(address: tuple[str, int], name: str, *, count: int = 20, timeout_s: float = 2.0,
                qtype: str = "TXT") -> dict[str, float]:
    """Round trips of `count` bare UDP DNS queries to `address`, one at a time (dnslib).

    Returns ``{"median_ms", "min_ms", "max_ms", "answered"}``.
    """
    from dnslib import DNSRecord

    _check_loopback(address[0])
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    times: list[float] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        for i in range(count):
            question = DNSRecord.question(name, qtype)
            began = time.perf_counter()
            sock.sendto(question.pack(), address)
            try:
                while True:
                    data, _ = sock.recvfrom(65535)
                    if DNSRecord.parse(data).header.id == question.header.id:
                        break
            except (socket.timeout, TimeoutError):
                continue
            times.append(time.perf_counter() - began)
    if not times:
        return {"median_ms": float("nan"), "min_ms": float("nan"), "max_ms": float("nan"),
                "answered": 0}
    return {
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
        "max_ms": max(times) * 1000,
        "answered": len(times),
    }


# -- its own process ------------------------------------------------------------------


async def _control(relay: Relay, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            words = line.decode().split()
            if not words:
                continue
            if words[0] == "stats":
                answer = relay.stats()
            elif words[0] == "reset":
                answer = relay.reset()
            elif words[0] == "delay" and len(words) == 2:
                relay.delay_s = float(words[1]) / 1000
                answer = relay.stats()
            else:
                answer = {"error": f"unknown command {line.decode().strip()!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def _run(args: argparse.Namespace) -> None:
    relay = await Relay(parse_address(args.upstream), delay_s=args.delay_ms / 1000,
                        host=args.host, port=args.port).start()
    control = await asyncio.start_server(lambda r, w: _control(relay, r, w), args.host, 0)
    control_port = control.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {relay.port} {control_port}", flush=True)
    try:
        await stop.wait()
    finally:
        control.close()
        await relay.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="ip:port of the DNS server (loopback)")
    parser.add_argument("--delay-ms", type=float, default=15.0, help="added each way (default 15)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


class RelayProcess(ReadyChild):
    """``python -m bench.relay`` in a child process, and a client for its control port."""

    module = "bench.relay"
    what = "the relay"

    def __init__(self, upstream: tuple[str, int], *, delay_ms: float = 15.0, host: str = "127.0.0.1"):
        super().__init__(["--upstream", f"{upstream[0]}:{upstream[1]}", "--delay-ms", str(delay_ms),
                          "--host", host])
        self.host = host
        self.port: int | None = None
        self.control_port: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return self.host, self.port

    def start(self, timeout_s: float = 30) -> Self:
        port, control = self.spawn(timeout_s)
        self.port, self.control_port = int(port), int(control)
        return self

    def command(self, text: str) -> dict[str, Any]:
        assert self.control_port is not None
        with socket.create_connection((self.host, self.control_port), timeout=10) as sock:
            sock.sendall(text.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def reset(self) -> dict[str, Any]:
        return self.command("reset")

    def set_delay_ms(self, delay_ms: float) -> dict[str, Any]:
        return self.command(f"delay {delay_ms}")


if __name__ == "__main__":
    sys.exit(main())

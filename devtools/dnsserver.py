"""A DNS server on one loopback port, UDP and TCP, for the tests and the demo.

:class:`LoopbackServer` serves whatever its ``answer(request, protocol)``
function returns (a dnslib ``DNSRecord``; raise :class:`Drop` to stay
silent). Built on dnslib's server framework: one thread serves UDP
(answering never blocks, so datagrams are answered in turn, several thousand
a second), another accepts TCP and gives each connection a thread; the
handler serves several queries per TCP connection, as c-ares sends them.
What to answer is :mod:`devtools.devdns`'s business.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import socketserver
import struct
import threading
from collections.abc import Callable

from dnslib import DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

__all__ = ["Drop", "LoopbackServer"]

_log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 50

Answer = Callable[[DNSRecord, str], DNSRecord]


class Drop(Exception):
    """Raised by an answer function to leave a query unanswered."""


class _Resolver(BaseResolver):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        return self.answer(request, getattr(handler, "protocol", "udp"))


class _Handler(DNSHandler):
    """dnslib's handler, plus: no answer when asked, and many queries per TCP connection."""

    def handle(self) -> None:
        if self.server.socket_type == socket.SOCK_STREAM:
            self.protocol = "tcp"
            self.server.loopback._track(self.request, True)
            try:
                self._handle_tcp()
            finally:
                self.server.loopback._track(self.request, False)
        else:
            self.protocol = "udp"
            data, sock = self.request
            reply = self._reply(data)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, self.client_address)

    def _handle_tcp(self) -> None:
        conn: socket.socket = self.request
        while True:
            head = self._recv_exact(conn, 2)
            if head is None:
                return
            (length,) = struct.unpack("!H", head)
            data = self._recv_exact(conn, length)
            if data is None:
                return
            reply = self._reply(data)
            if reply is not None:
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    @staticmethod
    def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = conn.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def _reply(self, data: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except DNSError as error:
            _log.debug("dnsserver: unparsable query from %s: %s", self.client_address, error)
            return None
        try:
            reply = self.server.resolver.resolve(request, self)
        except Drop:
            return None
        return reply.pack()


class _Logger:
    """dnslib's logger interface, silent (debug logging only)."""

    def log_recv(self, handler, data): pass
    def log_send(self, handler, data): pass
    def log_request(self, handler, request): pass
    def log_reply(self, handler, reply): pass
    def log_truncated(self, handler, reply): pass
    def log_data(self, dnsobj): pass

    def log_error(self, handler, error):
        _log.debug("dnsserver: %s", error)


class _ServerMixin:
    daemon_threads = True
    block_on_close = False

    def __init__(self, server_address, handler) -> None:
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(server_address, handler)  # type: ignore[call-arg]


class _UDPServer(_ServerMixin, socketserver.UDPServer):
    # Datagrams are answered in the serving thread: answering never blocks,
    # and a thread per datagram would cap the rate at a few thousand a second.
    # No SO_REUSEADDR on UDP: on Linux it would let two servers share a port.
    allow_reuse_address = False
    max_packet_size = 65535

    def server_bind(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        super().server_bind()


class _TCPServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 128


class LoopbackServer:
    """UDP and TCP on one port of `host`, answering with `answer(request, "udp" | "tcp")`."""

    def __init__(self, answer: Answer, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.answer = answer
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._servers: list[DNSServer] = []

    def start(self) -> int:
        """Serve in background threads; the port (picked when none was given)."""
        if self._servers:
            raise RuntimeError("the DNS server is already started")
        udp, tcp = self._bind()
        for server in (udp, tcp):
            server.server.loopback = self
            server.thread = threading.Thread(
                target=server.server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"devdns-{self.port}", daemon=True)
            server.thread.start()
        self._servers = [udp, tcp]
        return self.port

    def _bind(self) -> tuple[DNSServer, DNSServer]:
        """A UDP and a TCP server on the same port, both bound (no race)."""
        resolver, logger = _Resolver(self.answer), _Logger()
        attempts = 1 if self.port else _PORT_ATTEMPTS
        for _ in range(attempts):
            udp = DNSServer(resolver, address=self.host, port=self.port or 0,
                            logger=logger, handler=_Handler, server=_UDPServer)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address=self.host, port=port, tcp=True,
                                logger=logger, handler=_Handler, server=_TCPServer)
            except OSError as error:
                udp.server.server_close()
                if error.errno != errno.EADDRINUSE or self.port:
                    raise
                continue
            self.port = port
            return udp, tcp
        raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {self.host}")

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.server.shutdown()
            server.server.server_close()
            server.thread.join(5)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

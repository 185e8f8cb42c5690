"""Count DNS datagrams on the loopback interface, for benchmarks ONLY.

nsd keeps no query counter the benchmark can read cheaply, and asking the
daemon during a tick would cost it CPU. So the runner watches ``lo`` with an
AF_PACKET socket (root), filtered in the kernel (classic BPF) to IPv4 UDP
datagrams from or to one port, and reads the kernel's receive timestamps:
it counts the queries and the answers and knows when the first query left
and the last answer arrived. The daemon is not touched at all.

Only incoming copies are read (``PACKET_IGNORE_OUTGOING``): on ``lo`` every
datagram is seen once leaving and once arriving. TCP is not counted (the
benchmark's answers are far below the UDP size limit).

:class:`Sniffer` is a background thread; :meth:`Sniffer.window` returns the
counts since the last :meth:`Sniffer.reset`. Use :func:`available` first: it
is False without CAP_NET_RAW.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from typing import Any

__all__ = ["Sniffer", "available", "udp_port_filter"]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RCVBUFFORCE = 33


def udp_port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: IPv4, UDP, not a fragment, source or destination port == `port`
    (Ethernet framing, as on lo). Instructions are (code, jt, jf, k)."""
    return [
        (0x28, 0, 0, 12),           # 0  ldh [12]          ethertype
        (0x15, 0, 10, 0x0800),      # 1  jeq IPv4 ? 2 : 12
        (0x30, 0, 0, 23),           # 2  ldb [23]          protocol
        (0x15, 0, 8, 17),           # 3  jeq UDP ? 4 : 12
        (0x28, 0, 0, 20),           # 4  ldh [20]          fragment offset
        (0x45, 6, 0, 0x1FFF),       # 5  jset ? 12 : 6
        (0xB1, 0, 0, 14),           # 6  ldxb 4*([14]&0xf) IP header length
        (0x48, 0, 0, 14),           # 7  ldh [x+14]        source port
        (0x15, 2, 0, port),         # 8  jeq ? 11 : 9
        (0x48, 0, 0, 16),           # 9  ldh [x+16]        destination port
        (0x15, 0, 1, port),         # 10 jeq ? 11 : 12
        (0x06, 0, 0, 0x40000),      # 11 ret accept
        (0x06, 0, 0, 0),            # 12 ret drop
    ]


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> ctypes.Array:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buffer  # keep alive while attached (the kernel copies it, but be safe)


def available() -> bool:
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)):
            return True
    except (OSError, AttributeError):
        return False


class Sniffer:
    """Queries to and answers from UDP `port` on lo, in a background thread."""

    def __init__(self, port: int, interface: str = "lo"):
        self.port = port
        self.interface = interface
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._filter: Any = None
        self._reset_locked()

    def _reset_locked(self) -> None:
        self.queries = 0
        self.answers = 0
        self.first_query_at: float | None = None
        self.last_answer_at: float | None = None
        self.last_query_at: float | None = None

    def start(self) -> "Sniffer":
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._filter = _attach(sock, udp_port_filter(self.port))
        sock.bind((self.interface, 0))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._skip_outgoing = False
        except OSError:  # kernel < 4.20: drop them by packet type instead
            self._skip_outgoing = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.settimeout(0.2)
        self._drain(sock)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name=f"sniff-{self.port}", daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Packets queued before the filter was attached may not match it."""
        sock.setblocking(False)
        try:
            while True:
                sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            pass
        sock.setblocking(True)
        sock.settimeout(0.2)

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        port = self.port
        ancillary = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            try:
                data, ancdata, _, address = sock.recvmsg(2048, ancillary)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            if self._skip_outgoing and address[2] == socket.PACKET_OUTGOING:
                continue
            at = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    at = seconds + nanoseconds / 1e9
            if len(data) < 14 + 20 + 4:
                continue
            ihl = (data[14] & 0x0F) * 4
            source, destination = struct.unpack_from("!HH", data, 14 + ihl)
            with self._lock:
                if destination == port:
                    self.queries += 1
                    if self.first_query_at is None:
                        self.first_query_at = at
                    self.last_query_at = at
                elif source == port:
                    self.answers += 1
                    self.last_answer_at = at

    def drops(self) -> int:
        """Datagrams the kernel dropped because the thread fell behind (since start)."""
        if self._sock is None:
            return 0
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        _, drops = struct.unpack("II", raw)
        self._drops = getattr(self, "_drops", 0) + drops  # the kernel resets on read
        return self._drops

    def settle(self, quiet_s: float = 0.05, timeout_s: float = 2.0) -> None:
        """Wait until nothing new was read for `quiet_s` (the thread caught up)."""
        deadline = time.monotonic() + timeout_s
        last = (-1, -1)
        while time.monotonic() < deadline:
            with self._lock:
                now = (self.queries, self.answers)
            if now == last:
                return
            last = now
            time.sleep(quiet_s)

    def window(self) -> dict[str, Any]:
        """Counts since the last reset; `seconds` from the first query to the last answer."""
        self.settle()
        with self._lock:
            seconds = None
            if self.first_query_at is not None and self.last_answer_at is not None:
                seconds = max(0.0, self.last_answer_at - self.first_query_at)
            return {
                "queries": self.queries,
                "answers": self.answers,
                "seconds": seconds,
                "first_query_at": self.first_query_at,
                "last_answer_at": self.last_answer_at,
                "dropped": self.drops(),
            }

    def reset(self) -> None:
        self.settle()
        with self._lock:
            self._reset_locked()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""A small authoritative DNS server on loopback, for the tests and the demo.

:class:`DevDns` answers UDP and TCP on one port of 127.0.0.1 (or ``::1``)
from records held in memory, which the caller may change while it runs::

    with DevDns() as dns:
        dns.set_txt("_cdnreq.example.com", "cdnreq-abc")
        dns.set_cname("www.example.com", "example.com.cdn.test")
        dns.behave("slow.example.com", "timeout")
        ...  # point cdnreq.dns.Resolver at dns.address

What it answers, for a question (name, type):

* names are matched case-insensitively, a trailing dot optional;
* TXT, A, AAAA and CNAME records of the name. If the name is an alias, the
  CNAME record and, when the target is known here, the target's records of
  the asked type (following chains up to 8 hops; a loop just ends the chain).
  A target not known here ends the chain too, with NOERROR: the client must
  follow it. ``follow_cnames = False`` never adds target records, for
  clients that must follow chains themselves;
* unknown names: NXDOMAIN; a known name without records of the type: NOERROR
  and no answer (NODATA);
* TXT values longer than 255 bytes are split into several character-strings
  of one record; a name may have several TXT records;
* every record has TTL :attr:`DevDns.ttl` (0 by default, so that no client
  cache hides a change).

Scripted behaviour, per exact name (:meth:`DevDns.behave`): ``"timeout"``
(never answer), ``"servfail"``, ``"refused"``, ``"truncate"`` (over UDP an
empty answer with TC=1, over TCP the normal answer) or ``"normal"``.
:attr:`DevDns.default_behaviour` applies to names that have neither records
nor a behaviour of their own ("normal": NXDOMAIN).

Served by :class:`devtools.dnsserver.LoopbackServer` (dnslib, a thread for
UDP, a thread per TCP connection). Synchronous and thread-safe.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSRecord

from devtools.dnsserver import Drop, LoopbackServer

__all__ = ["BEHAVIOURS", "DevDns"]

BEHAVIOURS = frozenset({"timeout", "servfail", "refused", "truncate", "normal"})
MAX_CNAME_HOPS = 8
_TXT_CHUNK = 255


def _key(name: str) -> str:
    """The lookup key of a name: lower case, no trailing dot."""
    if not isinstance(name, str):
        raise TypeError(f"a DNS name must be a str, not {type(name).__name__}")
    key = name.strip().rstrip(".").lower()
    if not key:
        raise ValueError(f"empty DNS name: {name!r}")
    return key


def _txt_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _txt_chunks(value: bytes) -> list[bytes]:
    """One TXT record's character-strings: at most 255 bytes each."""
    if not value:
        return [b""]
    return [value[i:i + _TXT_CHUNK] for i in range(0, len(value), _TXT_CHUNK)]


@dataclass
class _Node:
    txt: list[bytes] = field(default_factory=list)
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    cname: str | None = None


class DevDns:
    """An authoritative DNS server on loopback; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"DevDns only listens on loopback, not {host!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        self.host = host
        self.port: int | None = port
        self._default_behaviour = "normal"
        self.follow_cnames = True
        self.ttl = 0
        self._lock = threading.Lock()
        self._records: dict[str, _Node] = {}
        self._behaviours: dict[str, str] = {}
        self._queries = 0
        self._tcp_queries = 0
        self._by_name: Counter[str] = Counter()
        self._server: LoopbackServer | None = None

    @property
    def default_behaviour(self) -> str:
        """The behaviour of names that have neither records nor a behaviour of their own."""
        return self._default_behaviour

    @default_behaviour.setter
    def default_behaviour(self, kind: str) -> None:
        if kind not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {kind!r}; one of {sorted(BEHAVIOURS)}")
        self._default_behaviour = kind

    # -- life cycle ---------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6), as cdnreq's resolver takes it."""
        if self.port is None:
            raise RuntimeError("DevDns is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> DevDns:
        if self._server is not None:
            raise RuntimeError("DevDns is already started")
        server = LoopbackServer(self._answer, self.host, self.port)
        self.port = server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> DevDns:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- records ------------------------------------------------------------

    def _node(self, name: str) -> _Node:
        return self._records.setdefault(_key(name), _Node())

    def set_txt(self, name: str, *values: str | bytes) -> None:
        """Replace the TXT records of name (one record per value); a CNAME is dropped."""
        data = [_txt_bytes(v) for v in values]
        with self._lock:
            node = self._node(name)
            node.txt, node.cname = data, None

    def add_txt(self, name: str, value: str | bytes) -> None:
        data = _txt_bytes(value)
        with self._lock:
            node = self._node(name)
            node.txt.append(data)
            node.cname = None

    def set_a(self, name: str, *ips: str) -> None:
        addresses = [str(ipaddress.IPv4Address(ip)) for ip in ips]
        with self._lock:
            node = self._node(name)
            node.a, node.cname = addresses, None

    def set_aaaa(self, name: str, *ips: str) -> None:
        addresses = [str(ipaddress.IPv6Address(ip)) for ip in ips]
        with self._lock:
            node = self._node(name)
            node.aaaa, node.cname = addresses, None

    def set_cname(self, name: str, target: str) -> None:
        """Make name an alias of target; its other records are dropped (as DNS requires)."""
        target_key = _key(target)
        with self._lock:
            self._records[_key(name)] = _Node(cname=target_key)

    def remove(self, name: str) -> None:
        """Forget every record of name (its behaviour stays)."""
        with self._lock:
            self._records.pop(_key(name), None)

    def behave(self, name: str, kind: str) -> None:
        if kind not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {kind!r}; one of {sorted(BEHAVIOURS)}")
        with self._lock:
            self._behaviours[_key(name)] = kind

    # -- counters -----------------------------------------------------------

    @property
    def queries(self) -> int:
        """Queries received (UDP and TCP, answered or not) since start or reset_counts()."""
        with self._lock:
            return self._queries

    @property
    def tcp_queries(self) -> int:
        with self._lock:
            return self._tcp_queries

    def queries_for(self, name: str) -> int:
        """Queries received for name (any type)."""
        with self._lock:
            return self._by_name[_key(name)]

    def queried_names(self) -> set[str]:
        """The names asked about (lower case, no trailing dot)."""
        with self._lock:
            return {name for name, count in self._by_name.items() if count}

    def reset_counts(self) -> None:
        with self._lock:
            self._queries = self._tcp_queries = 0
            self._by_name.clear()

    # -- answering ----------------------------------------------------------

    def _answer(self, request: DNSRecord, protocol: str) -> DNSRecord:
        qname = str(request.q.qname)
        qtype = request.q.qtype
        try:
            key = _key(qname)
        except ValueError:
            key = "."
        reply = request.reply()
        with self._lock:
            self._queries += 1
            self._tcp_queries += protocol == "tcp"
            self._by_name[key] += 1
            behaviour = self._behaviours.get(key)
            if behaviour is None:
                behaviour = "normal" if key in self._records else self._default_behaviour
            if behaviour == "timeout":
                raise Drop
            if behaviour == "servfail":
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if behaviour == "refused":
                reply.header.rcode = RCODE.REFUSED
                return reply
            if behaviour == "truncate" and protocol == "udp":
                reply.header.tc = 1
                return reply
            self._fill(reply, qname, key, qtype)
        return reply

    def _fill(self, reply: DNSRecord, qname: str, key: str, qtype: int) -> None:
        """Answer records for (key, qtype), following CNAMEs; called with the lock held."""
        node = self._records.get(key)
        if node is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return
        owner, seen = qname, {key}
        for _ in range(MAX_CNAME_HOPS + 1):
            if node.cname is not None and qtype != QTYPE.CNAME:
                reply.add_answer(RR(owner, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(node.cname + ".")))
                target = node.cname
                node = self._records.get(target)
                if not self.follow_cnames or node is None or target in seen:
                    return
                seen.add(target)
                owner = target + "."
                continue
            for rdata in self._rdata(node, qtype):
                reply.add_answer(RR(owner, qtype, ttl=self.ttl, rdata=rdata))
            return

    @staticmethod
    def _rdata(node: _Node, qtype: int) -> list:
        if qtype == QTYPE.TXT:
            return [TXT(_txt_chunks(v)) for v in node.txt]
        if qtype == QTYPE.A:
            return [A(ip) for ip in node.a]
        if qtype == QTYPE.AAAA:
            return [AAAA(ip) for ip in node.aaaa]
        if qtype == QTYPE.CNAME and node.cname is not None:
            return [CNAME(node.cname + ".")]
        return []

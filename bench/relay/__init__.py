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
:class:`RelayProcess` starts and drives it. ``bench.baselines.measure_rtt``
checks the round trip with a bare DNS query (dnslib, blocking socket).
"""

from bench.relay.process import RelayProcess
from bench.relay.server import Relay, check_loopback, parse_address

__all__ = ["Relay", "RelayProcess", "check_loopback", "parse_address"]

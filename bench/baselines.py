"""Baselines: what a bare client gets from the same servers, to compare each tick with.

The benchmark measures cdnreq against the best any client could do on this
machine: the master double's request and publication rates
(:func:`ceiling`, :func:`publish_ceiling`, with cdnreq's HTTP settings), a
bare aiodns loop against nsd (:func:`dns_ceiling`, in a child process like
the daemon), and one call at a time against slapproxy
(:func:`bare_slapproxy_client`), and a bare DNS query's round trip
(:func:`measure_rtt`). :func:`same_work` turns the rates into the
seconds a bare client needs for a tick's calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import time
from collections.abc import Awaitable
from typing import Any, Callable

import aiohttp

from bench import child
from bench.daemonproc import DNS_IN_FLIGHT, SR
from bench.double.wire import PUBLISH, REQUEST
from bench.relay.server import check_loopback

__all__ = ["bare_slapproxy_client", "best_of", "ceiling", "dns_ceiling", "dns_ceiling_child",
           "measure_rtt", "publish_ceiling", "same_work"]


def _session(url: str, *, limit: int, timeout_s: float, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """An aiohttp session as cdnreq's MasterClient makes it: compact JSON, JSON accepted."""
    return aiohttp.ClientSession(
        base_url=url.rstrip("/") + "/",
        headers={"Accept": "application/json", **(headers or {})},
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        json_serialize=lambda v: json.dumps(v, separators=(",", ":")),
    )


def _technical_request(title: str, i: int, software_release_uri: str = SR) -> dict[str, Any]:
    """The body of a shared-instance request, as cdnreq sends it for customer `i`."""
    return {
        "title": title,
        "software_release_uri": software_release_uri,
        "software_type": "default",
        "shared": True,
        "state": "started",
        "sla_parameters": {},
        "parameters": {"url": f"https://backend-{i}.example"},
    }


def _publication(guid: str) -> dict[str, Any]:
    return {"instance_guid": guid, "connection_parameter_dict": {
        "message": "The CDN has accepted this entry and is deploying it..."}}


async def _timed(workers: int, worker: Callable[[], Awaitable[None]]) -> float:
    """Seconds for `workers` copies of `worker` to drain their shared queue."""
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - began


async def ceiling(url: str, n: int, concurrency: int, *, prefix: str | None = None,
                  software_release_uri: str = SR) -> dict:
    """Send `n` shared-instance requests (new titles) at `concurrency` in flight.

    The bodies, headers and JSON handling are cdnreq's (MasterClient): compact
    JSON, the answer read as text and parsed. Any non-200 answer raises.
    Returns ``{"requests": n, "seconds": s, "rate": n / s}``.
    """
    if n <= 0 or concurrency <= 0:
        raise ValueError("n and concurrency must be positive")
    prefix = prefix if prefix is not None else f"ceiling-{os.getpid()}-{time.monotonic_ns()}-"
    next_one = iter(range(n))
    failures: list[str] = []

    async with _session(url, limit=concurrency, timeout_s=30) as session:

        async def worker() -> None:
            for i in next_one:
                body = _technical_request(f"{prefix}{i}", i, software_release_uri)
                async with session.post(REQUEST, json=body) as response:
                    text = await response.text()
                    if response.status != 200:
                        failures.append(f"HTTP {response.status}: {text[:200]}")
                        return
                json.loads(text)

        seconds = await _timed(min(concurrency, n), worker)
    if failures:
        raise RuntimeError(f"the double refused a ceiling request: {failures[0]}")
    return {"requests": n, "seconds": seconds, "rate": n / seconds}


async def publish_ceiling(url: str, guids: list[str], concurrency: int) -> dict[str, Any]:
    """Like :func:`ceiling`, for publications: one to each customer in `guids`."""
    pending = iter(guids)
    async with _session(url, limit=concurrency, timeout_s=30) as session:

        async def worker() -> None:
            for guid in pending:
                async with session.post(PUBLISH, json=_publication(guid)) as response:
                    text = await response.text()
                    if response.status != 200:
                        raise RuntimeError(f"the double answered {response.status}: {text[:200]}")
                json.loads(text)

        seconds = await _timed(min(concurrency, len(guids)), worker)
    return {"publishes": len(guids), "seconds": seconds, "rate": len(guids) / seconds}


async def dns_ceiling(nameserver: str, names: list[str], in_flight: int = DNS_IN_FLIGHT) -> dict[str, Any]:
    """A bare aiodns loop: `in_flight` TXT queries at a time over `names`."""
    import aiodns
    from aiodns.error import DNSError

    resolver = aiodns.DNSResolver(nameservers=[nameserver], timeout=2.0, tries=2)
    outcomes = {"found": 0, "absent": 0, "unknown": 0}
    absent_codes = {4, 1}  # ARES_ENOTFOUND, ARES_ENODATA
    pending = iter(names)

    async def worker() -> None:
        for name in pending:
            try:
                await resolver.query_dns(name, "TXT")
                outcomes["found"] += 1
            except DNSError as error:
                code = error.args[0] if error.args else None
                outcomes["absent" if code in absent_codes else "unknown"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(in_flight, len(names)))))
    seconds = time.perf_counter() - began
    await resolver.close()
    return {"queries": len(names), "seconds": seconds, "rate": len(names) / seconds,
            "in_flight": in_flight, **outcomes}


def dns_ceiling_child(nameserver: str, customers: int) -> dict[str, Any]:
    """:func:`dns_ceiling` in a child process, over both proof names of customers 0..customers-1."""
    code = (
        "import asyncio, json, sys\n"
        "from bench.baselines import dns_ceiling\n"
        "from bench.nsd import challenge_name, parent_challenge_name\n"
        f"names = [m for i in range({int(customers)}) for m in (challenge_name(i), parent_challenge_name(i))]\n"
        f"print(json.dumps(asyncio.run(dns_ceiling({nameserver!r}, names))))\n"
    )
    done = child.run_python(code, timeout_s=600)
    if done.returncode != 0:
        raise RuntimeError(f"the DNS ceiling failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(count: int, measure_once: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A ceiling is the best of a few runs (the machine is shared with nothing else, but noisy)."""
    runs = [measure_once() for _ in range(count)]
    best = dict(max(runs, key=lambda r: r["rate"]))
    best["runs"] = [round(r["rate"], 1) for r in runs]
    return best


def same_work(calls: dict[str, int], request_rate: float, publish_rate: float | None) -> float | None:
    """Seconds a bare client needs for the tick's requests and publications at its own rates."""
    if not publish_rate:
        return None
    return calls.get("request", 0) / request_rate + calls.get("publish", 0) / publish_rate


async def bare_slapproxy_client(url: str, computer_id: str, partition: str, count: int,
                                publish_to: list[str]) -> dict[str, Any]:
    """One call at a time, with aiohttp as cdnreq: `count` technical requests, then one
    publication to each customer in `publish_to`, both as the requester partition."""
    partition_header = f"X-SlapPartition computer_id={computer_id}, computer_partition_id={partition}"
    async with _session(url, limit=1, timeout_s=60, headers={"Authorization": partition_header}) as session:

        async def call(name: str, body: dict[str, Any]) -> None:
            async with session.post(name, json=body) as response:
                text = await response.text()
                if response.status != 200:
                    raise RuntimeError(f"slapproxy answered {response.status} to {name}: {text[:200]}")
                json.loads(text)

        began = time.perf_counter()
        for i in range(count):
            await call(REQUEST, _technical_request(f"bare-{i}", i))
        requests_s = time.perf_counter() - began
        began = time.perf_counter()
        for guid in publish_to:
            await call(PUBLISH, _publication(guid))
        publish_s = time.perf_counter() - began
    return {
        "requests": count, "requests_seconds": requests_s, "request_rate": count / requests_s,
        "publishes": len(publish_to), "publish_seconds": publish_s,
        "publish_rate": len(publish_to) / publish_s if publish_to else None,
        "both_rate": count / (requests_s + publish_s) if publish_to else None,
    }


def measure_rtt(address: tuple[str, int], name: str, *, count: int = 20, timeout_s: float = 2.0,
                qtype: str = "TXT") -> dict[str, float]:
    """Round trips of `count` bare UDP DNS queries to `address`, one at a time (dnslib).

    Returns ``{"median_ms", "min_ms", "max_ms", "answered"}``.
    """
    from dnslib import DNSRecord

    check_loopback(address[0])
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

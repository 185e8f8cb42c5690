"""The HTTP endpoint against a hostile network (issue 10, property 20).

Served for real on loopback by `cdnreq.endpoint.serve`; the clients are raw
sockets that send nothing, send half a head, hold keep-alive connections,
or come by the thousand. Waiting is always a read with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import resource
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from cdnreq.config import TcpListen
from cdnreq.endpoint import ConnectionLimits, make_app, serve
from cdnreq.httpguard import AcceptErrorLog, ConnectionGuard
import test_service
from test_http import FakeEndpoint
from test_service import spawn  # noqa: F401  (a fixture)

ATTACKERS = 1100
DEADLINE_S = 20.0  # generous: a slow CI must never make these fail


def fds_for(count: int) -> None:
    """Raise this process's soft descriptor limit for `count` sockets, or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 256
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) is below the {need} descriptors this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@contextlib.asynccontextmanager
async def served(limits: ConnectionLimits) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    runner = await serve(make_app(FakeEndpoint()), TcpListen("127.0.0.1", 0), limits)
    try:
        port = runner.addresses[0][1]
        guard = runner.server
        assert isinstance(guard, ConnectionGuard)
        yield port, guard
    finally:
        await runner.cleanup()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/healthz") -> int:
    """One keep-alive GET on an open connection; its status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    assert length is not None, head
    await asyncio.wait_for(reader.readexactly(int(length[1])), DEADLINE_S)
    return int(head.split()[1])


async def closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection having sent nothing."""
    try:
        data = await asyncio.wait_for(reader.read(), DEADLINE_S)
    except (ConnectionResetError, BrokenPipeError):
        return True
    assert data == b"", data
    return True


async def probe(port: int) -> int:
    """GET /healthz on a new connection."""
    reader, writer = await connect(port)
    try:
        return await get(reader, writer)
    finally:
        writer.close()


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


async def test_a_silent_connection_is_cut_after_the_header_timeout() -> None:
    async with served(ConnectionLimits(header_timeout_s=0.3, idle_timeout_s=60)) as (port, guard):
        reader, writer = await connect(port)
        assert await closed_without_answer(reader)
        assert guard.timed_out == 1 and not guard.open
        writer.close()
        assert await probe(port) == 200


async def test_a_head_left_unfinished_is_cut() -> None:
    async with served(ConnectionLimits(header_timeout_s=0.3, idle_timeout_s=60)) as (port, guard):
        reader, writer = await connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")  # and never the rest
        assert await closed_without_answer(reader)
        assert guard.timed_out == 1
        writer.close()


async def test_a_later_head_left_unfinished_is_cut() -> None:
    async with served(ConnectionLimits(header_timeout_s=0.3, idle_timeout_s=60)) as (port, guard):
        reader, writer = await connect(port)
        assert await get(reader, writer) == 200
        assert await get(reader, writer) == 200  # keep-alive works
        writer.write(b"GET /healthz HTT")
        assert await closed_without_answer(reader)
        assert guard.timed_out == 1
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with served(ConnectionLimits(header_timeout_s=60, idle_timeout_s=0.3)) as (port, guard):
        reader, writer = await connect(port)
        assert await get(reader, writer) == 200
        assert await closed_without_answer(reader)
        assert guard.timed_out == 0  # the idle timeout, not the head's
        writer.close()


async def test_1100_silent_connections_leave_healthz_reachable_at_once() -> None:
    fds_for(2 * ATTACKERS)
    # A head timeout far away: only the cap's eviction can let the probe in.
    limits = ConnectionLimits(header_timeout_s=3600, idle_timeout_s=3600, max_connections=256)
    async with served(limits) as (port, guard):
        writers = []
        try:
            for start in range(0, ATTACKERS, 100):
                opened = await asyncio.gather(*(connect(port) for _ in range(min(100, ATTACKERS - start))))
                writers += [w for _, w in opened]
            assert await probe(port) == 200
            assert await probe(port) == 200
            assert len(guard.open) <= limits.max_connections
            assert guard.evicted >= ATTACKERS - limits.max_connections
            assert guard.timed_out == 0
        finally:
            close_all(writers)


async def test_when_every_connection_has_sent_a_request_the_least_recently_active_makes_room() -> None:
    """Connections that each sent one request and then idle (renewed every
    idle timeout) would otherwise keep a probe out for good: an answered
    keep-alive connection is idle, and a server may close an idle one."""
    async with served(ConnectionLimits(header_timeout_s=60, idle_timeout_s=60, max_connections=2)) as (port, guard):
        first, second = await connect(port), await connect(port)
        assert await get(*first) == 200 and await get(*second) == 200
        assert await get(*first) == 200  # `second` is now the least recently active
        assert await probe(port) == 200
        assert await closed_without_answer(second[0])
        assert guard.refused == 0 and guard.evicted == 1
        assert await get(*first) == 200  # untouched
        close_all([first[1], second[1]])


class BigEndpoint(FakeEndpoint):
    def metrics(self) -> tuple[bytes, str]:
        return b"# filler\n" * 20_000, "text/plain; version=0.0.4"  # 180 KB: a real fleet's metrics


async def test_a_client_that_pipelines_requests_and_never_reads_is_cut() -> None:
    """Answers pile up unread, the server stops writing and waits for ever
    with a request in flight, holding the connection: a stalled write is cut
    after the idle timeout."""
    limits = ConnectionLimits(header_timeout_s=60, idle_timeout_s=0.3, max_connections=4)
    runner = await serve(make_app(BigEndpoint()), TcpListen("127.0.0.1", 0), limits)
    try:
        port, guard = runner.addresses[0][1], runner.server
        assert isinstance(guard, ConnectionGuard)
        reader, writer = await connect(port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]  # never reads an answer
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n" * 100)  # 18 MB of answers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while guard.open and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert not guard.open and guard.stalled == 1
        writer.close()
        assert await probe(port) == 200
    finally:
        await runner.cleanup()


async def test_a_silent_connection_makes_room_for_a_probe_not_a_busy_one() -> None:
    async with served(ConnectionLimits(header_timeout_s=60, idle_timeout_s=60, max_connections=2)) as (port, guard):
        busy = await connect(port)
        assert await get(*busy) == 200
        silent_reader, silent_writer = await connect(port)
        assert await probe(port) == 200  # takes the silent one's place
        assert await closed_without_answer(silent_reader)
        assert guard.evicted == 1 and guard.refused == 0
        assert await get(*busy) == 200
        close_all([busy[1], silent_writer])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def accept_failure(code: int = errno.EMFILE) -> dict[str, Any]:
    """What asyncio's selector loop reports when accept() runs out."""
    return {"message": "socket.accept() out of system resource", "exception": OSError(code, "Too many open files")}


def test_accept_errors_are_logged_at_most_once_a_second() -> None:
    clock, emitted, passed = Clock(), [], []
    handler = AcceptErrorLog(
        lambda loop, context: passed.append(context), clock=clock, emit=lambda event, **kw: emitted.append(kw)
    )
    loop = asyncio.new_event_loop()
    try:
        for step in range(50):  # 50 failures within 0.98 s
            clock.now = 1000.0 + step * 0.02
            handler(loop, accept_failure())
        assert len(emitted) == 1 and emitted[0]["held_back"] == 0
        clock.now = 1001.0
        handler(loop, accept_failure(errno.ENFILE))
        assert len(emitted) == 2 and emitted[1]["held_back"] == 49
        for step in range(100):  # 10 s of failures every 0.1 s: one line a second
            clock.now = 1001.1 + step * 0.1
            handler(loop, accept_failure())
        assert len(emitted) in (11, 12)
        assert sum(e["held_back"] for e in emitted) + len(emitted) == 151
        # anything else goes to the handler that was there before
        other = {"message": "Task exception was never retrieved", "exception": RuntimeError("x")}
        handler(loop, other)
        handler(loop, {"message": "socket.accept() failed", "exception": OSError(errno.ECONNABORTED, "aborted")})
        assert passed[0] is other and len(passed) == 2
    finally:
        loop.close()


async def test_serve_installs_the_accept_error_log_once() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    try:
        async with served(ConnectionLimits()):
            first = loop.get_exception_handler()
            async with served(ConnectionLimits()):
                assert loop.get_exception_handler() is first
        assert isinstance(first, AcceptErrorLog) and first.previous is before
    finally:
        loop.set_exception_handler(before)


# -- the daemon, black box: 1,100 silent sockets under a 1,024 descriptor limit --


@pytest.mark.slapproxy
def test_1100_silent_connections_stop_neither_ticks_nor_healthz(cdn_site, tmp_path, spawn, monkeypatch) -> None:
    """`cdnreq run` limited to 1,024 descriptors (soft and hard), a slapproxy
    master: 1,100 sockets opened to the endpoint without a byte sent must not
    keep /healthz from answering nor the next tick from succeeding."""
    fds_for(ATTACKERS)
    limited = tmp_path / "cdnreq-1024"
    limited.write_text(f'#!/bin/sh\nulimit -n 1024 || exit 99\nexec "{test_service.CDNREQ}" "$@"\n')
    limited.chmod(0o755)
    monkeypatch.setattr(test_service, "CDNREQ", str(limited))
    test_service.add_customers(cdn_site, 1)
    header_timeout = 2.0
    daemon = spawn(test_service.config_for(cdn_site, tmp_path, daemon={"http_header_timeout_s": header_timeout, "concurrency": 1024}))
    daemon.wait_status("/readyz", 200, timeout=60)
    lowered = daemon.logged("lowered to fit the file descriptor limit", rlimit_nofile=1024)
    assert [e["reason"] for e in lowered] == [
        "[daemon].concurrency lowered from 1024 to 702: RLIMIT_NOFILE is 1024"
    ]
    port = int(daemon.base.rsplit(":", 1)[1])
    sockets: list[socket.socket] = []
    try:
        for _ in range(ATTACKERS):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S))
        tick = daemon.last_tick_id()
        test_service.wait_for(
            lambda: (r := daemon.try_get("/healthz")) is not None and r.status == 200,
            "GET /healthz -> 200 while 1,100 silent sockets are open", header_timeout + 5, daemon,
        )
        done = daemon.wait_tick_after(tick, ok=True, timeout=60)
        assert done["tick"] > tick
        assert daemon.get("/readyz").status == 200
        assert not daemon.logged("tick failed")
    finally:
        for sock in sockets:
            sock.close()
    assert daemon.stop() == 0


# -- out of descriptors, for real: accept errors once a second, as JSON lines --

OUT_OF_FDS = textwrap.dedent(
    """
    import asyncio, json, os, resource
    from cdnreq import logs
    from cdnreq.config import TcpListen
    from cdnreq.endpoint import make_app, serve

    class Endpoint:
        def alive(self): return True
        def readiness(self): return True, {}
        def leader(self): return True, {}
        def metrics(self): return b"", "text/plain"
        def status(self): return {}
        async def instance(self, guid): return None

    async def main():
        logs.configure("json")
        # two listeners: asyncio retries each one's accept every second
        runners = [await serve(make_app(Endpoint()), TcpListen("127.0.0.1", 0)) for _ in range(2)]
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print(json.dumps([r.addresses[0][1] for r in runners]), flush=True)
        await asyncio.sleep(3600)

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    asyncio.run(main())
    """
)
ACCEPT_EVENT = "the endpoint cannot accept connections: out of local resources"


def test_accept_errors_out_of_descriptors_are_one_json_line_a_second_at_most(tmp_path) -> None:
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-c", OUT_OF_FDS], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        )
    sockets: list[socket.socket] = []
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline() or "null")
        assert ports, stderr_path.read_text()
        for port in ports:  # queued by the kernel; the server cannot accept them
            sockets += [socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) for _ in range(3)]

        def accept_lines() -> list[dict[str, Any]]:
            lines = stderr_path.read_text().splitlines()
            parsed = [json.loads(line) for line in lines]  # every line is JSON
            return [entry for entry in parsed if entry.get("event") == ACCEPT_EVENT]

        test_service.wait_for(lambda: len(accept_lines()) >= 4, "4 accept error lines", DEADLINE_S)
        found = accept_lines()
        assert all("Too many open files" in entry["error"] for entry in found)
        times = [datetime.fromisoformat(entry["timestamp"]) for entry in found]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert min(gaps) >= 0.9, gaps  # the two listeners' retries: at most one line a second
        assert sum(entry["held_back"] for entry in found) >= 1
        assert "Traceback" not in stderr_path.read_text()
    finally:
        for sock in sockets:
            sock.close()
        server.kill()
        server.wait()


class CountedFleet(dict):
    """The daemon's known records; counts the walks over them."""

    walks = 0

    def values(self):  # type: ignore[override]
        CountedFleet.walks += 1
        return super().values()


def test_a_flood_of_status_requests_walks_the_fleet_once_a_second(tmp_path, monkeypatch) -> None:
    """/status counts instances by phase, a walk over the whole fleet (tens of
    milliseconds at 100,000, on the event loop). A client on the loopback
    listener (no token) pipelining /status would stall ticks: the count is
    made at most once a second, whatever the number of requests (#20)."""
    from types import SimpleNamespace

    from cdnreq.config import Config
    from cdnreq.reconcile.snapshot import snapshot_of
    from cdnreq.service import daemon as daemon_module, status as status_module
    from cdnreq.model import Phase

    config = Config.model_validate({
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
        "daemon": {"database": str(tmp_path / "cdnreq.db")},
    })
    daemon = daemon_module.Daemon(tmp_path / "cdnreq.toml", config)
    fleet = CountedFleet({f"S{i}": SimpleNamespace(phase=Phase.LIVE) for i in range(1000)})
    daemon.reconciler = SimpleNamespace(snapshot=lambda: snapshot_of(fleet, None))  # type: ignore[assignment]
    clock = [100.0]
    monkeypatch.setattr(status_module.time, "monotonic", lambda: clock[0])
    CountedFleet.walks = 0
    for _ in range(500):
        assert daemon.status()["instances"] == {"live": 1000}
    assert CountedFleet.walks == 1
    fleet["S0"] = SimpleNamespace(phase=Phase.REQUESTED)
    clock[0] += 1.0  # a second later the count is fresh again
    assert daemon.status()["instances"] == {"live": 999, "requested": 1}
    assert CountedFleet.walks == 2

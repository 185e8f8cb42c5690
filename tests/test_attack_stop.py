"""Attacks on stopping while the database stops answering: a partition that
falls at a chosen moment (the first statement of a given kind a node sends),
then SIGTERM, and `cdnreq once` cut off mid-pass.

TripLink is a loopback TCP proxy to PostgreSQL that forwards until a node
sends a statement containing `trigger`, then drops every byte both ways
for good (the statement included), holding the connections open, as a
partition falling at that instant does."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.double import Double
from hanodes import Node, the_leader, until
from test_attack_pg_cluster import ThreadedDouble, served, start_node

pytestmark = [pytest.mark.postgres]


class TripLink:
    """Forwards to `port` on 127.0.0.1 until `trigger` passes from a client, then cuts everything."""

    def __init__(self, port: int, trigger: bytes):
        self.upstream, self.trigger = port, trigger
        self.port = 0
        self.tripped = threading.Event()
        self.armed = True
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> "TripLink":
        self.thread.start()

        async def serve() -> int:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            return self.server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def arm(self, armed: bool) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "armed", armed)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.tripped.is_set():
            return  # a new connection during the partition: held, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch: bool) -> None:
            try:
                while data := await src.read(65536):
                    if watch and self.armed and self.trigger in data:
                        self.tripped.set()
                    if not self.tripped.is_set():
                        dst.write(data)
                        await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                if not self.tripped.is_set():
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def stop(self) -> None:
        def close() -> None:
            for w in list(self.writers):
                w.transport.abort()
            if self.server is not None:
                self.server.close()

        self.loop.call_soon_threadsafe(close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def via(pg_url: str, pg_server, link: TripLink) -> str:
    return pg_url.replace(f":{pg_server.port}/", f":{link.port}/")


def stop_within(node: Node, limit_s: float) -> float:
    """SIGTERM; the seconds the node took to exit 0, or fail after `limit_s`."""
    began = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    try:
        code = node.process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node.name} still running {limit_s} s after SIGTERM:\n{node.tail()}")
    assert code == 0, node.tail()
    return time.monotonic() - began


def test_sigterm_while_the_take_over_migrates_on_a_partitioned_database(tmp_path: Path, pg_url: str, pg_server) -> None:
    """A node that has just taken the lease migrates the schema (its first
    fenced transaction); the database is partitioned at that moment, then
    the operator stops the node. Before the fix, a user saw this: `systemctl stop` does not
    return; the node logs "stopping" and nothing else for a minute (the
    migration waits for asyncpg's 60 s command timeout, then the lease's
    release waits 60 s more), far past the 15 s the README promises, until
    systemd's SIGKILL. A partition during a tick stops within 15 s."""
    master = Double(publish_after="immediately")
    master.add("SOFTINST-0", {"url": "https://softinst-0.example"})
    link = TripLink(pg_server.port, b"FOR KEY SHARE").start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            node = start_node("node-a", tmp_path, runner.url, via(pg_url, pg_server, link),
                              daemon={"shutdown_timeout_s": 1.0})
            nodes.append(node)
            assert link.tripped.wait(30), node.tail()  # its take-over's migration, cut off
            until(lambda: b"this node leads" in node.log_path.read_bytes(), "A took the lease", 10)
            took = stop_within(node, 25)
            print(f"exited {took:.1f} s after SIGTERM")
    finally:
        for n in nodes:
            n.remove()
        link.stop()


def test_once_cut_off_from_its_database_mid_pass(tmp_path: Path, pg_url: str, pg_server) -> None:
    """`cdnreq once` (a systemd timer's pass) whose PostgreSQL is partitioned
    just after it took the lease and migrated, at the tick's first write.
    Its lease (3 s here) is lost within seconds and another node may lead.
    Before the fix, a user saw this: the pass keeps waiting silently on every statement
    (asyncpg's 60 s command timeout each: the tick's begin, then the
    history's pruning, then the close), minutes in all, instead of ending
    within seconds with an error that names the unreachable database."""
    from hanodes import store_section
    from test_faults_hostile import write_config

    master = Double(publish_after="immediately")
    master.add("SOFTINST-0", {"url": "https://softinst-0.example"})
    link = TripLink(pg_server.port, b"INSERT INTO ticks").start()
    try:
        with ThreadedDouble(master) as runner:
            config = write_config(tmp_path / "cdnreq.toml", {"url": runner.url}, tmp_path / "cdnreq.db",
                                  store=store_section(via(pg_url, pg_server, link), "once"))
            began = time.monotonic()
            process = subprocess.Popen([sys.executable, "-m", "cdnreq.cli", "once", "--config", str(config)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = process.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                pytest.fail(f"`cdnreq once` still running 40 s after it started (cut off {link.tripped.is_set()}):"
                            f"\n{err[-3000:]}")
            took = time.monotonic() - began
            assert link.tripped.is_set()
            assert process.returncode != 0, (out, err)
            assert str(link.port) in err or "127.0.0.1" in err, err[-3000:]
            print(f"once ended {took:.1f} s after it started, exit {process.returncode}")
    finally:
        link.stop()


def test_instance_route_of_a_partitioned_standby_answers(tmp_path: Path, pg_url: str, pg_server) -> None:
    """A standby whose database link drops every byte: /readyz says 503
    within seconds, /status and /changes answer (the feed a clean 503 in
    10 s naming the store), but GET /instances/<guid> (what `cdnreq
    explain` and operators ask the endpoint) gives no answer at all for
    more than a minute: each of its reads waits for asyncpg's 60 s command
    timeout. Before the fix, a user saw this: the request hangs, a proxy in front gives a
    504, and each such request holds one of the pool's 4 connections."""
    from hanodes import Link, http

    master = Double(publish_after="immediately")
    master.add("SOFTINST-0", {"url": "https://softinst-0.example"})
    link = Link(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            nodes.append(start_node("node-b", tmp_path, runner.url, pg_url))
            the_leader(nodes)
            until(lambda: served(master, runner, ["SOFTINST-0"]), "served")
            a = start_node("node-a", tmp_path, runner.url, pg_url.replace(f":{pg_server.port}/", f":{link.port}/"))
            nodes.append(a)
            until(lambda: (r := a.get("/readyz")) and r[0] == 200, "A standing by")
            assert (r := a.get("/instances/SOFTINST-0")) is not None and r[0] == 200, r
            link.set_cut(True)
            until(lambda: (r := a.get("/readyz")) and r[0] == 503, "A not ready once cut off", 15)
            began = time.monotonic()
            answer = http(a.base + "/instances/SOFTINST-0", timeout=25)
            took = time.monotonic() - began
            assert answer is not None, f"/instances/SOFTINST-0: no answer within {took:.1f} s"
            assert answer[0] == 503, answer
    finally:
        for n in nodes:
            n.remove()
        link.stop()

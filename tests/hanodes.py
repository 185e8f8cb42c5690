"""`cdnreq run` nodes on one shared store, for the high-availability tests.

Each node reaches the master through its own FaultProxy, whose call log
tells which node sent what; the test writes each node's configuration (its
master double or slapproxy differ) and this module runs, probes and stops
the processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from faultproxy import FaultProxy

LEASE_S = 3.0
RENEW_S = 0.5
TICK_S = 0.5
TOKEN = "t" * 32


def until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Poll `check` until it returns something true, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def database_activity(pg_url: str) -> str:
    """Every other session of the database, its state and what it waits for, and the locks on the lease."""
    import asyncio

    import asyncpg

    async def read() -> str:
        conn = await asyncpg.connect(pg_url, timeout=5)
        try:
            sessions = await conn.fetch(
                "SELECT pid, state, wait_event_type, wait_event, backend_xid IS NOT NULL AS writing,"
                " now() - state_change AS for, left(query, 120) AS query FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            locks = await conn.fetch(
                "SELECT pid, mode, granted FROM pg_locks WHERE relation = to_regclass('cdnreq_lease')")
        finally:
            await conn.close()
        return "\n".join([*(str(dict(r)) for r in sessions), "locks on the lease:", *(str(dict(r)) for r in locks)])

    try:
        return asyncio.run(read())
    except Exception as error:  # noqa: BLE001 -- diagnostics only
        return f"(not read: {error!r})"


def http(url: str, method: str = "GET", token: str | None = TOKEN, timeout: float = 2) -> tuple[int, Any] | None:
    """(status, JSON) of one request (the text of an error page that is not JSON), or None when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"null")
        except ValueError:  # a proxy's own error page
            return error.code, body.decode(errors="replace")
    except (OSError, ValueError):
        return None


def store_section(pg_url: str, name: str) -> dict[str, Any]:
    """The [store] of a node on the shared PostgreSQL, with the tests' short lease."""
    return {"url": pg_url, "sslmode": "disable", "lease_s": LEASE_S, "renew_s": RENEW_S, "node_name": name}


def write_token(root: Path) -> Path:
    path = root / "endpoint.token"
    if not path.exists():
        path.write_text(TOKEN)
        path.chmod(0o600)
    return path


class Node:
    """One `cdnreq run` process: `proxy` is its way to the master, `config` its file."""

    def __init__(self, name: str, proxy: FaultProxy, config: Path):
        self.name, self.proxy, self.config = name, proxy, config
        self.base = "http://" + tomllib.loads(config.read_text())["daemon"]["listen"]
        self.log_path = config.parent / "daemon.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "cdnreq.cli", "run", "--config", str(config)],
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, method: str = "GET") -> tuple[int, Any] | None:
        return http(self.base + path, method)

    def leads(self) -> bool:
        answer = self.get("/leaderz")
        return answer is not None and answer[0] == 200

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, after SIGCONT if paused); the proxy stays for later commands."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def remove(self) -> None:
        self.stop()
        self.proxy.stop()
        self.log.close()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def when_the_lease_is_free(run: Callable[[], subprocess.CompletedProcess], config: Path,
                           timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """A command that takes the lease (`cdnreq once`, ...); on PostgreSQL, run
    again while a killed process's lease runs out (exit 3 naming the node)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = run()
        if not ("postgresql://" in config.read_text() and result.returncode == 3 and "leads" in result.stderr):
            return result
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.1)


def the_leader(nodes: list[Node], timeout_s: float = 60.0) -> Node:
    """The one node that leads, once exactly one does."""

    def one() -> Node | None:
        leading = [n for n in nodes if n.alive() and n.leads()]
        return leading[0] if len(leading) == 1 else None

    return until(one, "exactly one leader", timeout_s)


class Link:
    """A TCP proxy on 127.0.0.1 to `port`: forwards, or (cut) drops every
    byte both ways and holds the connections open, as a partition does;
    `set_cut(False)` resets the connections the partition held and forwards
    again. With `trigger`, the partition falls by itself (for good) when a
    client sends bytes holding it: `tripped` is then set, and connections
    made later are held unanswered too."""

    def __init__(self, port: int, trigger: bytes | None = None):
        self.upstream, self.trigger = port, trigger
        self.tripped = threading.Event()
        self.port = 0
        self.cut = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> "Link":
        self.thread.start()

        async def serve() -> int:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            return self.server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    async def _upstream(self, writer: asyncio.StreamWriter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The server's end for a client's connection; None (the client cut) when it refuses."""
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return None
        self.writers.add(up_writer)
        return up_reader, up_writer

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.tripped.is_set():
            return  # a new connection during the partition: held, never answered
        if (upstream := await self._upstream(writer)) is None:
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch: bool) -> None:
            try:
                while data := await src.read(65536):
                    if watch and self.trigger is not None and self.trigger in data:
                        self.tripped.set()
                    if not (self.cut or self.tripped.is_set()):
                        dst.write(data)
                        await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                if not self.tripped.is_set():
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def set_cut(self, cut: bool) -> None:
        def change() -> None:
            self.cut = cut
            if not cut:  # the sessions the partition held are dead on both ends
                for w in list(self.writers):
                    w.transport.abort()
                self.writers.clear()

        self.loop.call_soon_threadsafe(change)

    def stop(self) -> None:
        def close() -> None:
            for w in list(self.writers):
                w.transport.abort()
            if self.server is not None:
                self.server.close()

        self.loop.call_soon_threadsafe(close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

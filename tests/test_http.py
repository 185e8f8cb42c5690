"""The HTTP endpoint, served for real on loopback TCP and on a unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import structlog
from yarl import URL

from cdnreq.config import TcpListen
from cdnreq.endpoint import bound_address, make_app, serve
from cdnreq.listen import needs_token

TOKEN = "s3cret-token"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ODD_GUIDS = ["customer______1", "a/b c", "ünï/%20 ?#&", "../../etc/passwd"]


class FakeEndpoint:
    def __init__(self) -> None:
        self.is_alive = True
        self.ready: tuple[bool, dict] = (True, {"last_tick_ok": True})
        self.leads: tuple[bool, dict] = (True, {"leader": True})
        self.instances: dict[str, dict] = {g: {"guid": g, "state": "live"} for g in ODD_GUIDS}
        self.fail: str | None = None
        self.calls: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if self.fail == name:
            raise RuntimeError("secret /var/lib/cdnreq/cdnreq.db: SELECT * FROM instance")

    def alive(self) -> bool:
        self._maybe_fail("alive")
        return self.is_alive

    def readiness(self) -> tuple[bool, dict]:
        self._maybe_fail("readiness")
        return self.ready

    def leader(self) -> tuple[bool, dict]:
        return self.leads

    def metrics(self) -> tuple[bytes, str]:
        self._maybe_fail("metrics")
        return b"# TYPE cdnreq_ticks_total counter\ncdnreq_ticks_total 3\n", METRICS_TYPE

    def status(self) -> dict:
        self._maybe_fail("status")
        return {"running": False, "last": {"tick": 3, "ok": True}, "b": 1, "a": 2}

    async def instance(self, guid: str) -> dict | None:
        self._maybe_fail("instance")
        return self.instances.get(guid)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str):
        self.session = session
        self.base = base

    def url(self, path: str) -> URL:
        return URL(self.base + path, encoded=True)

    async def get(self, path: str, token: str | None = None, method: str = "GET") -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, self.url(path), headers=headers) as resp:
            body = await resp.read()
            if resp.content_type == "application/json" and body:
                return resp.status, json.loads(body), resp
            return resp.status, body, resp


async def _client(endpoint: FakeEndpoint, kind: str, tmp_path: Path, token: str | None) -> AsyncIterator[Client]:
    app = make_app(endpoint, token=token)
    if kind == "tcp":
        runner = await serve(app, TcpListen("127.0.0.1", 0))
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector()
        base = f"http://{bound_address(runner)}"
    else:
        path = tmp_path / "http.sock"
        runner = await serve(app, path)
        assert bound_address(runner) == str(path)
        connector = aiohttp.UnixConnector(path=str(path))
        base = "http://localhost"
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            yield Client(session, base)
    finally:
        await runner.cleanup()


@pytest.fixture
def endpoint() -> FakeEndpoint:
    return FakeEndpoint()


@pytest.fixture(params=["tcp", "unix"])
async def client(request: pytest.FixtureRequest, endpoint: FakeEndpoint, tmp_path: Path) -> AsyncIterator[Client]:
    async for c in _client(endpoint, request.param, tmp_path, None):
        yield c


@pytest.fixture(params=["tcp", "unix"])
async def token_client(request: pytest.FixtureRequest, endpoint: FakeEndpoint, tmp_path: Path) -> AsyncIterator[Client]:
    async for c in _client(endpoint, request.param, tmp_path, TOKEN):
        yield c


# -- routes --------------------------------------------------------------


async def test_healthz(client: Client, endpoint: FakeEndpoint) -> None:
    status, body, resp = await client.get("/healthz")
    assert (status, body) == (200, {"alive": True})
    assert resp.headers["Cache-Control"] == "no-store"
    endpoint.is_alive = False
    status, body, _ = await client.get("/healthz")
    assert (status, body) == (503, {"alive": False})
    status, _, _ = await client.get("/healthz", method="HEAD")
    assert status == 503
    assert endpoint.calls == ["alive"] * 3  # nothing else (no database) touched


async def test_readyz(client: Client, endpoint: FakeEndpoint) -> None:
    status, body, resp = await client.get("/readyz")
    assert (status, body) == (200, {"last_tick_ok": True})
    assert resp.content_type == "application/json"
    endpoint.ready = (False, {"reason": "no tick has succeeded yet", "ticks": 0})
    status, body, _ = await client.get("/readyz")
    assert (status, body) == (503, {"reason": "no tick has succeeded yet", "ticks": 0})


async def test_metrics(client: Client) -> None:
    status, body, resp = await client.get("/metrics")
    assert status == 200
    assert body == b"# TYPE cdnreq_ticks_total counter\ncdnreq_ticks_total 3\n"
    assert resp.headers["Content-Type"] == METRICS_TYPE
    assert resp.headers["Cache-Control"] == "no-store"


async def test_status_sorted_json(client: Client) -> None:
    async with client.session.get(client.url("/status")) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
    assert text == json.dumps(
        {"running": False, "last": {"tick": 3, "ok": True}, "b": 1, "a": 2}, sort_keys=True
    )


@pytest.mark.parametrize("guid", ODD_GUIDS)
async def test_instance_odd_guid(client: Client, endpoint: FakeEndpoint, guid: str) -> None:
    status, body, _ = await client.get("/instances/" + quote(guid, safe=""))
    assert (status, body) == (200, {"guid": guid, "state": "live"})


async def test_instance_unknown(client: Client) -> None:
    status, body, resp = await client.get("/instances/nobody%2Fhere")
    assert (status, body) == (404, {"error": "unknown instance"})
    assert resp.headers["Cache-Control"] == "no-store"


async def test_unknown_route_and_method_are_json(client: Client) -> None:
    status, body, _ = await client.get("/nope")
    assert (status, body) == (404, {"error": "not found"})
    status, body, _ = await client.get("/instances/")
    assert status == 404
    status, body, resp = await client.get("/status", method="POST")
    assert (status, body) == (405, {"error": "method not allowed"})
    assert "GET" in resp.headers["Allow"]


@pytest.mark.parametrize(
    ("path", "failing"),
    [
        ("/healthz", "alive"),
        ("/readyz", "readiness"),
        ("/metrics", "metrics"),
        ("/status", "status"),
        ("/instances/x", "instance"),
    ],
)
async def test_handler_error_is_500_without_details(
    client: Client, endpoint: FakeEndpoint, path: str, failing: str
) -> None:
    endpoint.fail = failing
    with structlog.testing.capture_logs() as logs:
        async with client.session.get(client.url(path)) as resp:
            assert resp.status == 500
            assert resp.content_type == "application/json"
            text = await resp.text()
    assert json.loads(text) == {"error": "internal error"}
    for leak in ("Traceback", "RuntimeError", "secret", "cdnreq.db", "SELECT"):
        assert leak not in text
    # ...but the log has it
    assert [e["log_level"] for e in logs] == ["error"]
    assert logs[0]["path"] == path
    assert logs[0]["exc_info"] is True


async def test_unserializable_status_is_500(client: Client, endpoint: FakeEndpoint) -> None:
    endpoint.status = lambda: {"when": object()}  # type: ignore[method-assign]
    with structlog.testing.capture_logs():
        status, body, _ = await client.get("/status")
    assert (status, body) == (500, {"error": "internal error"})


# -- token ---------------------------------------------------------------

PROTECTED = ["/readyz", "/metrics", "/status", "/instances/customer______1", "/nope"]


@pytest.mark.parametrize("path", PROTECTED)
async def test_token_required(token_client: Client, endpoint: FakeEndpoint, path: str) -> None:
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1], ""):
        status, body, resp = await token_client.get(path, token)
        assert (status, body) == (401, {"error": "unauthorized"}), token
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert resp.headers["Cache-Control"] == "no-store"
    assert endpoint.calls == []  # refused before the endpoint is asked
    status, _, _ = await token_client.get(path, TOKEN)
    assert status == (404 if path == "/nope" else 200)


async def test_token_scheme_and_encoding(token_client: Client) -> None:
    for header in (TOKEN, f"Basic {TOKEN}", f"Bearer{TOKEN}", "Bearer \xe9t\xe9"):
        async with token_client.session.get(
            token_client.url("/status"), headers={"Authorization": header}
        ) as resp:
            assert resp.status == 401, header
    async with token_client.session.get(
        token_client.url("/status"), headers={"Authorization": f"bearer {TOKEN}"}
    ) as resp:
        assert resp.status == 200  # the scheme is case-insensitive (RFC 7235)


async def test_healthz_open_with_token(token_client: Client) -> None:
    status, body, _ = await token_client.get("/healthz")
    assert (status, body) == (200, {"alive": True})
    status, _, _ = await token_client.get("/healthz", "wrong")
    assert status == 200


def test_empty_token_refused(endpoint: FakeEndpoint) -> None:
    with pytest.raises(ValueError):
        make_app(endpoint, token="")


# -- serving -------------------------------------------------------------


async def test_unix_socket_mode_and_stale_socket(endpoint: FakeEndpoint, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: what a killed daemon leaves
    stale.close()
    runner = await serve(make_app(endpoint), path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s:
            async with s.get("http://localhost/healthz") as resp:
                assert resp.status == 200
        # a second daemon does not steal the socket of a live one
        with pytest.raises(OSError, match="listening"):
            await serve(make_app(endpoint), path)
        assert path.exists()
    finally:
        await runner.cleanup()


async def test_unix_path_that_is_not_a_socket_is_kept(endpoint: FakeEndpoint, tmp_path: Path) -> None:
    path = tmp_path / "important"
    path.write_text("data")
    with pytest.raises(FileExistsError):
        await serve(make_app(endpoint), path)
    assert path.read_text() == "data"


async def test_tcp_port_zero_and_cleanup(endpoint: FakeEndpoint) -> None:
    runner = await serve(make_app(endpoint), TcpListen("127.0.0.1", 0))
    address = bound_address(runner)
    host, _, port = address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    await runner.cleanup()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6(endpoint: FakeEndpoint) -> None:
    runner = await serve(make_app(endpoint), TcpListen("::1", 0))
    try:
        address = bound_address(runner)
        assert address.startswith("[::1]:")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{address}/healthz") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (Path("/run/cdnreq/http.sock"), False),
        (TcpListen("127.0.0.1", 9780), False),
        (TcpListen("127.8.9.10", 9780), False),
        (TcpListen("::1", 9780), False),
        (TcpListen("::ffff:127.0.0.1", 9780), False),
        (TcpListen("localhost", 9780), False),
        (TcpListen("LocalHost.", 9780), False),
        (TcpListen("0.0.0.0", 9780), True),
        (TcpListen("::", 9780), True),
        (TcpListen("", 9780), True),
        (TcpListen("10.0.0.5", 9780), True),
        (TcpListen("2001:db8::1", 9780), True),
        (TcpListen("128.0.0.1", 9780), True),
        (TcpListen("cdn.example.com", 9780), True),
        (TcpListen("localhost.example.com", 9780), True),
    ],
)
def test_needs_token(listen: TcpListen | Path, expected: bool) -> None:
    assert needs_token(listen) is expected



async def test_leaderz_is_200_only_on_the_leader(client: Client, endpoint: FakeEndpoint) -> None:
    status, body, _ = await client.get("/leaderz")
    assert (status, body) == (200, {"leader": True})
    endpoint.leads = (False, {"leader": False, "current": "node-a/1/x"})
    status, body, _ = await client.get("/leaderz")
    assert (status, body["current"]) == (503, "node-a/1/x")

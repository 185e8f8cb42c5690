"""The daemon's small HTTP endpoint: health, readiness, metrics, status.

Operators should see at a glance, without reading logs, whether the daemon
is alive, whether the last tick worked, how far the current tick is, and why
a given instance is not live yet:

- ``GET /healthz``   liveness for systemd/Kubernetes probes: 200 or 503. It is
  cheap and never touches the database, so a slow disk cannot get a healthy
  daemon killed. It is the one route open without the token.
- ``GET /readyz``    200 or 503, both with a JSON reason (e.g. "no tick has
  succeeded yet", "the master has been unreachable for 10 minutes").
- ``GET /leaderz``   200 on the node that leads, 503 on a standby (for a load
  balancer that must reach the leader; /readyz is 200 on a healthy standby).
- ``GET /metrics``   Prometheus text, as the daemon renders it.
- ``GET /status``    the running tick's progress and the last tick's summary.
- ``GET /instances/{guid}``  one customer instance: state, last error, why
  it waits. The guid may hold any character, percent-encoded (``%2F`` too).
- ``GET /changes?after=ID&limit=N&kind=..&instance=..&wait=S``  the change
  feed (cdnreq.service.feed): cursor pages, long-polled, 410 once the
  cursor is older than the retention.
- ``POST /actions/{name}?guid=..&host=..``  an operator action (`cdnreq
  approve`, `retry`, `release`, `forget`). It changes state, so it always
  needs the token, whatever the listener: 403 when the daemon has none
  configured, 401 when the one given is wrong.

The app only reads from an `Endpoint` the daemon implements, so it is tested
with a fake one. Answers are JSON (sorted keys, ``Cache-Control: no-store``:
state changes every tick and must never be served from a cache). A handler
that raises answers 500 with a fixed message; the traceback goes to the log,
never to the client, since it may name paths, guids or SQL.

A listener reachable from other hosts serves customer data, so it takes a
bearer token (cdnreq.listen.needs_token tells when one is required); a unix
socket or a loopback address is guarded by file permissions or by the host
itself.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import structlog
from aiohttp import web

from cdnreq.listen import TcpListen
from cdnreq.httpguard import AcceptErrorLog, ConnectionLimits, GuardedRunner
from cdnreq.store.errors import StoreError

__all__ = ["ConnectionLimits", "Endpoint", "bound_address", "make_app", "serve"]

log = structlog.get_logger("cdnreq.endpoint")

# Seconds given to requests in flight when the runner is cleaned up. The
# answers are small and computed in memory, so this is plenty.
SHUTDOWN_TIMEOUT_S = 2.0

_OPEN_ROUTES = frozenset({"healthz"})
_ACTION_ROUTE = "actions"  # always behind the token
_FEED_ROUTE = "changes"  # a consumer's own token opens it too, for its scope
CONSUMER = "cdnreq.consumer"  # where the request carries the consumer it came from

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Endpoint(Protocol):
    """What the app reads; the daemon implements it."""

    def alive(self) -> bool:
        """Liveness: the event loop turns and ticks are being scheduled.
        Must be cheap and must not touch the database."""
        ...

    def readiness(self) -> tuple[bool, dict]:
        """(ready, reason dict), the dict served as is in both cases."""
        ...

    def leader(self) -> tuple[bool, dict]:
        """(this node leads, JSON body): with several nodes on one
        PostgreSQL store, one leads and the others stand by."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """(body, content type), e.g. Prometheus text format."""
        ...

    def status(self) -> dict:
        """JSON-ready state, typically with `Progress.snapshot()` in it."""
        ...

    async def instance(self, guid: str) -> dict | None:
        """One customer instance's state, or None when unknown."""
        ...

    async def act(self, name: str, query: Any, peer: str) -> tuple[int, dict]:
        """Run an operator action; (HTTP status, JSON body)."""
        ...

    async def changes(self, query: Any, consumer: Any, connected: Callable[[], bool]) -> tuple[int, dict]:
        """A page of the change feed (cdnreq.service.feed) for `consumer`
        (None: the operator, who sees everything); a long poll ends once
        `connected()` is false; (HTTP status, JSON body)."""
        ...


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, sort_keys=True),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def make_app(endpoint: Endpoint, *, token: str | None = None,
             consumer_of: Callable[[bytes], Any] | None = None) -> web.Application:
    """The aiohttp application. With `token`, every route but /healthz (and
    unknown paths too, so they do not reveal what exists) needs
    ``Authorization: Bearer <token>``. /changes also takes a consumer's
    token (`consumer_of` tells whose, or None), and serves it its scope."""
    if token is not None and not token:
        raise ValueError("token must not be empty (pass None for no token)")
    app = web.Application(middlewares=[_guard(None if token is None else token.encode("utf-8"), consumer_of)])
    app.add_routes([route(path, _bind(handler, endpoint), name=name) for route, path, name, handler in _ROUTES])
    return app


def _guard(expected: bytes | None, consumer_of: Callable[[bytes], Any] | None = None) -> Any:
    """The middleware: the token's check, JSON errors, ``no-store`` on every answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = _refusal(request, expected, consumer_of) or await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # 404/405 from the router: JSON like the rest, keeping Allow etc.
            headers = {
                k: v
                for k, v in exc.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            response = _json({"error": exc.reason.lower()}, status=exc.status, headers=headers)
        except Exception:  # not CancelledError: a BaseException since 3.8
            log.exception("HTTP handler failed", method=request.method, path=request.path)
            response = _json({"error": "internal error"}, status=500)
        response.headers["Cache-Control"] = "no-store"
        return response

    return middleware


def _refusal(request: web.Request, expected: bytes | None,
             consumer_of: Callable[[bytes], Any] | None = None) -> web.Response | None:
    """403 for an action when the daemon has no token, 401 for a route that
    needs the token when it is not given; None when the request may pass
    (on /changes with a consumer's token, marked with that consumer)."""
    route = request.match_info.route.name
    if route == _FEED_ROUTE and consumer_of is not None:
        consumer = consumer_of(_given(request))
        if consumer is not None:
            request[CONSUMER] = consumer
            return None
    if route == _ACTION_ROUTE and expected is None:
        return _json(
            {"error": "operator actions need a token: set [daemon].token_file and restart the daemon (a reload does not change the token)"}, status=403
        )
    if expected is not None and route not in _OPEN_ROUTES and not _authorized(request, expected):
        return _json({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"})
    return None


def _bind(handler: Callable[[Endpoint, web.Request], Awaitable[web.StreamResponse]], endpoint: Endpoint) -> Handler:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(endpoint, request)

    return bound


async def _healthz(endpoint: Endpoint, request: web.Request) -> web.Response:
    alive = bool(endpoint.alive())
    return _json({"alive": alive}, status=200 if alive else 503)


async def _readyz(endpoint: Endpoint, request: web.Request) -> web.Response:
    ready, reason = endpoint.readiness()
    return _json(reason, status=200 if ready else 503)


async def _leaderz(endpoint: Endpoint, request: web.Request) -> web.Response:
    leads, body = endpoint.leader()
    return _json(body, status=200 if leads else 503)


async def _metrics(endpoint: Endpoint, request: web.Request) -> web.Response:
    body, content_type = endpoint.metrics()
    # Passed as a header: aiohttp refuses a charset in content_type=, and
    # the Prometheus type carries one (and a version).
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _status(endpoint: Endpoint, request: web.Request) -> web.Response:
    return _json(endpoint.status())


async def _instance(endpoint: Endpoint, request: web.Request) -> web.Response:
    # match_info is percent-decoded: "%2F" arrives as "/".
    try:
        found = await endpoint.instance(request.match_info["guid"])
    except (StoreError, asyncio.TimeoutError) as error:  # the database away: say so, do not hang
        return _json({"error": f"the store cannot be read now: {error}"}, status=503)
    if found is None:
        return _json({"error": "unknown instance"}, status=404)
    return _json(found)


async def _action(endpoint: Endpoint, request: web.Request) -> web.Response:
    peer = request.remote or "a unix socket"
    code, body = await endpoint.act(request.match_info["name"], request.query, f"HTTP from {peer}")
    return _json(body, status=code)


async def _changes(endpoint: Endpoint, request: web.Request) -> web.Response:
    def connected() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    code, body = await endpoint.changes(request.query, request.get(CONSUMER), connected)
    return _json(body, status=code)


# method (GET answers HEAD too), path, route name (what the token rules go by), handler
_ROUTES = (
    (web.get, "/healthz", "healthz", _healthz),
    (web.get, "/readyz", "readyz", _readyz),
    (web.get, "/leaderz", "leaderz", _leaderz),
    (web.get, "/metrics", "metrics", _metrics),
    (web.get, "/status", "status", _status),
    (web.get, "/instances/{guid:.+}", "instance", _instance),
    (web.get, "/changes", "changes", _changes),
    (web.post, "/actions/{name}", _ACTION_ROUTE, _action),
)


def _given(request: web.Request) -> bytes:
    """The bearer token of the request (b"" without one). Bytes: compare_digest
    refuses non-ASCII str; surrogateescape round-trips whatever bytes aiohttp
    decoded the header from."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip().encode("utf-8", "surrogateescape") if scheme.lower() == "bearer" else b""


def _authorized(request: web.Request, expected: bytes) -> bool:
    given = _given(request)
    return bool(given) and hmac.compare_digest(given, expected)


async def serve(
    app: web.Application, listen: TcpListen | Path, limits: ConnectionLimits = ConnectionLimits()
) -> web.AppRunner:
    """Starts `app` on `listen` and returns the runner; the caller owns it
    and calls ``await runner.cleanup()``. Port 0 picks a free port (see
    `bound_address`). Every connection is held to `limits` (cdnreq.httpguard),
    and accept errors for lack of descriptors are logged once a second."""
    AcceptErrorLog.install(asyncio.get_running_loop())
    runner = GuardedRunner(app, limits=limits, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site: web.BaseSite
        if isinstance(listen, Path):
            await _remove_stale_socket(listen)
            site = web.UnixSite(runner, str(listen))
            await site.start()
            # Reachable by the daemon's group (the operators' `cdnreq status`),
            # not by everyone. The directory's permissions also apply.
            os.chmod(listen, 0o660)
        else:
            host, port = listen
            site = web.TCPSite(runner, host, port)
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _remove_stale_socket(path: Path) -> None:
    """Unlinks a socket left by a daemon that died, but never a socket that
    still answers (another daemon runs) nor anything that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a unix socket", str(path))
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (ConnectionRefusedError, FileNotFoundError, asyncio.TimeoutError):
        path.unlink(missing_ok=True)
        return
    writer.close()
    raise OSError(errno.EADDRINUSE, "another process is listening on this unix socket", str(path))


def bound_address(runner: web.BaseRunner) -> str:
    """Where `runner` actually listens: ``host:port`` (``[v6]:port``), with the
    real port when 0 was asked, or the unix socket path."""
    addresses = runner.addresses
    if not addresses:
        raise RuntimeError("the runner is not listening")
    address = addresses[0]
    if isinstance(address, (str, bytes)):
        return os.fsdecode(address)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""The double over HTTP: the five calls and the control API on one aiohttp server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bench.double.control import control_routes
from bench.double.master import Double
from bench.double.wire import error_body

__all__ = ["DoubleServer", "make_app", "serve", "start"]


def make_app(double: Double) -> web.Application:
    async def call(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.method != "POST":
            return web.Response(body=error_body(405, "The method is not allowed for the requested URL."),
                                status=405, content_type="application/json")
        status, body = double.handle(name, await request.read())
        return web.Response(body=body, status=status, content_type="application/json")

    async def elsewhere(request: web.Request) -> web.Response:
        return web.Response(body=error_body(400, f"{request.path} is not part of the open api definition"),
                            status=400, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(control_routes(double))
    app.router.add_route("*", "/{name}", call)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app


@dataclass
class DoubleServer:
    double: Double
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(double: Double, host: str = "127.0.0.1", port: int = 0) -> DoubleServer:
    """Serve `double` in the running event loop; port 0 picks a free one."""
    runner = web.AppRunner(make_app(double), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    return DoubleServer(double, runner, host, bound)


@contextlib.asynccontextmanager
async def serve(double: Double | None = None, host: str = "127.0.0.1", port: int = 0,
                **options: Any) -> AsyncIterator[DoubleServer]:
    """``async with serve(Double(...)) as server: server.url`` (in-process, for tests)."""
    server = await start(double if double is not None else Double(**options), host, port)
    try:
        yield server
    finally:
        await server.close()

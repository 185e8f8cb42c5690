"""Asking the running daemon, for `cdnreq status` and `cdnreq explain`.

When no daemon answers, the commands read the database instead, so they work
on a stopped node too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from cdnreq.config import Config


class NotRunning(Exception):
    """No daemon answered on the configured endpoint."""


# could not connect: nothing was sent (ConnectionTimeoutError: aiohttp >= 3.10;
# before it, a connect timeout is taken for no answer, the safe side)
_NOT_CONNECTED = (aiohttp.ClientConnectorError,) + tuple(
    e for e in (getattr(aiohttp, "ConnectionTimeoutError", None),) if e is not None
)


class NoAnswer(NotRunning):
    """A daemon took the request but gave no answer (a timeout, a dropped
    connection): it may still act on it, so nothing must be done in its
    place."""


async def fetch(config: Config, path: str, token: str | None, *, timeout_s: float = 3.0) -> tuple[int, Any]:
    """GET `path` on the daemon; (status, JSON body)."""
    return await _call(config, "GET", path, token, timeout_s=timeout_s)


async def post(
    config: Config, path: str, token: str | None, query: list[tuple[str, str]], *, timeout_s: float = 300.0
) -> tuple[int, Any]:
    """POST to `path` on the daemon (an operator action); (status, JSON body).
    The timeout is long: the action waits for a running tick to end."""
    return await _call(config, "POST", path, token, query=query, timeout_s=timeout_s)


async def _call(
    config: Config, method: str, path: str, token: str | None, *,
    query: list[tuple[str, str]] | None = None, timeout_s: float,
) -> tuple[int, Any]:
    listen = config.daemon.listen_endpoint()
    if isinstance(listen, Path):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(listen))
        base = "http://cdnreq"
    else:
        connector = aiohttp.TCPConnector()
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else "::1" if listen.host == "::" else listen.host
        base = f"http://[{host}]:{listen.port}" if ":" in host else f"http://{host}:{listen.port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s), headers=headers
        ) as session:
            async with session.request(method, base + path, params=query) as response:
                return response.status, await response.json(content_type=None)
    except _NOT_CONNECTED as error:  # nothing was sent
        os_error = getattr(error, "os_error", None)  # its text drags in aiohttp's `ssl:default`
        why = (os_error.strerror or str(os_error)) if os_error is not None else str(error)
        raise NotRunning(f"no cdnreq daemon answered on {config.daemon.listen}: {why}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
        raise NoAnswer(
            f"the daemon on {config.daemon.listen} took the request but gave no answer"
            f" ({type(error).__name__}: {error or 'timed out'})"
        ) from None


def instance_path(guid: str) -> str:
    return "/instances/" + quote(guid, safe="")

"""The daemon as the HTTP endpoint sees it (cdnreq.endpoint.Endpoint): each
route's answer, from the daemon's state and store."""

from __future__ import annotations

from typing import Any

from cdnreq.service.feed import parse_query, scoped
from cdnreq.service.leader import leader_answer


class DaemonEndpoint:
    """The daemon as the HTTP endpoint sees it (cdnreq.endpoint.Endpoint)."""

    def __init__(self, daemon: Any):
        self.daemon = daemon

    def alive(self) -> bool:
        return True  # answering at all means the event loop runs

    def readiness(self) -> tuple[bool, dict]:
        return self.daemon.readiness()

    def leader(self) -> tuple[bool, dict]:
        return leader_answer(self.daemon.leadership)

    def metrics(self) -> tuple[bytes, str]:
        return self.daemon.metrics.render()

    def status(self) -> dict:
        return self.daemon.status()

    async def instance(self, guid: str) -> dict | None:
        return await self.daemon.instance(guid)

    async def act(self, name: str, query: Any, via: str) -> tuple[int, dict]:
        return await self.daemon.act(name, query, via)

    async def changes(self, query: Any, consumer: Any, connected: Any = lambda: True) -> tuple[int, dict]:
        try:
            wanted = scoped(parse_query(query), consumer)
        except PermissionError as error:
            return 403, {"error": str(error)}
        except ValueError as error:
            return 400, {"error": str(error)}
        daemon = self.daemon

        def valid() -> bool:  # the client still there, and its consumer as the configuration now says
            return connected() and (consumer is None or consumer in daemon.config.consumer)

        return await daemon.feed.page(wanted, valid)

"""The double in its own process, so that its CPU is not counted as cdnreq's."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any, Self

from bench.child import ReadyChild

__all__ = ["DoubleProcess"]


class DoubleProcess(ReadyChild):
    """``python -m bench.double`` in a child process, and a small client for its control API."""

    module = "bench.double"
    what = "the master double"

    def __init__(self, *, customers: int = 0, domains: bool = False,
                 publish_after: str = "immediately", port: int = 0, validate: bool = False,
                 host: str = "127.0.0.1", parameter_bytes: int = 0, parameter_piece: int = 4000):
        super().__init__([
            "--host", host, "--port", str(port), "--customers", str(customers),
            "--publish-after", publish_after, "--parameter-bytes", str(parameter_bytes),
            "--parameter-piece", str(parameter_piece),
        ] + (["--domains"] if domains else []) + (["--validate"] if validate else []))
        self.host = host
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120) -> Self:
        self.port = int(self.spawn(timeout_s)[0])
        return self

    def control(self, op: str, body: Mapping[str, Any] | None = None, *, method: str = "POST",
                timeout_s: float = 60) -> dict[str, Any]:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            f"{self.url}/_bench/{op}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())

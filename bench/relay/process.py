"""The relay in its own process (so that its CPU is not the runner's), and its control port's client."""

from __future__ import annotations

import json
import socket
from typing import Any, Self

from bench.child import ReadyChild

__all__ = ["RelayProcess"]


class RelayProcess(ReadyChild):
    """``python -m bench.relay`` in a child process, and a client for its control port."""

    module = "bench.relay"
    what = "the relay"

    def __init__(self, upstream: tuple[str, int], *, delay_ms: float = 15.0, host: str = "127.0.0.1"):
        super().__init__(["--upstream", f"{upstream[0]}:{upstream[1]}", "--delay-ms", str(delay_ms),
                          "--host", host])
        self.host = host
        self.port: int | None = None
        self.control_port: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return self.host, self.port

    def start(self, timeout_s: float = 30) -> Self:
        port, control = self.spawn(timeout_s)
        self.port, self.control_port = int(port), int(control)
        return self

    def command(self, text: str) -> dict[str, Any]:
        assert self.control_port is not None
        with socket.create_connection((self.host, self.control_port), timeout=10) as sock:
            sock.sendall(text.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def reset(self) -> dict[str, Any]:
        return self.command("reset")

    def set_delay_ms(self, delay_ms: float) -> dict[str, Any]:
        return self.command(f"delay {delay_ms}")

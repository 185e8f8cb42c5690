"""Several ``cdnreq run`` nodes on one PostgreSQL store, for bench/failover.py.

A :class:`Node` is one daemon with its own configuration and files, all
pointed at the same database and master. Its log (JSON lines on stderr) is
read in a thread, which keeps every line with the monotonic time it was
read: the bench times "this node leads" and "tick done" from them, on the
same clock as the kill. Unlike bench/daemonproc.py, nothing is paused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from bench import child
from bench.daemonproc import cdnreq_command, daemon_config, json_lines

__all__ = ["Node", "http", "until"]

TICK_EVENTS = ("tick done", "tick failed")


def http(url: str, timeout_s: float = 2.0) -> tuple[int, Any] | None:
    """(status, JSON body) of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"null")
        except ValueError:
            return error.code, None
    except (OSError, ValueError):
        return None


def until(check: Callable[[], Any], what: str, timeout_s: float, step_s: float = 0.02) -> Any:
    """`check()`'s first true value, polled; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(step_s)


class Node:
    """One ``cdnreq run`` of the cluster; `start()` again after a kill restarts it."""

    def __init__(self, name: str, workdir: Path, *, master_url: str, store: dict[str, Any],
                 tick_interval_s: float, concurrency: int = 8):
        self.name = name
        directory = workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        self.config = daemon_config(
            directory / "cdnreq.toml", master_url=master_url, database=directory / "cdnreq.db",
            nameserver="127.0.0.1:9", concurrency=concurrency, tick_interval_s=tick_interval_s,
            extra={"store": {**store, "node_name": name}, "daemon": {"retry_base_s": 0.2, "retry_max_s": 1.0}},
        )
        self.base = "http://" + tomllib.loads(self.config.read_text())["daemon"]["listen"]
        self.log_path = directory / "daemon.log"
        self.process: subprocess.Popen | None = None
        self.lines: list[tuple[float, dict[str, Any]]] = []  # (monotonic when read, JSON line)
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.starts = 0

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> "Node":
        self.process = child.spawn([*cdnreq_command(), "run", "--config", str(self.config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.starts += 1
        self._reader = threading.Thread(target=self._read, args=(self.process,), name=f"log {self.name}",
                                        daemon=True)
        self._reader.start()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> float:
        """kill -9; the monotonic time just before the signal."""
        assert self.process is not None
        at = time.monotonic()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        return at

    def stop(self) -> int | None:
        process, self.process = self.process, None
        code = child.stop(process, grace_s=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stderr is not None
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            for at, line in json_lines(process.stderr, log):
                with self._lock:
                    self.lines.append((at, line))

    # -- what it says --------------------------------------------------------------------

    def first(self, event: str | tuple[str, ...], after: float) -> tuple[float, dict[str, Any]] | None:
        """The first line of `event` read after `after` (monotonic), with its time."""
        events = (event,) if isinstance(event, str) else event
        with self._lock:
            for at, line in self.lines:
                if at > after and line.get("event") in events:
                    return at, line
        return None

    def last_tick(self) -> tuple[float, dict[str, Any]] | None:
        with self._lock:
            for at, line in reversed(self.lines):
                if line.get("event") in TICK_EVENTS:
                    return at, line
        return None

    def ticks_since(self, after: float) -> list[dict[str, Any]]:
        with self._lock:
            return [line for at, line in self.lines if at > after and line.get("event") in TICK_EVENTS]

    def leads(self) -> bool:
        answer = http(self.base + "/leaderz", timeout_s=1.0) if self.alive() else None
        return answer is not None and answer[0] == 200

    def standby_ready(self) -> bool:
        """/readyz 200 as a standby: it reaches the store and can take over."""
        answer = http(self.base + "/readyz", timeout_s=1.0) if self.alive() else None
        return answer is not None and answer[0] == 200 and (answer[1] or {}).get("role") == "standby"

    def status(self) -> dict[str, Any] | None:
        answer = http(self.base + "/status") if self.alive() else None
        return answer[1] if answer is not None and answer[0] == 200 else None

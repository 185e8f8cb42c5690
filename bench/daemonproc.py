"""The real ``cdnreq run`` as a child process, paused between ticks, for benchmarks ONLY.

The runner must change the master double between two ticks, never during
one, and must read the daemon's CPU time and memory at the edges of a tick.
The daemon cannot be told to tick, so :class:`DaemonProcess` reads its log
(JSON lines on stderr) in a thread and sends it SIGSTOP the moment a
``tick done`` (or ``tick failed``) line appears. While it is stopped the
runner changes the customers, resets the counters and reads /proc; SIGCONT
lets it run the next tick, which starts at once when ``tick_interval_s`` is
small (the interval is counted in monotonic time, which runs on while the
process is stopped). A tick's own ``duration_s`` never includes a pause.

The rare race (the next tick began before the SIGSTOP landed) is detected
with the ``ticks`` table, read-only, and reported with the measurement (on
PostgreSQL through the ``ticks_after`` the runner gives, bench/pgstore.py).

CPU time is utime + stime of every thread (/proc/PID/stat); memory is
VmHWM/VmRSS (/proc/PID/status). The high-water mark is reset before a tick
by writing 5 to /proc/PID/clear_refs, so each tick has its own peak.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import tomli_w

from devtools.slapproxy import free_port

from bench import child
from bench.double.wire import REQUESTER_GUID

__all__ = ["DaemonProcess", "DaemonDied", "cpu_seconds", "memory_kb", "reset_peak", "cdnreq_command",
           "daemon_config"]

SR = "http://sr.invalid/rapid-cdn/software.cfg"
DNS_IN_FLIGHT = 256

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class DaemonDied(RuntimeError):
    pass


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS, in kB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cdnreq_command() -> list[str]:
    """The `cdnreq` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("cdnreq")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("cdnreq")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from cdnreq.cli import main; sys.exit(main())"]


def daemon_config(path: Path, *, master_url: str, database: Path, nameserver: str, concurrency: int,
                  tick_interval_s: float, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "master": {"url": master_url, "instance_guid": REQUESTER_GUID, "timeout_s": 60.0},
        "technical_cdn": {"software_release_uri": SR, "software_type": "default", "request_prefix": "cdnreq-"},
        "daemon": {
            "database": str(database), "concurrency": concurrency, "tick_interval_s": tick_interval_s,
            "listen": f"127.0.0.1:{free_port()}", "max_destroy_fraction": 0.9,
            "shutdown_timeout_s": 30.0,
        },
        "domain": {"secret_file": str(database.parent / "domain-secret"), "retention_s": 0.0},
        # explicit loopback name servers, never the system resolver
        "dns": {"nameservers": [nameserver], "timeout_s": 2.0, "tries": 2, "concurrency": DNS_IN_FLIGHT},
        "logging": {"format": "json", "level": "info"},
    }
    for section, values in (extra or {}).items():
        tables[section] = {**tables.get(section, {}), **values}
    path.write_text("# written by bench/daemonproc.py\n" + tomli_w.dumps(tables), encoding="utf-8")
    return path


def json_lines(stream: Any, log: Any) -> Iterator[tuple[float, dict]]:
    """The daemon's log lines as they come (copied to `log`): each JSON object
    with the monotonic time it was read at; other lines are only copied."""
    for raw in stream:
        at = time.monotonic()
        log.write(raw)
        if not raw.startswith(b"{"):
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            yield at, line


class DaemonProcess:
    """``cdnreq run --config FILE``, stopped (SIGSTOP) after every tick."""

    def __init__(self, config_path: Path, database: Path, log_path: Path,
                 on_spawn: "Callable[[int], None] | None" = None,
                 ticks_after: "Callable[[int], int] | None" = None):
        self.config_path = Path(config_path)
        self.database = Path(database)
        self.log_path = Path(log_path)
        self.on_spawn = on_spawn
        self.ticks_after = ticks_after  # the race check on another engine (bench/pgstore.py); else SQLite's file
        self.process: subprocess.Popen | None = None
        self.events: queue.Queue[tuple[str, dict[str, Any] | None]] = queue.Queue()
        self.started_at: float | None = None  # monotonic, at spawn
        self.ready_after_s: float | None = None  # spawn -> "started" logged (store loaded)
        self.cpu_at_ready: float | None = None
        self.last_tick_at: float | None = None  # monotonic, when the last tick's line was read
        self.paused = False
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    # -- life cycle --------------------------------------------------------------

    def start(self, timeout_s: float = 600) -> "DaemonProcess":
        self.started_at = time.monotonic()
        self.process = child.spawn([*cdnreq_command(), "run", "--config", str(self.config_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, name="cdnreq-log", daemon=True)
        self._reader.start()
        if self.on_spawn is not None:
            self.on_spawn(self.process.pid)
        kind, payload = self._next_event(timeout_s)
        if kind != "started":
            raise DaemonDied(f"cdnreq did not start (log {self.log_path}): {self._tail()}")
        return self

    def stop(self, timeout_s: float = 120) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with self._lock:
                self.paused = False
                os.kill(process.pid, signal.SIGTERM)
                os.kill(process.pid, signal.SIGCONT)
            child.wait_or_kill(process, timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.process = None
        return process.returncode

    def kill(self) -> None:
        process, self.process = self.process, None
        child.stop(process, sig=signal.SIGKILL)

    # -- the log -----------------------------------------------------------------------

    def _read_log(self) -> None:
        process = self.process
        assert process is not None and process.stderr is not None
        with open(self.log_path, "ab") as log:
            for _, line in json_lines(process.stderr, log):
                event = line.get("event")
                if event in ("tick done", "tick failed"):
                    self.last_tick_at = time.monotonic()
                    with self._lock:
                        if process.poll() is None:
                            os.kill(process.pid, signal.SIGSTOP)
                            self.paused = True
                    log.flush()
                    self.events.put(("tick", line))
                elif event == "started":
                    assert self.started_at is not None
                    self.ready_after_s = time.monotonic() - self.started_at
                    try:
                        self.cpu_at_ready = cpu_seconds(process.pid)
                    except OSError:
                        self.cpu_at_ready = None
                    self.events.put(("started", line))
        self.events.put(("exit", None))

    def _next_event(self, timeout_s: float) -> tuple[str, dict[str, Any] | None]:
        try:
            return self.events.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no tick from cdnreq within {timeout_s:g} s (log {self.log_path})") from None

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- ticks -------------------------------------------------------------------------

    def resume(self) -> None:
        with self._lock:
            if self.paused and self.process is not None and self.process.poll() is None:
                self.paused = False
                os.kill(self.process.pid, signal.SIGCONT)

    def next_tick(self, timeout_s: float = 3600) -> dict[str, Any]:
        """Let the daemon run until its next tick ends (it is stopped again then); the log line."""
        self.resume()
        kind, line = self._next_event(timeout_s)
        if kind != "tick" or line is None:
            raise DaemonDied(f"cdnreq exited (code {self.process.poll() if self.process else None}); "
                             f"log {self.log_path}:\n{self._tail()}")
        return line

    def later_ticks(self, tick: int) -> int:
        """Ticks begun after `tick` (from the database, read-only): > 0 means a race; -1 unreadable."""
        if self.ticks_after is not None:
            return self.ticks_after(tick)
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute("SELECT COUNT(*) FROM ticks WHERE id > ?", (tick,)).fetchone()
            return int(row[0])
        except sqlite3.Error:
            return -1

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        return memory_kb(self.pid)

    def reset_peak(self) -> bool:
        return reset_peak(self.pid)

"""A real `cdnreq run` for tests that need one holding the store."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping


@contextlib.contextmanager
def daemon_holding_store(config: Path, database: Path, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start the daemon, wait (with a deadline) until it holds the store's
    lock, and stop it with SIGTERM afterwards; it must have exited 0."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cdnreq.cli", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL, env=dict(env) if env is not None else None,
    )
    try:
        lock = Path(f"{database}.lock")
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()):
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not take its lock"
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert daemon.returncode == 0

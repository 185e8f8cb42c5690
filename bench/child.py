"""The benchmark's child processes: started one way, stopped for sure.

Every helper the benchmark runs beside the daemon (the master double, the
latency relay, nsd, py-spy, the DNS ceiling, cdnreq itself) is a child
process, so that its CPU is not counted as the runner's. They are started
here (stdin closed; Python ones from the repository root, so ``bench`` is
importable) and stopped here: a signal, a grace period, then SIGKILL, so no
run leaves one behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

__all__ = ["ROOT", "ReadyChild", "python_module", "ready_words", "run_python", "spawn", "stop", "wait_or_kill"]

ROOT = Path(__file__).resolve().parents[1]


def spawn(argv: list[str], **options: Any) -> subprocess.Popen:
    """`argv` as a child process with stdin closed (`options` go to Popen)."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, **options)


def python_module(module: str, args: list[str]) -> subprocess.Popen:
    """``python -m module args`` from the repository root, its stdout a text pipe."""
    return spawn([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, cwd=ROOT, text=True)


def ready_words(process: subprocess.Popen, timeout_s: float) -> list[str] | None:
    """The words after ``READY`` in the first such line the child prints; None if it
    exits or stays silent for `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    stdout = process.stdout
    assert stdout is not None
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([stdout], [], [], remaining)
        if not readable:
            break
        line = stdout.readline()
        if not line:  # exited
            break
        if line.startswith("READY "):
            return line.split()[1:]
    return None


def run_python(code: str, timeout_s: float) -> subprocess.CompletedProcess:
    """``python -c code`` from the repository root, with it on PYTHONPATH; output captured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout_s)


def wait_or_kill(process: subprocess.Popen, grace_s: float) -> int:
    """Wait `grace_s` for a child told to stop; SIGKILL it after that. Its return code."""
    try:
        return process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def stop(process: subprocess.Popen | None, *, sig: int = signal.SIGTERM, grace_s: float = 10) -> int | None:
    """Send `sig` to a child still running, then :func:`wait_or_kill`; idempotent."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        wait_or_kill(process, grace_s)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


class ReadyChild:
    """``python -m <module>`` that prints ``READY <port>...`` once it serves; a context manager."""

    module = ""
    what = "the child"

    def __init__(self, args: list[str]):
        self.args = args
        self.process: subprocess.Popen | None = None

    def spawn(self, timeout_s: float) -> list[str]:
        """Start the child; the words of its READY line (it is stopped if none comes)."""
        self.process = python_module(self.module, self.args)
        words = ready_words(self.process, timeout_s)
        if words is None:
            self.stop()
            raise RuntimeError(f"{self.what} did not print READY")
        return words

    def start(self, timeout_s: float = 30) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        process, self.process = self.process, None
        stop(process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

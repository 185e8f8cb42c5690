"""One Ctrl-C stops the demo cleanly: the daemon, slapproxy and the DNS server stop,
the demo exits 130 without a traceback, and no process it started is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.devmaster import find_slapos

pytestmark = pytest.mark.slapproxy

ROOT = Path(__file__).resolve().parent.parent
UP = "every customer is requested on the technical CDN"


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def _descendants(root: int) -> dict[int, str]:
    """Every process under `root`, pid -> start time (to tell a reused pid apart)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = (stat[0], stat[2])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _alive(processes: dict[int, str]) -> list[str]:
    left = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[1] != "Z":
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            left.append(f"{pid} {cmdline.strip()}")
    return left


def _wait_for(path: Path, text: str, demo: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while text not in path.read_text(errors="replace"):
        if demo.poll() is not None:
            pytest.fail(f"the demo exited with {demo.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the demo did not print {text!r} in {deadline_s} s:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def test_one_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path):
    try:
        find_slapos()
    except FileNotFoundError as exc:
        pytest.fail(f"the demo needs slapproxy: {exc}", pytrace=False)
    output = tmp_path / "demo.out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with output.open("wb") as sink:
        # Its own session and process group, as in a terminal: Ctrl-C signals the group.
        demo = subprocess.Popen(
            [sys.executable, "-m", "devtools.demo", "--dir", str(tmp_path / "run"), "--customers", "2"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: dict[int, str] = {}
    try:
        _wait_for(output, UP, demo, deadline_s=180)
        started = _descendants(demo.pid)
        assert len(started) >= 2, started  # the daemon and slapproxy at least
        os.killpg(demo.pid, signal.SIGINT)  # what the terminal does on one Ctrl-C
        code = demo.wait(timeout=120)
        log = output.read_text(errors="replace")
        assert code == 130, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert "SIGINT received: stopped everything" in log
        assert _alive(started) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        demo.wait(timeout=30)

"""Optional sampling profiles of the daemon during chosen ticks (py-spy), for investigation.

``python -m bench --profile DIR`` records each measured tick with py-spy
when it is installed (``pip install py-spy``; it is not a dependency of
cdnreq). py-spy reads the daemon's memory from outside (``--nonblocking``),
so the daemon runs unchanged, but the sampler takes CPU of its own: figures
of a profiled run are not the benchmark's figures.

For each tick, ``DIR/<N>-<scenario>.txt`` holds the collapsed stacks
(flamegraph input) and ``DIR/<N>-<scenario>.top.txt`` the functions by
inclusive and by own ("self") samples, from :func:`summarize`.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench import child

__all__ = ["PySpy", "find_py_spy", "summarize"]


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class PySpy:
    def __init__(self, directory: Path, rate: int = 250):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.executable = find_py_spy()
        self.rate = rate
        self.process: subprocess.Popen | None = None
        self.output: Path | None = None

    @property
    def usable(self) -> bool:
        return self.executable is not None

    def start(self, pid: int, label: str) -> None:
        if self.executable is None:
            return
        self.stop()
        self.output = self.directory / f"{_slug(label)}.txt"
        self.process = child.spawn(
            [self.executable, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
             "--nonblocking", "--threads", "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let it attach before the tick runs

    def stop(self) -> Path | None:
        process, self.process = self.process, None
        if process is None:
            return None
        child.stop(process, sig=signal.SIGINT, grace_s=60)
        output = self.output
        if output is not None and output.exists():
            (output.with_suffix(".top.txt")).write_text(summarize(output))
        return output


def summarize(raw: Path, top: int = 30) -> str:
    """Functions by inclusive and by own samples, from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith("thread ") and not f.startswith("process ")]
        names = [re.sub(r":\d+\)$", ")", f) for f in frames]  # merge lines of one function
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines) + "\n"

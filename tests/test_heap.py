"""Freed heap pages go back to the system (cdnreq/heap.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cdnreq import heap

CHILD = r"""
import sys
from cdnreq.heap import give_back
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) // 1024
# ~80 MB through malloc (not pymalloc), each block followed by a small one that stays: the
# freed blocks are holes inside the heap, which glibc's own trimming of its top never returns
blocks, pins = [], []
for i in range(10_000):
    blocks.append(bytes(8192) + bytes([i % 256]))
    pins.append(bytes(600) + bytes([i % 256]))
del blocks
before = rss()
assert give_back() is (sys.argv[1] == "trim")
print(before, rss())
"""


@pytest.mark.skipif(heap._TRIM is None, reason="this C library has no malloc_trim")
def test_freed_heap_pages_are_given_back() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, "trim"], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before - after >= 40, (before, after)  # MB


def test_without_malloc_trim_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_TRIM", None)
    assert heap.give_back() is False

"""Give freed memory back to the system after the big transient work.

A tick builds and drops 100,000s of objects (the listing, the plan), and a
load reads every row of the store once: Python frees them, but glibc keeps
the free pages of its heap mapped, so the daemon's resident size stayed at
its highest point for good. malloc_trim(0) returns them (a few
milliseconds). Where the C library has no malloc_trim (musl, macOS),
nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable


def _trimmer() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _trimmer()


def give_back() -> bool:
    """Return the heap's free pages to the system; whether anything could be done."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True

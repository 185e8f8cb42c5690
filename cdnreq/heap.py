"""Memory around the big transient work: the collector paused while it is
built, freed pages given back to the system after it.

A tick builds and drops 100,000s of objects (the listing, the plan), and a
load reads every row of the store once: Python frees them, but glibc keeps
the free pages of its heap mapped, so the daemon's resident size stayed at
its highest point for good. malloc_trim(0) returns them (a few
milliseconds). Where the C library has no malloc_trim (musl, macOS),
nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from typing import Callable, Iterator


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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a tick builds and drops the
    listing, the gates and the plan: reference counting frees them, and the
    collector's passes over 100,000s of young objects cost a quarter of an
    idle tick at 100,000 instances."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def release_for_reload() -> None:
    """The in-memory state just dropped, to be read again (a load freezes
    what it read, see Reconciler.load): let the collector see it again, free
    it, and give the pages back before the next load fills them, so the two
    copies are never held at once."""
    gc.unfreeze()
    gc.collect()
    give_back()

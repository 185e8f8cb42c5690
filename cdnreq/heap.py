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
from typing import Any, Callable, Iterator


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


#: A daemon reads its store again once the changes since it last did reach
#: this share of the instances it holds, and at least CHURN_MIN of them
#: (see Churn).
CHURN_SHARE = 0.25
CHURN_MIN = 10_000


class Churn:
    """When to read the store again to give memory back.

    A first reconcile of 100,000 instances, or a tenth of them removed,
    builds and drops millions of objects among those that stay; the ones
    that stay are then spread over most of the heap's pages, and Python
    returns a page of its heap to the system only once nothing in it lives.
    So the daemon kept about 380 MB at 100,000 instances for good, where
    the same state read from the store at a restart takes under 300 (the
    benchmark's warm and restarted daemons). After such a burst, once no
    newcomer waits, the daemon drops its copy of the state and the next
    tick reads it again, as a restart does: a few seconds once, for the
    memory of a restarted daemon. Pure: counts in, a yes or no out."""

    def __init__(self) -> None:
        self.changed = 0  # since the store was last read again

    def after(self, report: Any, held: int) -> bool:
        """After a tick (reconcile/report.TickReport), with `held` instances
        in memory: whether to read the store again before the next tick.
        The tick's changes are the instances it added and the calls it
        made; a tick that failed, or left newcomers waiting, is no time."""
        self.changed += sum(report.results.values()) + report.planned.get("added", 0)
        if not (report.ok and not report.admit_again and self.changed >= max(CHURN_MIN, CHURN_SHARE * held)):
            return False
        self.changed = 0
        return True


def release_for_reload() -> None:
    """The state just dropped (a load freezes what it read, see
    Reconciler.load): let the collector see it again, free it, and give the
    pages back before the next load fills them."""
    gc.unfreeze()
    gc.collect()
    give_back()

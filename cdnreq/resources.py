"""Local resources: file descriptors, sockets, memory. Pure decisions only.

A daemon that runs out of its own file descriptors (or ephemeral ports)
fails every call it makes, and those failures say nothing about the master
or about the customers: they must neither look like a master's hiccup nor
pass for a good tick. The shells (the master client, the tick, start-up and
the endpoint) ask this module what an error is and what follows from it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Mapping

# errno values that mean "this host ran out", not "the peer failed":
# descriptors (process, system), buffers, memory, ephemeral ports.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})

# A tick where more than this share of its actions failed for lack of local
# resources is not "ok": its results say nothing about the instances.
STARVED_SHARE = 0.10

# Descriptors kept for what is not a master call nor an endpoint connection:
# stdio, the database and its WAL and shm (twice: a reader), the lock, the
# listener, epoll, the loop's self-pipe, c-ares' sockets, the notify socket,
# backups, worker threads' files, a connection being refused.
RESERVED_FDS = 64
# The master client keeps two connections above `concurrency` (the listing).
MASTER_EXTRA = 2
# At most this share of what is left goes to the endpoint's connections.
HTTP_SHARE = 0.5


def local_errno(error: BaseException | None) -> int | None:
    """The errno of a local resource shortage behind `error` (followed
    through aiohttp's `os_error`, causes and contexts), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "errno", None)
        if isinstance(error, OSError) and code in LOCAL_ERRNOS:
            return code
        inner = getattr(error, "os_error", None)
        if isinstance(inner, OSError) and inner.errno in LOCAL_ERRNOS:
            return inner.errno
        error = error.__cause__ or error.__context__
    return None


def shortage(code: int) -> str:
    """What ran out, in words: "too many open files" for EMFILE."""
    return os.strerror(code).lower()


def starved(local_failures: Mapping[str, int], actions: int) -> str | None:
    """Why a tick is not ok when more than `STARVED_SHARE` of its `actions`
    failed for lack of local resources (`local_failures`: shortage -> count);
    None otherwise."""
    failed = sum(local_failures.values())
    if actions <= 0 or failed <= actions * STARVED_SHARE:
        return None
    most = max(sorted(local_failures), key=lambda k: local_failures[k])
    return f"{failed} of {actions} actions failed for lack of local resources ({most})"


@dataclass(frozen=True, slots=True)
class FdFit:
    """What fits under the descriptor limit; `capped` names each value lowered."""

    limit: int
    concurrency: int
    http_connections: int
    capped: tuple[str, ...] = ()


def fit_fds(limit: int, concurrency: int, http_connections: int) -> FdFit:
    """Lower `concurrency` (master calls in flight) and the endpoint's
    connection cap so that both, with `RESERVED_FDS`, fit under `limit`
    (the soft RLIMIT_NOFILE). The endpoint gets at most `HTTP_SHARE` of the
    room; master calls keep at least one."""
    room = max(0, limit - RESERVED_FDS - MASTER_EXTRA)
    http = max(1, min(http_connections, int(room * HTTP_SHARE)))
    calls = max(1, min(concurrency, room - http))
    capped = []
    if calls < concurrency:
        capped.append(
            f"[daemon].concurrency lowered from {concurrency} to {calls}: RLIMIT_NOFILE is {limit}"
        )
    if http < http_connections:
        capped.append(
            f"[daemon].http_max_connections lowered from {http_connections} to {http}: RLIMIT_NOFILE is {limit}"
        )
    return FdFit(limit, calls, http, tuple(capped))


class Throttle:
    """Lets a message through at most once per `interval_s`; counts the rest.

    `allow(now)` answers None while the message must be dropped, otherwise
    how many were dropped since the last one let through.
    """

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._last: float | None = None
        self._dropped = 0

    def allow(self, now: float) -> int | None:
        if self._last is not None and now - self._last < self.interval_s:
            self._dropped += 1
            return None
        self._last = now
        dropped, self._dropped = self._dropped, 0
        return dropped

"""GET /changes: the change feed, paged by cursor and long-polled (issue 16).

A consumer keeps the `next` cursor of its last page and asks for what came
after it. Ids have no gap (cdnreq.store.rows: the feed counts them in the
writing transaction), so a cursor older than the oldest kept change means
changes were pruned, and one past the last id means the store was replaced
or restored: both answer 410 Gone with the bounds, so the consumer knows it
must resynchronise from /status instead of missing changes silently.

A page holds at most MAX_LIMIT rows, so paging through millions of changes
holds one page at a time. A long poll re-reads the feed's last id (one
cheap row, shared by every waiting request) until it moves, the wait ends,
or the daemon stops; it works the same on a standby, which reads the store
the leader writes.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

from cdnreq.aiotasks import sleep_or_stop
from cdnreq.config import ConsumerConfig
from cdnreq.decide.changes import KINDS
from cdnreq.store.errors import StoreError
from cdnreq.store.feedgaps import in_gap, past_gaps

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_WAIT_S = 60.0
MAX_INSTANCES = 100
POLL_S = 0.25


class FeedReads(Protocol):
    async def changes_after(self, after: int, limit: int, *, kinds: Any = (), guids: Any = (),
                            prefixes: Any = (), titles: Any = (), only: Any = ()) -> list[tuple]: ...

    async def feed_bounds(self) -> tuple[int | None, int]: ...

    async def feed_gaps(self) -> tuple[tuple[int, int], ...]: ...


@dataclass(frozen=True)
class FeedQuery:
    after: int = 0
    limit: int = DEFAULT_LIMIT
    kinds: tuple[str, ...] = ()
    guids: tuple[str, ...] = ()
    wait_s: float = 0.0
    # a consumer's scope: with guids, any matches; the guids asked for are then in `only`
    prefixes: tuple[str, ...] = ()  # guid prefixes
    titles: tuple[str, ...] = ()  # prefixes of the customers' titles
    only: tuple[str, ...] = ()


def parse_query(query: Any) -> FeedQuery:
    """The query string's cursor, page size, filters and wait; ValueError
    naming the parameter and the value refused. `kind` and `instance` may be
    repeated, `kind` also comma-separated."""
    after = _integer(query, "after", 0, 0, 2**62)
    limit = _integer(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    kinds = tuple(k.strip() for v in _all(query, "kind") for k in v.split(",") if k.strip())
    unknown = sorted(set(kinds) - KINDS)
    if unknown:
        raise ValueError(f"kind: unknown {unknown[0]!r}; one of {', '.join(sorted(KINDS))}")
    guids = tuple(_all(query, "instance"))
    if len(guids) > MAX_INSTANCES or any(not g or len(g) > 1000 for g in guids):
        raise ValueError(f"instance: at most {MAX_INSTANCES} non-empty guids of at most 1000 characters")
    wait = query.get("wait", "0")
    try:
        wait_s = float(wait)
    except ValueError:
        raise ValueError(f"wait: {wait[:50]!r} is not a number of seconds") from None
    if not math.isfinite(wait_s) or not 0 <= wait_s <= MAX_WAIT_S:
        raise ValueError(f"wait: {wait[:50]!r} is not between 0 and {MAX_WAIT_S:g} seconds")
    return FeedQuery(after, limit, kinds, guids, wait_s)


def scoped(query: FeedQuery, consumer: ConsumerConfig | None) -> FeedQuery:
    """`query` within `consumer`'s scope (None: the operator, who sees
    everything); PermissionError naming a kind or an instance outside it."""
    if consumer is None:
        return query
    outside = [k for k in query.kinds if consumer.kinds and k not in consumer.kinds]
    if outside:
        raise PermissionError(f"kind: {outside[0]!r} is not among consumer {consumer.name!r}'s kinds")
    kinds = query.kinds or tuple(consumer.kinds)
    if not consumer.scoped():
        return replace(query, kinds=kinds)
    if not consumer.title_prefixes:  # a guid outside a scope of guids is known to be outside: said
        strangers = [g for g in query.guids if not consumer.covers(g)]
        if strangers:
            raise PermissionError(f"instance: {strangers[0][:200]!r} is outside consumer {consumer.name!r}'s scope")
    return replace(query, kinds=kinds, guids=tuple(consumer.instances), prefixes=tuple(consumer.instance_prefixes),
                   titles=tuple(consumer.title_prefixes), only=query.guids)


def _all(query: Any, name: str) -> list[str]:
    return list(query.getall(name, [])) if hasattr(query, "getall") else [query[name]] if name in query else []


def _integer(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{name}: {text[:50]!r} is not an integer from {low} to {high}")
    return int(text)


def gone(after: int, oldest: int | None, last: int, gaps: tuple[tuple[int, int], ...] = ()) -> str | None:
    """Why a cursor can no longer be followed, or None."""
    if after > last:
        return (f"cursor {after} is past the last change ({last}): the store was replaced or restored; "
                "resynchronise from /status")
    if (gap := in_gap(after, gaps)) is not None:
        return (f"cursor {after} was given by a store that was then restored from a backup that ended at "
                f"{gap[0]} (ids up to {gap[1]} are never given again); resynchronise from /status")
    first_kept = oldest if oldest is not None else last + 1
    if past_gaps(after, gaps) < first_kept - 1:
        return (f"the changes after {after} up to {first_kept - 1} were pruned (retention); "
                "resynchronise from /status")
    return None


class Feed:
    """Pages of the change feed for /changes, from the store `reads` returns."""

    def __init__(self, reads: Callable[[], FeedReads | None], stop: asyncio.Event):
        self.reads = reads
        self.stop = stop
        self._bounds: tuple[int | None, int] = (None, 0)
        self._read_at = -math.inf
        self._reading = asyncio.Lock()

    async def bounds(self, fresh: bool = False) -> tuple[int | None, int]:
        """(oldest kept, last) id, read at most every POLL_S for all waiters."""
        store = self.reads()
        if store is None:
            raise LookupError("the store is not open yet")
        async with self._reading:
            if fresh or time.monotonic() - self._read_at >= POLL_S:
                self._bounds = await store.feed_bounds()
                self._read_at = time.monotonic()
            return self._bounds

    async def page(self, query: FeedQuery, valid: Callable[[], bool] = lambda: True) -> tuple[int, dict[str, Any]]:
        try:
            return await self._page(query, valid)
        except StoreError as error:  # the database away, or no schema yet (no node has led): retry later
            return 503, {"error": f"the change feed cannot be read now: {error}"}

    async def _page(self, query: FeedQuery, valid: Callable[[], bool]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of one page, waiting up to `wait_s` for a
        first change while `valid()`: the client is still there, and its
        consumer's scope the one the query was made under (a reload may
        remove or narrow it: the poll then ends, empty, and asks again)."""
        try:
            oldest, last = await self.bounds(fresh=True)
            gaps = await self.reads().feed_gaps()  # type: ignore[union-attr]
        except LookupError as error:
            return 503, {"error": str(error)}
        why = gone(query.after, oldest, last, gaps)
        if why is not None:
            return 410, {"error": "gone", "reason": why, "oldest": oldest, "last": last}
        deadline = time.monotonic() + query.wait_s
        while True:
            rows = await self.reads().changes_after(  # type: ignore[union-attr]
                query.after, query.limit, kinds=query.kinds, guids=query.guids, prefixes=query.prefixes,
                titles=query.titles, only=query.only)
            if rows or not await self._moved(last, deadline, valid):
                break
            _, last = self._bounds
        # every matching change up to `last` is in a short page: the cursor may skip to it
        after = rows[-1][0] if len(rows) == query.limit else max(last, query.after, *(r[0] for r in rows))
        return 200, {"changes": [_shown(r) for r in rows], "next": after, "oldest": oldest, "last": last}

    async def _moved(self, last: int, deadline: float, valid: Callable[[], bool]) -> bool:
        """Wait until the feed goes past `last`; False when the wait ended first."""
        while time.monotonic() < deadline and not self.stop.is_set():
            if await sleep_or_stop(self.stop, min(POLL_S, deadline - time.monotonic())) or not valid():
                return False
            if (await self.bounds())[1] > last:
                return valid()
        return False


def _shown(row: tuple) -> dict[str, Any]:
    id_, at, guid, kind, payload, title = row
    return {"id": id_, "at": at, "instance_guid": guid, "customer_title": title, "kind": kind,
            "payload": json.loads(payload)}

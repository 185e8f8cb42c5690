"""Webhook deliveries of the change feed: one task per consumer with a url.

A slow or dead consumer never slows the tick: each consumer has its own
task, HTTP session and concurrency, and reads the changes the tick wrote
from the store (cdnreq.store.outbox). Deliveries are at least once: a
change leaves the outbox only once its consumer answered 2xx, so a kill -9
between the answer and the write sends it again (same `webhook-id`).

Targets are checked where the connection is made: every address a host
name resolves to must be public or inside `[webhooks].allow_networks`, so a
name that resolves to loopback or a private range (or changes to one
between two deliveries) is refused; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from typing import Any, Callable

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from cdnreq import __version__
from cdnreq.aiotasks import abandon, sleep_or_stop, spawn
from cdnreq.config import ConsumerConfig
from cdnreq.decide.deliveries import Delivery, Retry, after_failure, allowed_address, body, receipt
from cdnreq.decide.deliveries import shown_target, signed_headers
from cdnreq.store.feedgaps import past_gaps
from cdnreq.store.outbox import MAX_QUEUED, Outbox, summary

log = structlog.get_logger("cdnreq.webhooks")

POLL_S = 0.5
FILL_BATCH = 500
ROUND_PER_SLOT = 16  # deliveries per round for each one in flight: a round ends with one write
REFRESH_S = 5.0
CLOSE_GRACE_S = 2.0


class TargetRefused(OSError):
    """A webhook target that resolves to an address not allowed."""


class _CheckedResolver(AbstractResolver):
    """Resolves as usual, keeping only the addresses a webhook may go to."""

    def __init__(self, allow: list[str]):
        self.allow = allow
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        kept = [r for r in found if allowed_address(r["host"], self.allow)]
        if not kept:
            shown = ", ".join(sorted({r["host"] for r in found}))[:200]
            raise TargetRefused(errno.EACCES, f"{host} resolves to {shown}: not public, and not in"
                                " [webhooks].allow_networks")
        return kept

    async def close(self) -> None:
        await self.inner.close()


class Deliverer:
    """Delivers one consumer's outbox until `stop`, while `may_deliver()`."""

    def __init__(self, store: Any, consumer: ConsumerConfig, key: bytes, allow: list[str], metrics: Any,
                 may_deliver: Callable[[], bool], stop: asyncio.Event):
        self.store, self.consumer, self.key, self.allow = store, consumer, key, allow
        self.metrics, self.may_deliver, self.stop = metrics, may_deliver, stop
        self.outbox = Outbox(store, consumer.name)
        self.target = shown_target(consumer.url or "")
        self.since: int | None = None  # where a consumer new to the store starts (see run)

    async def run(self) -> None:
        """Deliver until stopped. A consumer new to the store starts at the
        feed's last id as it was when this task started (its configuration
        loaded), read even on a standby: the changes written since, by a
        first tick that may run before this node leads, are its own. On a
        database no node has led yet (no schema), every change will be."""
        if getattr(self.store, "schema_version", None) == 0:
            self.since = 0
        while self.since is None and not self.stop.is_set():
            try:
                self.since = (await self.store.feed_bounds())[1]
            except Exception as error:  # the store away: the next attempt reads it
                log.warning("webhook start not read", consumer=self.consumer.name,
                            error=f"{type(error).__name__}: {error}")
                await sleep_or_stop(self.stop, POLL_S)
        connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self.allow), limit=self.consumer.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.consumer.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not self.stop.is_set():
                worked = False
                if self.may_deliver():
                    try:
                        worked = await self._round(session)
                    except Exception as error:  # the store away, a fenced write: the next round tries again
                        log.warning("webhook round failed", consumer=self.consumer.name,
                                    error=f"{type(error).__name__}: {error}")
                if not worked:
                    await sleep_or_stop(self.stop, POLL_S)

    async def _round(self, session: aiohttp.ClientSession) -> bool:
        """Fill, send what is due (one per instance, `concurrency` at a time),
        and write every outcome of the round in one transaction."""
        await self._fill()
        due = await self.outbox.due(time.time(), self.consumer.concurrency * ROUND_PER_SLOT)
        if not due:
            return False
        gate = asyncio.Semaphore(self.consumer.concurrency)

        async def one(delivery: Delivery) -> str | None:
            if delivery.at is None:
                return "the change was pruned (retention) before it could be delivered"
            async with gate:
                return await self._send(session, delivery)

        errors = await asyncio.gather(*(one(d) for d in due))
        await asyncio.shield(self._record(list(zip(due, errors)), time.time()))
        return True

    async def _fill(self) -> None:
        """Queue the changes of its scope written since its cursor."""
        oldest, last = await self.store.feed_bounds()
        cursor = await self.outbox.cursor()
        if cursor is None:
            cursor = self.since if self.since is not None else last
            await self.outbox.start_at(cursor)
        if cursor >= last or await self.outbox.queued() >= MAX_QUEUED:
            return
        first_kept = oldest if oldest is not None else last + 1
        cursor = past_gaps(cursor, await self.store.feed_gaps())  # ids a restore skipped were never given
        if cursor < first_kept - 1:  # pruned before it could take them: said, and kept as one dead letter
            lost = f"changes {cursor + 1} to {first_kept - 1} were pruned (retention) before they could be queued"
            log.error("webhook changes lost to pruning", consumer=self.consumer.name, first=cursor + 1,
                      last=first_kept - 1)
            await self.outbox.lost(cursor + 1, first_kept - 1, lost, time.time())
            self.metrics.delivered(self.consumer.name, "dead", first_kept - 1 - cursor)
            cursor = first_kept - 1
        c = self.consumer
        rows = await self.store.changes_after(cursor, FILL_BATCH, kinds=c.kinds, guids=c.instances,
                                              prefixes=c.instance_prefixes, titles=c.title_prefixes)
        # a change written between the two reads may be in `rows`: the cursor never stays behind one queued
        moved = rows[-1][0] if len(rows) == FILL_BATCH else max([last, *(r[0] for r in rows[-1:])])
        await self.outbox.fill([(r[0], r[2]) for r in rows], moved, time.time())

    async def _record(self, outcomes: list[tuple[Delivery, str | None]], now: float) -> None:
        """The round's outcomes: taken ones leave the outbox, failed ones wait or die."""
        done = [d.change_id for d, error in outcomes if error is None]
        failed = []
        for delivery, error in outcomes:
            if error is None:
                continue
            max_retry_s = 0.0 if delivery.at is None else self.consumer.max_retry_hours * 3600
            retry: Retry = after_failure(delivery, error, now, max_retry_s)
            failed.append((delivery.change_id, retry))
            dead = retry.next_at is None
            (log.error if dead else log.info)(
                "webhook dead-lettered" if dead else "webhook delivery failed", consumer=self.consumer.name,
                target=self.target, change=delivery.change_id, instance_guid=delivery.instance_guid,
                attempts=retry.attempts, error=error)
        await self.outbox.record(done, failed, now)
        for _ in done:
            self.metrics.delivered(self.consumer.name, "delivered")
        for _, retry in failed:
            self.metrics.delivered(self.consumer.name, "dead" if retry.next_at is None else "failed")

    async def _send(self, session: aiohttp.ClientSession, delivery: Delivery) -> str | None:
        """POST one delivery; None when taken, else why not."""
        data = body(delivery)
        headers = {**signed_headers(self.key, delivery.change_id, int(time.time()), data),
                   "Content-Type": "application/json", "User-Agent": f"cdnreq/{__version__}"}
        try:
            literal = _literal_host(self.consumer.url or "")
            if literal is not None and not allowed_address(literal, self.allow):
                raise TargetRefused(errno.EACCES, f"{literal}: not public, and not in [webhooks].allow_networks")
            async with session.post(self.consumer.url or "", data=data, headers=headers,
                                    allow_redirects=False) as response:
                await response.content.read(65536)  # the answer is not used; a little is read to reuse the connection
                return receipt(response.status)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as failure:
            return f"{type(failure).__name__}: {failure}"[:500] or type(failure).__name__


def _literal_host(url: str) -> str | None:
    """The URL's host when it is an IP address (no resolver sees those)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return host


class Webhooks:
    """Every consumer's deliverer, started and stopped as the configuration
    says, and the outboxes' state (`view`, the metrics) read every REFRESH_S
    by one task, on any node: observers read that snapshot."""

    def __init__(self, store: Any, metrics: Any, may_deliver: Callable[[], bool]):
        self.store, self.metrics, self.may_deliver = store, metrics, may_deliver
        self.running: dict[str, tuple[tuple[Any, ...], asyncio.Task, asyncio.Event]] = {}
        self.consumers: list[ConsumerConfig] = []
        self.view: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self._watch = spawn(self._refresh_loop(), "cdnreq webhooks view")

    def sync(self, config: Any, keys: dict[str, bytes]) -> None:
        """Start the deliverers of consumers with a url and a key; restart one whose settings changed."""
        allow = tuple(config.webhooks.allow_networks)
        self.consumers = list(config.consumer)
        wanted = {c.name: c for c in self.consumers if c.url is not None and c.name in keys}
        for name in list(self.running):
            settings = (wanted[name], keys[name], allow) if name in wanted else None
            if settings != self.running[name][0]:
                self._end(name)
        for name, consumer in wanted.items():
            if name not in self.running:
                stop = asyncio.Event()
                deliverer = Deliverer(self.store, consumer, keys[name], list(allow), self.metrics,
                                      self.may_deliver, stop)
                task = spawn(deliverer.run(), f"cdnreq webhooks {name}")
                self.running[name] = ((consumer, keys[name], allow), task, stop)

    def _end(self, name: str) -> None:
        _, _, stop = self.running.pop(name)
        stop.set()

    async def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.refresh(time.time())
            except Exception as error:  # the store away: the view stays as it was
                log.debug("webhooks view not refreshed", error=f"{type(error).__name__}: {error}")
            await sleep_or_stop(self._stop, REFRESH_S)

    async def refresh(self, now: float) -> None:
        """Read each consumer's outbox; set the metrics and the view."""
        _, last = await self.store.feed_bounds()
        self.metrics.feed_last_id.set(last)
        found = await summary(self.store, now)
        view = {}
        for consumer in self.consumers:
            if consumer.url is None:
                continue
            state = found.get(consumer.name, {"pending": 0, "dead": 0, "last_error": None,
                                              "oldest_undelivered_s": None})
            behind = max(0, last - state.get("cursor", last))
            depth = state["pending"] + state["dead"] + behind
            self.metrics.outbox(consumer.name, depth, state["oldest_undelivered_s"], state["dead"])
            view[consumer.name] = {"target": shown_target(consumer.url), "depth": depth, "not_queued_yet": behind,
                                   **state}
        self.metrics.outboxes_only(set(view))
        self.view = view

    async def close(self) -> None:
        """Stop every deliverer: a delivery still waiting for its receiver
        after CLOSE_GRACE_S is cancelled (it is sent again at the next start)."""
        self._stop.set()
        tasks = [task for _, task, _ in self.running.values()] + [self._watch]
        for name in list(self.running):
            self._end(name)
        await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
        for task in tasks:  # one waiting on a partitioned store would not end even cancelled: not waited for
            abandon(task)
        await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)

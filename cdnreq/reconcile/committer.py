"""Outcomes of a tick's calls, written to the store in few transactions.

Kept lean: it runs once per action, next to the HTTP calls it follows.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Callable, Mapping, Protocol

import structlog

from cdnreq.decide import changes
from cdnreq.model import InstanceGuid, Record
from cdnreq.reconcile.execute import Outcome
from cdnreq.store import TickStore

log = structlog.get_logger("cdnreq.tick")


class Forgetting(Protocol):
    def forget(self, guid: str) -> None: ...


class Committer:
    """Collects outcomes and writes them in few transactions; the in-memory
    records follow once written."""

    def __init__(
        self,
        store: TickStore,
        known: dict[InstanceGuid, Record],
        domains: Forgetting,
        batch: int,
        every_s: float,
        observe: Callable[[Outcome], None],
    ):
        self.observe = observe
        self.store = store
        self.known = known
        self.domains = domains
        self.batch = batch
        self.every_s = every_s
        self.outcomes: list[Outcome] = []
        self.last_flush = time.monotonic()
        self.lock = asyncio.Lock()
        self.count = 0
        self._results: Counter[tuple[str, bool]] = Counter()
        self.shortages: Counter[str] = Counter()  # failures for lack of local resources

    @property
    def results(self) -> dict[str, int]:
        """Outcomes by `kind:ok` / `kind:failed`."""
        return {f"{kind}:{'ok' if ok else 'failed'}": n for (kind, ok), n in self._results.items()}

    async def add(self, outcome: Outcome) -> None:
        _log_transition(outcome)
        self.observe(outcome)
        self.outcomes.append(outcome)
        self.count += 1
        self._results[outcome.action.kind.value, outcome.ok] += 1
        if outcome.shortage is not None:
            self.shortages[outcome.shortage] += 1
        if len(self.outcomes) >= self.batch or time.monotonic() - self.last_flush >= self.every_s:
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            outcomes, self.outcomes = self.outcomes, []
            self.last_flush = time.monotonic()
            if not outcomes:
                return
            upserts = [o.record for o in outcomes if o.record is not None]
            forgets = [o.action.guid for o in outcomes if o.record is None]
            events = [e for o in outcomes for e in o.events]
            shown = _shown(outcomes)
            now = time.time()
            feed = [c for o in outcomes
                    for c in changes.of_outcome(o.action.record, o.record, o.action.kind, o.ok, o.shown, now)]
            await self.store.commit(upserts=upserts, forgets=forgets, events=events, shown=shown, changes=feed)
            for outcome in outcomes:
                if outcome.record is None:
                    self.known.pop(outcome.action.guid, None)
                    self.domains.forget(outcome.action.guid)
                else:
                    self.known[outcome.action.guid] = outcome.record


def _shown(outcomes: list[Outcome]) -> dict[str, Mapping[str, Any] | None]:
    """What each customer was shown, as the store keeps it (a Record keeps
    its digest only): what was just published; or nothing (NULL) once a
    read-back found it gone from the master (transitions.unshown) and no
    publication replaced it, as in memory: a restarted daemon publishes it
    again as the running one does, not at the next read-back."""
    shown: dict[str, Mapping[str, Any] | None] = {}
    for o in outcomes:
        if o.record is None:
            continue
        if o.shown is not None:
            shown[o.action.guid] = o.shown
        elif o.record.published is None and o.action.record.published is not None:
            shown[o.action.guid] = None
    return shown


def _log_transition(outcome: Outcome) -> None:
    """Log when an instance starts failing or recovers, not on every retry."""
    before, after = outcome.action.record, outcome.record
    if after is not None and after.failures == 1:
        log.warning(
            "instance failing",
            instance_guid=after.guid,
            action=outcome.action.kind.value,
            error=after.last_error,
        )
    elif outcome.ok and before.failures > 0:
        log.info("instance recovered", instance_guid=before.guid, after_failures=before.failures)

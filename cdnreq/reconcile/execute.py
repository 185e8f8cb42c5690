"""The executor: carries out a Plan with a bounded number of calls in flight.

Each action runs its calls in order (request, then publish the answer) and
ends as one Outcome: the record's new state and the events to append. A
failure is that instance's outcome, never the tick's; it is retried on a
later tick after a backoff stored with the record.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

from cdnreq.master import LocalResourceError, MasterError, MasterRejected, MasterUnavailable
from cdnreq.model import Event, InstanceAnswer, Record, RequestedState, SharedInstance
from cdnreq.decide import transitions
from cdnreq.decide.steps import (
    Next,
    after_destroy,
    after_destroy_error,
    after_destroy_read_back,
    after_read_back,
    after_read_back_error,
    once_gone,
)
from cdnreq.decide.gate import Gate, Status
from cdnreq.decide.plan import READ_BACK, Action, Kind


class Master(Protocol):
    async def request_instance(
        self,
        *,
        title: str,
        software_release_uri: str,
        software_type: str,
        parameters: Mapping[str, Any] | None,
        state: str,
        sla_parameters: Mapping[str, str],
    ) -> InstanceAnswer: ...

    async def get_instance(self, instance_guid: str) -> InstanceAnswer: ...

    async def publish_connection(self, instance_guid: str, parameters: Mapping[str, Any]) -> None: ...

    async def publish_error(self, instance_guid: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Settings:
    software_release_uri: str
    software_type: str
    sla: Mapping[str, str]
    spec_hash: str
    retry_base_s: float = 60.0
    retry_max_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    record: Record | None  # None: the instance is forgotten
    events: tuple[Event, ...]
    ok: bool
    shown: Mapping[str, Any] | None = None  # what was just published, for the store
    shortage: str | None = None  # failed for lack of local resources: what ran out


OutcomeSink = Callable[[Outcome], Awaitable[None]]


class Feed:
    """Actions handed to a running `execute` as they are planned (a tick
    plans in parts while DNS answers come in); closed once all are in."""

    def __init__(self, actions: Iterable[Action] = (), *, closed: bool = False):
        self._queue: deque[Action] = deque(actions)
        self.total = len(self._queue)
        self._closed = closed
        self._more = asyncio.Event()

    def extend(self, actions: Iterable[Action]) -> None:
        before = len(self._queue)
        self._queue.extend(actions)
        self.total += len(self._queue) - before
        self._more.set()

    def close(self) -> None:
        self._closed = True
        self._more.set()

    async def next(self) -> Action | None:
        """The next action; None once closed and empty."""
        while not self._queue:
            if self._closed:
                return None
            self._more.clear()
            await self._more.wait()
        return self._queue.popleft()


async def execute(
    actions: Iterable[Action] | Feed,
    *,
    master: Master,
    settings: Settings,
    concurrency: int,
    sink: OutcomeSink,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    tick: int | None = None,
) -> int:
    """Run the actions, at most `concurrency` at a time; returns how many ran.

    A Feed may get more actions while this runs, until it is closed. When
    `stop` is set, no further action starts; those in flight finish.
    """
    feed = actions if isinstance(actions, Feed) else Feed(actions, closed=True)
    ran = 0

    async def worker() -> None:
        nonlocal ran
        while (action := await feed.next()) is not None:
            if stop is not None and stop.is_set():
                return
            runner = _Runner(master, settings, clock, tick)
            outcome = await runner.run(action)
            ran += 1
            await sink(outcome)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    return ran


class _Runner:
    """The calls of one action, and the events they leave."""

    def __init__(self, master: Master, settings: Settings, clock: Callable[[], float], tick: int | None):
        self.master = master
        self.settings = settings
        self.clock = clock
        self.tick = tick
        self.events: list[Event] = []
        self.shown: Mapping[str, Any] | None = None
        self.shortage: str | None = None

    def event(self, guid: str, action: str, outcome: str, detail: str | None = None) -> None:
        self.events.append(Event(guid, action, outcome, self.clock(), detail, self.tick))

    def done(self, action: Action, record: Record | None, ok: bool) -> Outcome:
        return Outcome(action, record, tuple(self.events), ok, self.shown, None if ok else self.shortage)

    def failure(
        self, action: Action, record: Record, step: str, error: MasterError, label: str | None = "failed"
    ) -> Outcome:
        if label is not None:
            self.event(record.guid, step, label, error.detail)
        if isinstance(error, LocalResourceError):
            self.shortage = error.shortage
        record = transitions.failed(
            record,
            step,
            f"{error.call}: {error.detail}",
            self.clock(),
            base_s=self.settings.retry_base_s,
            max_s=self.settings.retry_max_s,
        )
        return self.done(action, record, False)

    async def run(self, action: Action) -> Outcome:
        if action.kind is Kind.DESTROY:
            return await self.destroy(action)
        if action.kind in (Kind.REQUEST, Kind.UPDATE):
            return await self.request(action, action.record)
        if action.kind is Kind.POLL:
            return await self.poll(action)
        return await self.relay(action, action.record)

    async def request(self, action: Action, record: Record) -> Outcome:
        instance, gate = action.instance, action.gate or Gate.accept(action.instance)
        assert instance is not None
        record = transitions.requesting(record, gate)  # kept by a failure: it may have been applied
        step = action.kind.value if action.kind is not Kind.POLL else Kind.REQUEST.value
        try:
            answer = await self.master.request_instance(
                title=record.title,
                software_release_uri=self.settings.software_release_uri,
                software_type=self.settings.software_type,
                parameters=_requested(instance, gate),
                state=instance.state.value,
                sla_parameters=self.settings.sla,
            )
        except MasterRejected as error:
            return await self.reject(action, record, step, error)
        except MasterError as error:
            return self.failure(action, record, step, error)
        self.event(record.guid, step, "ok", f"{action.reason}; technical entry {answer.guid}")
        record = transitions.requested(
            record, instance, gate, answer, self.settings.spec_hash, step, self.clock()
        )
        return await self.relay(action, record)

    async def reject(
        self, action: Action, record: Record, step: str, error: MasterRejected
    ) -> Outcome:
        """Tell the customer why, once; then retry later like any failure."""
        self.event(record.guid, step, "rejected", error.detail)
        message, shown = transitions.rejection(error.title or error.detail, record, action.gate)
        if record.published_error != message:
            try:
                await self.master.publish_connection(record.guid, shown)
                await self.master.publish_error(record.guid, message)
            except MasterError as publish_error:
                self.event(record.guid, "publish", "failed", publish_error.detail)
            else:
                self.event(record.guid, "publish", "ok", "request error")
                record = transitions.published(record, shown, message, self.clock())
                self.shown = shown
        return self.failure(action, record, transitions.REJECTED, error, label=None)

    async def poll(self, action: Action) -> Outcome:
        record = action.record
        assert record.tech_guid is not None
        if action.instance is None:
            return await self.confirm(action)
        try:
            answer = await self.master.get_instance(record.tech_guid)
        except MasterRejected as error:
            if after_read_back_error(not_found=error.not_found, listed=True) is Next.FAIL:
                return self.failure(action, record, "poll", error)
            self.event(record.guid, "poll", "lost", error.detail)
            return await self.request(action, transitions.lost(record, error.detail, self.clock()))
        except MasterError as error:
            return self.failure(action, record, "poll", error)
        kept = transitions.kept(answer, _requested(action.instance, action.gate))
        if after_read_back(listed=True, kept=kept) is Next.REQUEST:
            self.event(record.guid, "poll", "stale", "the technical entry does not hold the last request")
            return await self.request(action, record)
        if answer.connection_parameters:  # "no answer yet" each tick would only bloat the audit trail
            self.event(record.guid, "poll", "ok", "answer received")
        record = transitions.polled(record, answer, self.clock(), action.gate.hosts if action.gate is not None else None)
        if action.reason == READ_BACK:
            try:
                record = await self.read_customer(action, record)
            except MasterError as error:
                return self.failure(action, record, "read-back", error)
        return await self.relay(action, record)

    async def read_customer(self, action: Action, record: Record) -> Record:
        """On the periodic read-back only (a read per instance each tick would
        cost too much): check the customer still holds what it was shown."""
        due = transitions.publication(record, action.gate)  # requested: it was just read back
        if due.send_connection:
            return record  # relay publishes it anyway
        shown = due.shown
        held = await self.master.get_instance(record.guid)
        if transitions.still_shown(held.connection_parameters, shown):
            return record
        self.event(record.guid, "publish", "lost", "the customer's instance does not hold what it was shown")
        return transitions.unshown(record)

    async def relay(self, action: Action, record: Record) -> Outcome:
        """Publish what the customer should see, when it changed (or, at the
        read-back of a customer without a live entry, when it lost it)."""
        gate = action.gate
        if action.kind is Kind.PUBLISH and action.reason == READ_BACK:
            try:
                record = transitions.customer_read(await self.read_customer(action, record), gate)
            except MasterError as error:
                return self.failure(action, record, "read-back", error)
        due = transitions.publication(record, gate)
        if not due.due:
            return self.done(action, transitions.settled(record, self.clock()), True)
        try:
            if due.send_connection:
                await self.master.publish_connection(record.guid, due.shown)
            if due.send_error:
                assert due.error is not None
                await self.master.publish_error(record.guid, due.error)
        except MasterError as failure:
            return self.failure(action, record, "publish", failure)
        self.event(record.guid, "publish", "ok", _what(record, gate))
        record = transitions.published(record, due.shown, due.error, self.clock())
        self.shown = due.shown
        if gate is not None and not gate.ok:  # say why in `cdnreq status`
            record = replace(record, last_error=gate.why)
        return self.done(action, record, True)

    async def destroy(self, action: Action) -> Outcome:
        record = action.record
        by_title = record.tech_guid is None  # no entry known: destroyed by its title
        try:
            answer = await destroy_title(self.master, self.settings, record.title)
        except MasterError as error:
            if after_destroy_error(by_title=by_title, absent=absent_answer(error)) is Next.CONFIRMED:
                self.event(record.guid, "destroy", "absent", f"{action.reason}; title {record.title}")
                return await self.gone(action, transitions.cleared(record, self.clock()), forget=action.forget)
            record = transitions.destroy_failing(record, leaving=action.forget)
            return self.failure(action, record, "destroy", error)
        self.event(record.guid, "destroy", "ok", f"{action.reason}; title {record.title}")
        if after_destroy(by_title=by_title, answered_guid=answer.guid) is Next.CONFIRMED:
            return await self.gone(action, transitions.cleared(record, self.clock()), forget=action.forget)
        if by_title:  # read back by the guid the answer names
            record = replace(record, tech_guid=answer.guid)
        sent = transitions.destroy_sent(record, self.clock(), keep=not action.forget)
        return await self.gone(action, sent, forget=False)

    async def gone(self, action: Action, record: Record, *, forget: bool) -> Outcome:
        """Forget the instance, or tell the customer (still listed) what it is shown now."""
        step = once_gone(forget=forget, gate=action.gate)
        if step is Next.FORGET:
            return self.done(action, None, True)
        if step is Next.KEEP:
            return self.done(action, record, True)
        return await self.relay(action, record)

    async def confirm(self, action: Action) -> Outcome:
        """Read back a destroyed entry: done once destroyed or absent, destroy it again if not."""
        record = action.record
        assert record.tech_guid is not None
        try:
            destroyed, gone = await read_back_destroyed(self.master, record.tech_guid)
        except MasterError as error:  # timeouts, gateways, other 5xx: ask again later
            return self.failure(action, record, "confirm", error)
        if after_destroy_read_back(destroyed=destroyed) is Next.DESTROY:
            self.event(record.guid, "destroy", "lost", "the technical entry is still there")
            return await self.destroy(replace(action, kind=Kind.DESTROY))
        self.event(record.guid, "destroy", "confirmed", gone)
        after = transitions.confirmed(record, self.clock())
        return await self.gone(action, after or record, forget=after is None)


async def destroy_title(master: Master, settings: Settings, title: str) -> InstanceAnswer:
    """Request the entry `title` destroyed, with the technical CDN's release,
    type and SLA: the title is the one link to an entry cdnreq has. Shared
    by the tick's destroys and `cdnreq orphans --destroy`."""
    return await master.request_instance(
        title=title,
        software_release_uri=settings.software_release_uri,
        software_type=settings.software_type,
        parameters=None,
        state=RequestedState.DESTROYED.value,
        sla_parameters=settings.sla,
    )


async def read_back_destroyed(master: Master, tech_guid: str) -> tuple[bool, str]:
    """Read a technical entry back: (True, why) when it is destroyed or the
    master knows no such entry, (False, its state) when it is still there.
    An answer that proves neither (a timeout, a gateway, another 5xx)
    raises its MasterError: nothing is concluded from it. Shared by the
    destroy confirmation and `cdnreq forget`."""
    try:
        answer = await master.get_instance(tech_guid)
    except MasterRejected as error:
        if not error.not_found:
            raise
        return True, error.detail
    except MasterError as error:
        if not absent_answer(error):
            raise
        return True, error.detail
    if answer.state != RequestedState.DESTROYED.value:
        return False, f"state {answer.state}"
    return True, "state destroyed"


# slapproxy answers a read-back of a destroyed shared instance (and a destroy
# of a title it never had) with this 500 and body; the real master with 404.
SLAPPROXY_ABSENT = (500, "Internal server error")


def absent_answer(error: MasterError) -> bool:
    """Whether an error says the entry does not exist: slapproxy's specific
    500 only, in its JSON error document. Any other 5xx (a gateway, even one
    whose page reads "Internal server error", an injected fault, a timeout)
    is no proof of anything and is retried."""
    return isinstance(error, MasterUnavailable) and error.typed and (error.status, error.title) == SLAPPROXY_ABSENT


def _requested(instance: SharedInstance, gate: Gate | None) -> Mapping[str, Any]:
    if gate is not None and gate.forward is not None:
        return gate.forward
    return instance.parameters


def _what(record: Record, gate: Gate | None) -> str:
    if gate is not None and gate.status is not Status.OK:
        return gate.status.value
    return "connection parameters" if record.connection else "in progress"

"""The executor's contract, against an in-memory master double.

These are unit tests of concurrency and failure isolation; the real master is
exercised in test_reconcile_slapproxy.py.
"""

import asyncio
from dataclasses import replace

import pytest

from cdnreq.master import MasterRejected, MasterUnavailable
from cdnreq.model import InstanceAnswer, InstanceGuid, Phase, SharedInstance, shown_digest
from cdnreq.decide import transitions
from cdnreq.reconcile.execute import Settings, execute
from cdnreq.decide.plan import Action, Kind, new_record

SETTINGS = Settings("http://sr.invalid/cdn", "default", {"k": "v"}, "spec", 10.0, 100.0)
NOW = 5000.0


class FakeMaster:
    def __init__(self, *, fail=(), reject=(), lost=(), connection=None, delay=0.0):
        self.fail, self.reject, self.lost = set(fail), set(reject), set(lost)
        self.connection = connection or {}
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.calls = []

    async def _enter(self, name, key):
        self.calls.append((name, key))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if key in self.fail:
            raise MasterUnavailable(name, "HTTP 502: bad gateway", status=502)
        if key in self.reject:
            raise MasterRejected(name, "HTTP 400: bad parameters", status=400, title="bad parameters")

    async def request_instance(self, *, title, software_release_uri, software_type, parameters, state, sla_parameters):
        await self._enter("request", title)
        return InstanceAnswer(guid=f"tech-{title}", connection_parameters=self.connection, state=state)

    async def get_instance(self, instance_guid):
        await self._enter("get", instance_guid)
        if instance_guid in self.lost:
            raise MasterRejected("get", "HTTP 403: not found", status=403, title="not found")
        return InstanceAnswer(guid=instance_guid, connection_parameters=self.connection)

    async def publish_connection(self, instance_guid, parameters):
        await self._enter("publish", instance_guid)

    async def publish_error(self, instance_guid, message):
        await self._enter("error", instance_guid)


def request_action(guid, kind=Kind.REQUEST):
    instance = SharedInstance.of(guid, {"url": "https://b.example"})
    return Action(kind, new_record(InstanceGuid(guid), "cdnreq-", NOW), "added", instance)


async def run(actions, master, concurrency=4, stop=None):
    outcomes = []

    async def sink(outcome):
        outcomes.append(outcome)

    ran = await execute(
        actions, master=master, settings=SETTINGS, concurrency=concurrency, sink=sink, stop=stop, clock=lambda: NOW
    )
    assert ran == len(outcomes)
    return {o.action.guid: o for o in outcomes}


async def test_bounded_in_flight():
    master = FakeMaster(delay=0.01)
    outcomes = await run([request_action(f"G{i}") for i in range(40)], master, concurrency=3)
    assert len(outcomes) == 40
    assert master.peak == 3


async def test_request_then_in_progress_message():
    master = FakeMaster()
    outcome = (await run([request_action("A")], master))["A"]
    assert outcome.ok
    assert [c[0] for c in master.calls] == ["request", "publish"]
    assert outcome.record.phase is Phase.REQUESTED
    assert outcome.record.published == shown_digest(transitions.IN_PROGRESS) and outcome.shown == transitions.IN_PROGRESS
    assert outcome.record.tech_guid == "tech-cdnreq-A"
    assert [(e.action, e.outcome) for e in outcome.events] == [("request", "ok"), ("publish", "ok")]


async def test_request_with_answer_is_shown_but_live_only_once_read_back():
    master = FakeMaster(connection={"domain": "a.cdn"})
    outcome = (await run([request_action("A")], master))["A"]
    assert outcome.record.phase is Phase.REQUESTED
    assert outcome.record.published == shown_digest({"domain": "a.cdn"})
    polled = (await run([Action(Kind.POLL, outcome.record, "verify", request_action("A").instance)], master))["A"]
    assert polled.record.phase is Phase.LIVE
    assert [c[0] for c in master.calls][-1] == "get"  # nothing new to publish


async def test_poll_of_an_entry_that_lost_the_request_requests_again():
    master = FakeMaster(connection={"domain": "a.cdn"})
    base = request_action("A")
    record = replace(base.record, phase=Phase.REQUESTED, param_hash="h", tech_guid="tech-cdnreq-A",
                     connection={}, published=shown_digest(transitions.IN_PROGRESS))

    async def stale(instance_guid):
        await master._enter("get", instance_guid)
        return InstanceAnswer(guid=instance_guid, connection_parameters={}, parameters={"url": "https://old.example"})

    master.get_instance = stale
    outcome = (await run([Action(Kind.POLL, record, "waiting", base.instance)], master))["A"]
    assert [c[0] for c in master.calls][:2] == ["get", "request"]
    assert ("poll", "stale") in [(e.action, e.outcome) for e in outcome.events]


async def test_one_failure_does_not_stop_the_others():
    master = FakeMaster(fail={"cdnreq-B"})
    outcomes = await run([request_action(g) for g in "ABC"], master)
    assert outcomes["A"].ok and outcomes["C"].ok and not outcomes["B"].ok
    failed = outcomes["B"].record
    assert failed.failures == 1 and failed.retry_at > NOW and "502" in failed.last_error
    assert failed.phase is Phase.NEW
    assert [(e.action, e.outcome) for e in outcomes["B"].events] == [("request", "failed")]


async def test_rejection_is_published_to_the_customer_once():
    master = FakeMaster(reject={"cdnreq-A"})
    outcome = (await run([request_action("A")], master))["A"]
    assert not outcome.ok
    assert "bad parameters" in outcome.record.published_error
    assert "request-error-list" in outcome.shown and outcome.record.published == shown_digest(outcome.shown)
    assert [c[0] for c in master.calls] == ["request", "publish", "error"]
    again = replace(request_action("A"), record=outcome.record)
    master.calls.clear()
    await run([again], master)
    assert [c[0] for c in master.calls] == ["request"]  # same error: not re-sent


async def test_poll_of_a_lost_entry_requests_it_again():
    master = FakeMaster(lost={"tech-cdnreq-A"}, connection={})
    base = request_action("A")
    record = replace(base.record, phase=Phase.REQUESTED, param_hash="h", tech_guid="tech-cdnreq-A",
                     connection={}, published=shown_digest(transitions.IN_PROGRESS))
    outcome = (await run([Action(Kind.POLL, record, "waiting", base.instance)], master))["A"]
    assert [c[0] for c in master.calls] == ["get", "request"]
    assert outcome.ok and outcome.record.tech_guid == "tech-cdnreq-A"
    assert ("poll", "lost") in [(e.action, e.outcome) for e in outcome.events]


async def test_poll_relays_a_new_answer():
    master = FakeMaster(connection={"domain": "a.cdn"})
    base = request_action("A")
    record = replace(base.record, phase=Phase.REQUESTED, param_hash="h", tech_guid="tech-cdnreq-A",
                     connection={}, published=shown_digest(transitions.IN_PROGRESS))
    outcome = (await run([Action(Kind.POLL, record, "waiting", base.instance)], master))["A"]
    assert [c[0] for c in master.calls] == ["get", "publish"]
    assert outcome.record.phase is Phase.LIVE


async def test_destroy_forgets_on_success_and_keeps_on_failure():
    master = FakeMaster(fail={"cdnreq-B"})
    a, b = (replace(request_action(g), kind=Kind.DESTROY, instance=None) for g in "AB")
    outcomes = await run([a, b], master)
    # destroyed by title (no entry known): read back by the guid the answer names before it is forgotten
    sent = outcomes["A"].record
    assert outcomes["A"].ok and sent.phase is Phase.REMOVING and sent.tech_guid is not None
    assert sent.last_action == "destroy"
    assert outcomes["B"].record.phase is Phase.REMOVING and outcomes["B"].record.failures == 1


async def test_stop_prevents_new_actions():
    stop = asyncio.Event()
    stop.set()
    master = FakeMaster()
    outcomes = await run([request_action("A")], master, stop=stop)
    assert outcomes == {} and master.calls == []


@pytest.mark.parametrize("failures,expected", [(1, 10.0), (2, 20.0), (3, 40.0), (10, 100.0)])
def test_backoff_grows_and_caps(failures, expected):
    delay = transitions.backoff_s("G", failures, 10.0, 100.0)
    assert expected <= delay <= expected * 1.25


async def test_a_feed_takes_actions_while_running_until_closed():
    from cdnreq.reconcile.execute import Feed

    master = FakeMaster(delay=0.001)
    feed = Feed([request_action("first")])
    outcomes = []

    async def sink(outcome):
        outcomes.append(outcome.action.guid)

    running = asyncio.create_task(
        execute(feed, master=master, settings=SETTINGS, concurrency=2, sink=sink, clock=lambda: NOW)
    )
    while not outcomes:
        await asyncio.sleep(0.001)
    feed.extend([request_action("second"), request_action("third")])
    await asyncio.sleep(0.05)
    assert not running.done()  # waits for more until the feed is closed
    feed.close()
    assert await asyncio.wait_for(running, 5) == 3
    assert sorted(outcomes) == ["first", "second", "third"] and feed.total == 3

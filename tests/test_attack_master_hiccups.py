"""A master that hiccups on single calls of a tick: what a customer was told
is never taken away or replaced by something worse for it."""

from __future__ import annotations

import pytest
from aiohttp import web

from cdnreq.decide.plan import Action, Kind
from cdnreq.master import GET, REQUEST, MasterClient, MasterTooLarge
from cdnreq.model import InstanceAnswer, Phase
from tests.test_master_client import SR_CDN, answering, error_body, instance_doc, release, start_master  # noqa: F401
from tests.test_read_back import ANSWER, NOW, Master, live, run


class EmptyReadBack(Master):
    """The technical entry reads back without its answer (an empty or a
    missing `connection_parameters`: both read as {})."""

    async def get_instance(self, guid):
        if guid.startswith("tech-"):
            self.calls.append(("get", guid))
            return InstanceAnswer(guid=guid, connection_parameters={}, state="started")
        return await super().get_instance(guid)


@pytest.mark.parametrize("reason", ["periodic read-back", "waiting for the technical CDN's answer"])
async def test_a_read_back_without_an_answer_keeps_the_live_answer(reason):
    action, shown = live(reason=reason)
    master = EmptyReadBack(dict(shown))
    outcome = await run(action, master)
    assert ("publish", "A") not in master.calls, master.held
    assert master.held == shown
    assert outcome.ok and outcome.record.phase is Phase.LIVE
    assert dict(outcome.record.connection) == ANSWER


# -- "not now" is not "no": 408, 425 and 429 ---------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429])
async def test_a_live_customers_update_answered_retry_later_is_not_published_as_a_rejection(
    start_master, status
):
    """A gateway or a rate limit answering 408/425/429 to an update says
    "later", not "the CDN refuses this entry": the live customer keeps its
    answer, and the update is retried after the backoff like a 5xx."""
    action, shown = live()
    update = Action(Kind.UPDATE, action.record, "parameters changed", action.instance, action.gate)

    def respond(name, body):
        if name == REQUEST:
            return web.json_response(error_body(status, "Too many requests, later"), status=status)
        return web.json_response({"type": "ok", "title": "done"})

    master = await start_master(respond)
    async with MasterClient(url=master.url, timeout_s=5) as client:
        outcome = await run(update, client)
    assert [r.name for r in master.received] == [REQUEST], "the customer was published to"
    assert not outcome.ok and outcome.record.published == update.record.published
    assert outcome.record.retry_at is not None and str(status) in outcome.record.last_error
    assert [(e.action, e.outcome) for e in outcome.events] == [("update", "failed")]


async def test_a_live_customers_update_refused_keeps_its_answer_beside_the_refusal(start_master):
    """A real "no" (a 403 from the requester's side, a 400) to a live
    entry's update leaves the entry running as it was: the customer was
    shown only the refusal, its live answer (where to point its DNS) taken
    away until an update went through."""
    action, shown = live()
    update = Action(Kind.UPDATE, action.record, "parameters changed", action.instance, action.gate)
    published: list[dict] = []

    def respond(name, body):
        if name == REQUEST:
            return web.json_response(error_body(403, "Forbidden: no such requester"), status=403)
        if "connection_parameter_dict" in body:
            published.append(body["connection_parameter_dict"])
        return web.json_response({"type": "ok", "title": "done"})

    master = await start_master(respond)
    async with MasterClient(url=master.url, timeout_s=5) as client:
        outcome = await run(update, client)
    assert not outcome.ok and len(published) == 1, published
    told = published[0]
    assert told["domain"] == ANSWER["domain"] and str(told["port"]) == str(ANSWER["port"]), told
    assert "Forbidden: no such requester" in told["message"] and "request-error-list" in told


# -- a huge answer to one instance's call --------------------------------------------------------


@pytest.mark.parametrize("call", [GET, REQUEST])
async def test_a_huge_answer_about_one_instance_is_refused_not_read_up_to_the_listings_cap(start_master, call):
    """One entry's answer is its parameters (capped by max_parameters_bytes)
    and the CDN's answer: one of 40 MB (a hostile network, a broken CDN)
    was read, parsed, stored and published whole, up to the 1 GiB allowed
    for the listing, and as many at once as calls in flight."""
    doc = instance_doc("tech-A", title="cdnreq-A", connection={"k": "x" * (40 << 20)})
    master = await start_master(answering({call: doc}))
    async with MasterClient(url=master.url, timeout_s=20, max_parameters_bytes=65536) as client:
        with pytest.raises(MasterTooLarge) as caught:
            if call == GET:
                await client.get_instance("tech-A")
            else:
                await client.request_instance(title="cdnreq-A", software_release_uri=SR_CDN, software_type="default",
                                              parameters={}, state="started", sla_parameters={})
    assert "answer is too large" in caught.value.detail and "one instance" in caught.value.detail, caught.value.detail


# -- a request answered with another entry, its title left out ---------------------------------


async def test_a_request_answered_with_another_entry_without_its_title_is_not_taken(start_master):
    """The API's answer to a request always carries the entry's title; one
    without it that names another entry (another customer's guid and answer)
    was taken for this one's: the customer was shown the other customer's
    connection parameters and the record pointed at the other entry."""
    action, _ = live()
    update = Action(Kind.UPDATE, action.record, "parameters changed", action.instance, action.gate)
    other = instance_doc("tech-B", title="cdnreq-B", connection={"domain": "b.cdn.example", "secret": "B's"})
    del other["title"]
    published = []

    def respond(name, body):
        if name == REQUEST:
            return web.json_response(other)
        published.append(body)
        return web.json_response({"type": "ok", "title": "done"})

    master = await start_master(respond)
    async with MasterClient(url=master.url, timeout_s=5) as client:
        outcome = await run(update, client)
    assert not any("b.cdn.example" in str(body) for body in published), published
    assert outcome.record.tech_guid == "tech-A" and not outcome.ok


# -- a publication acknowledged and dropped, for a customer who is not live ----------------------


def test_a_dropped_publication_to_a_refused_customer_is_published_again_at_the_read_back(tmp_path):
    """A master may acknowledge a publication and drop it. The periodic
    read-back of the customer's instance published a live customer's answer
    again, but a customer that is not live (its entry refused, or waiting
    for its DNS proof, with the challenge it must publish) was never read:
    told once, dropped, it was left with nothing for good."""
    from bench.double import Double
    from test_faults_hostile import ThreadedDouble, run_once, write_config

    double = Double(publish_after="immediately")
    refused, good = "SOFTINST-refused", "SOFTINST-good"
    double.add(refused, {"url": "https://b.example", "server-alias": ["not", "a", "string"]})
    double.add(good, {"url": "https://good.example"})
    with ThreadedDouble(double) as served:
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db",
                              daemon={"verify_interval_s": 0.001})
        run_once(config)
        shown = served.run(lambda: dict(double.published.get(refused, {})))
        assert "request-error-list" in shown, shown
        served.run(lambda: double.published.pop(refused))  # acknowledged, then lost by the master
        run_once(config)
        assert served.run(lambda: dict(double.published.get(refused, {}))) == shown


def refused_read_back(failures: int = 0):
    from dataclasses import replace

    from cdnreq.decide import transitions
    from cdnreq.decide.gate import refused
    from cdnreq.decide.plan import READ_BACK, new_record
    from cdnreq.model import InstanceGuid, SharedInstance, shown_digest

    instance = SharedInstance.of("R", {"url": "https://b.example", "server-alias": ["x"]})
    gate = refused(("server-alias: must be a string (got an array)",))
    shown = transitions.compose(None, gate, False)
    record = replace(new_record(InstanceGuid("R"), "cdnreq-", 10.0), published=shown_digest(shown),
                     published_error=gate.error, failures=failures, retry_at=1.0 if failures else None,
                     last_error="slapos.get.v0.software_instance: HTTP 502" if failures else gate.why)
    return Action(Kind.PUBLISH, record, READ_BACK, instance, gate), shown


async def test_a_refused_customers_read_back_ends_its_failure_streak():
    """Read back fine after a failed read: the streak is over (else the
    read-back would fall due at each tick) and the instance's error is its
    own again, not the old read failure."""
    action, shown = refused_read_back(failures=1)
    master = Master(dict(shown))
    outcome = await run(action, master)
    assert master.calls == [("get", "R")]
    assert outcome.ok and outcome.record.failures == 0 and outcome.record.retry_at is None
    assert outcome.record.last_error == action.gate.why


async def test_a_refused_customers_failed_read_back_is_its_failure():
    action, _ = refused_read_back()
    outcome = await run(action, Master({}, customer_down=True))
    assert not outcome.ok and outcome.record.failures == 1 and "502" in outcome.record.last_error


@pytest.mark.parametrize("body, absent", [
    ({"status": 500, "type": "Internal Server Error", "title": "Internal server error"}, True),  # slapproxy's
    ("Internal server error", False),  # a gateway's page saying the same words
])
async def test_only_slapproxys_json_500_reads_as_an_absent_entry(start_master, body, absent):
    """A destroy is confirmed (the instance forgotten, its hosts released)
    on slapproxy's answer for an entry it does not hold; a plain-text page
    with those words (a gateway in front of the master) counted as well."""
    from cdnreq.master import MasterUnavailable
    from cdnreq.reconcile.execute import absent_answer

    def respond(name, _):
        if isinstance(body, dict):
            return web.json_response(body, status=500)
        return web.Response(text=body, status=500, content_type="text/plain")

    master = await start_master(respond)
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterUnavailable) as caught:
            await client.get_instance("tech-A")
    assert absent_answer(caught.value) is absent


async def test_an_update_read_back_without_an_answer_yet_is_read_again_not_taken_for_live():
    """A live customer changed its parameters: the update went out, the
    record is `requested`, its customer still shown its last answer. The
    technical CDN clears its answer while it redeploys: the read-back
    without an answer kept the last answer (d1a0d42) and called the record
    live with it, so the entry was no longer read each tick: the CDN's new
    answer reached the customer only at the periodic read-back (a day by
    default), the customer kept the old one meanwhile."""
    from dataclasses import replace

    from cdnreq.decide.actions import Policy
    from cdnreq.decide.plan import _for_present

    action, shown = live(reason="waiting for the technical CDN's answer")
    updated = replace(action.record, phase=Phase.REQUESTED, last_action="update", spec_hash="spec",
                      param_hash=action.gate.forward_hash, requested_state=action.instance.state)
    master = EmptyReadBack(dict(shown))
    outcome = await run(replace(action, record=updated), master)
    assert ("publish", "A") not in master.calls, master.held  # it keeps its last answer meanwhile
    assert dict(outcome.record.connection) == ANSWER
    assert outcome.record.phase is Phase.REQUESTED
    policy = Policy(request_prefix="cdnreq-", spec_hash="spec", verify_interval_s=86400.0)
    again = _for_present(action.instance, action.gate, outcome.record, policy, None, NOW + 60)
    assert again is not None and again.kind is Kind.POLL, again

"""Issue 10, property 14: a publication the master acknowledged and dropped is
noticed at the periodic read-back, and published again."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cdnreq.master import MasterUnavailable
from cdnreq.model import InstanceAnswer, InstanceGuid, Phase, SharedInstance, frozen_json, shown_digest
from cdnreq.decide import transitions
from cdnreq.reconcile.execute import Settings, execute
from cdnreq.decide.gate import Gate
from cdnreq.decide.plan import READ_BACK, Action, Kind, new_record

SETTINGS = Settings("http://sr.invalid/cdn", "default", {"k": "v"}, "spec", 10.0, 100.0)
NOW = 5000.0
ANSWER = {"domain": "a.cdn.example", "port": 443}


class Master:
    """The technical entry holds ANSWER; the customer holds `held`."""

    def __init__(self, held, *, customer_down=False):
        self.held = held
        self.customer_down = customer_down
        self.calls: list[tuple[str, str]] = []

    async def get_instance(self, guid):
        self.calls.append(("get", guid))
        if guid.startswith("tech-"):
            return InstanceAnswer(guid=guid, connection_parameters=dict(ANSWER))
        if self.customer_down:
            raise MasterUnavailable("get", "HTTP 502: bad gateway", status=502)
        return InstanceAnswer(guid=guid, connection_parameters=dict(self.held))

    async def publish_connection(self, guid, parameters):
        self.calls.append(("publish", guid))
        self.held = dict(parameters)

    async def publish_error(self, guid, message):
        self.calls.append(("error", guid))


def live(guid="A", reason=READ_BACK):
    instance = SharedInstance.of(guid, {"url": "https://b.example"})
    gate = Gate.accept(instance)
    record = replace(new_record(InstanceGuid(guid), "cdnreq-", NOW), phase=Phase.LIVE, param_hash="h",
                     tech_guid=f"tech-{guid}", connection=frozen_json(ANSWER))
    shown = transitions.compose(record.connection, gate, True)
    record = replace(record, published=shown_digest(shown))
    return Action(Kind.POLL, record, reason, instance, gate), shown


async def run(action, master):
    outcomes = []

    async def sink(outcome):
        outcomes.append(outcome)

    await execute([action], master=master, settings=SETTINGS, concurrency=1, sink=sink, clock=lambda: NOW)
    return outcomes[0]


@pytest.mark.parametrize("held, same", [
    (dict(ANSWER), True),
    ({"domain": "a.cdn.example", "port": "443"}, True),  # a master that stringifies
    ({}, False),  # acknowledged and dropped
    ({"domain": "a.cdn.example"}, False),
    ({"domain": "a.cdn.example", "port": 443, "other": "x"}, False),
    ({"domain": "old.cdn.example", "port": 443}, False),
])
def test_still_shown_compares_as_a_master_may_store(held, same):
    assert transitions.still_shown(held, ANSWER) is same


async def test_a_dropped_publication_is_published_again_at_the_read_back():
    action, shown = live()
    master = Master({})
    outcome = await run(action, master)
    assert master.calls == [("get", "tech-A"), ("get", "A"), ("publish", "A")]
    assert master.held == shown
    assert outcome.ok and outcome.record.published == shown_digest(shown)
    assert [(e.action, e.outcome) for e in outcome.events] == [("poll", "ok"), ("publish", "lost"), ("publish", "ok")]


async def test_a_customer_holding_its_parameters_is_left_alone():
    action, shown = live()
    master = Master({k: str(v) for k, v in shown.items()})
    outcome = await run(action, master)
    assert master.calls == [("get", "tech-A"), ("get", "A")]
    assert outcome.ok


async def test_the_customer_is_read_only_at_the_periodic_read_back():
    action, _ = live(reason="waiting for the technical CDN's answer")
    master = Master({})
    await run(action, master)
    assert ("get", "A") not in master.calls


async def test_a_failed_customer_read_is_that_instance_failure():
    action, _ = live()
    outcome = await run(action, Master({}, customer_down=True))
    assert not outcome.ok
    assert outcome.record.failures == 1 and outcome.record.retry_at is not None
    assert outcome.record.last_action == "read-back" and "502" in outcome.record.last_error
    assert outcome.record.phase is Phase.LIVE


# -- the real command against the master double --------------------------------------------


def test_a_master_that_dropped_a_publication_gets_it_again_at_the_read_back(tmp_path):
    import json

    from bench.double import Double
    from test_faults_hostile import ThreadedDouble, run_once, write_config

    double = Double(publish_after="immediately")
    guids = [f"SOFTINST-rb-{n}" for n in range(3)]
    for n, guid in enumerate(guids):
        double.add(guid, {"url": f"https://rb-{n}.example"})
    with ThreadedDouble(double) as served:
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db",
                              daemon={"verify_interval_s": 0.001})

        def once() -> str:
            return run_once(config)

        deadline = 10
        while deadline and not all(served.run(lambda: double.published.get(g, {}).get("domain")) for g in guids):
            once()
            deadline -= 1
        assert deadline, "the customers never got their answer"
        for _ in range(2):  # live once read back
            once()
        shown = served.run(lambda: dict(double.published[guids[0]]))
        served.run(lambda: double.published.pop(guids[0]))  # acknowledged, then lost by the master
        stderr = once()
        assert served.run(lambda: dict(double.published.get(guids[0], {}))) == shown
        done = next(json.loads(l) for l in stderr.splitlines() if '"tick done"' in l)
        assert done["planned"].get("poll", 0) >= len(guids), done


def test_a_failed_read_back_is_retried_after_its_backoff_not_a_period_later():
    from cdnreq.model import Listing
    from cdnreq.decide.plan import Policy, plan

    action, _ = live()
    policy = Policy(request_prefix="cdnreq-", spec_hash="spec", verify_interval_s=86400.0)
    record = replace(action.record, spec_hash="spec", requested_state=action.instance.state,
                     param_hash=action.gate.forward_hash, updated_at=NOW - 100)
    listed = Listing((action.instance,))
    assert plan(listed, {record.guid: record}, NOW, policy).actions == ()  # read back a day later
    failed = replace(record, failures=1, retry_at=NOW - 1)
    assert [(a.kind, a.reason) for a in plan(listed, {record.guid: failed}, NOW, policy).actions] == [
        (Kind.POLL, READ_BACK)]
    waiting = replace(failed, retry_at=NOW + 10)
    assert plan(listed, {record.guid: waiting}, NOW, policy).actions == ()


@pytest.mark.slapproxy
def test_slapproxy_customer_that_lost_its_parameters_gets_them_at_the_read_back(cdn_site, tmp_path):
    """slapproxy answers slapos.get.v0.software_instance for a customer's shared
    instance with the connection parameters it holds (as text)."""
    import subprocess

    from devtools.devmaster import write_config
    from cdnreq.decide.titles import technical_title
    from test_faults_hostile import CDNREQ

    site = cdn_site
    config = write_config(tmp_path / "c.toml", site, database=tmp_path / "state" / "cdnreq.db",
                          daemon={"verify_interval_s": 0.001})

    def once():
        result = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]

    guid = site.add_customer("shop", {"url": "https://shop.example"})
    once()
    entry = next(e for e in site.technical_entries() if e["title"] == technical_title("cdnreq-", guid))
    site.publish_as_cdn(entry["instance_guid"], {"domain": "shop.cdn.example", "replication": 1})
    once()
    once()  # live, read back: nothing to do
    answer = site.customer(guid)["connection_parameters"]
    assert answer == {"domain": "shop.cdn.example", "replication": "1"}
    site.proxy.publish(guid, {}, partition=site.requester_partition)  # what a master that dropped it shows
    assert site.customer(guid)["connection_parameters"] == {}
    once()
    assert site.customer(guid)["connection_parameters"] == answer


async def test_an_empty_value_read_back_from_slapproxy_is_still_what_was_shown(tmp_path, cdn_site):
    """slapproxy reads an empty connection value back as null: a customer
    shown {"message": ""} was judged to have lost it at each read-back, and
    published to again once per verify interval."""
    from cdnreq.configfile import load_config
    from devtools.devmaster import write_config
    from cdnreq.wiring import master_client

    guid = cdn_site.add_customer("empty-value", {"url": "https://b.example"})
    config = load_config(write_config(tmp_path / "cdnreq.toml", cdn_site, database=tmp_path / "cdnreq.db"))
    shown = {"domain": "a.cdn.example", "note": ""}
    async with master_client(config) as client:
        await client.publish_connection(guid, shown)
        held = (await client.get_instance(guid)).connection_parameters
    assert transitions.still_shown(held, shown), held
    assert not transitions.still_shown({**held, "note": "x"}, shown)

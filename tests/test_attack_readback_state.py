"""A technical entry that reads back `destroyed` while its customer is
listed (someone destroyed it on the master, or the master dropped the
request) is requested again: it was taken for live, and the customer's site
stayed down with nothing to bring it back."""

from dataclasses import replace

from cdnreq.decide import transitions
from cdnreq.decide.plan import Action, Kind
from cdnreq.model import InstanceAnswer, Phase, shown_digest
from tests.test_execute import FakeMaster, request_action, run


def live_record():
    base = request_action("A")
    record = replace(base.record, phase=Phase.LIVE, param_hash="h", tech_guid="tech-cdnreq-A",
                     connection={"domain": "a.cdn"}, published=shown_digest({"domain": "a.cdn"}))
    return base, record


async def read_back(state):
    master = FakeMaster(connection={"domain": "a.cdn"})
    base, record = live_record()

    async def answer(instance_guid):
        await master._enter("get", instance_guid)
        return InstanceAnswer(guid=instance_guid, connection_parameters={"domain": "a.cdn"}, state=state,
                              parameters={"url": "https://b.example"})

    master.get_instance = answer
    outcome = (await run([Action(Kind.POLL, record, "read back", base.instance)], master))["A"]
    return master, outcome


async def test_an_entry_read_back_destroyed_is_requested_again():
    master, outcome = await read_back("destroyed")
    assert [c[0] for c in master.calls][:2] == ["get", "request"]
    assert ("poll", "stale") in [(e.action, e.outcome) for e in outcome.events]


async def test_an_entry_read_back_started_is_left_alone():
    for state in ("started", None, "start_requested"):  # other spellings are the master's business
        master, outcome = await read_back(state)
        assert [c[0] for c in master.calls] == ["get"], state


def test_kept_says_no_to_a_destroyed_entry():
    answer = InstanceAnswer(guid="T", parameters={"url": "u"}, state="destroyed")
    assert not transitions.kept(answer, {"url": "u"})
    assert transitions.kept(replace(answer, state="started"), {"url": "u"})
    assert not transitions.kept(replace(answer, parameters=None), {"url": "u"})

"""The planner's rules, as tables: no server, no sleeps, a fake clock."""

from dataclasses import replace

import pytest

from cdnreq.model import Listing
from cdnreq.model import InstanceGuid, Phase, Record, RequestedState, SharedInstance, shown_digest
from cdnreq.decide.plan import Kind, Policy, new_record, plan
from cdnreq.decide.removals import held_records

NOW = 1_000_000.0
POLICY = Policy(request_prefix="cdnreq-", spec_hash="spec-1")


def inst(guid, state="started", **params):
    return SharedInstance.of(guid, params or {"url": f"https://{guid}.example"}, state=state)


def live(instance: SharedInstance, **changes) -> Record:
    record = replace(
        new_record(instance.guid, POLICY.request_prefix, NOW - 100),
        phase=Phase.LIVE,
        param_hash=instance.param_hash,
        requested_state=instance.state,
        spec_hash=POLICY.spec_hash,
        tech_guid=f"tech-{instance.guid}",
        connection={"domain": "x.cdn"},
        published=shown_digest({"domain": "x.cdn"}),
    )
    return replace(record, **changes)


def known(*records):
    return {r.guid: r for r in records}


def kinds(p):
    return [(a.kind, a.guid) for a in p.actions]


def listing(*instances, anonymous=0, unusable=()):
    reasons = unusable if isinstance(unusable, dict) else dict.fromkeys(unusable, "state: missing from the listing")
    return Listing(tuple(instances), reasons, anonymous)


def test_new_instance_is_reserved_and_requested():
    a = inst("A")
    p = plan(listing(a), {}, NOW, POLICY)
    assert kinds(p) == [(Kind.REQUEST, "A")]
    assert [r.title for r in p.updates] == ["cdnreq-A"]
    assert p.actions[0].instance is a
    assert p.counts["added"] == 1


def test_unchanged_live_instance_needs_nothing():
    a = inst("A")
    p = plan(listing(a), known(live(a)), NOW, POLICY)
    assert p.actions == () and p.updates == ()
    assert p.counts["unchanged"] == 1


def test_changed_parameters_update():
    a = inst("A")
    changed = inst("A", url="https://other.example")
    p = plan(listing(changed), known(live(a)), NOW, POLICY)
    assert kinds(p) == [(Kind.UPDATE, "A")]
    assert p.actions[0].reason == "parameters changed"


@pytest.mark.parametrize("state", ["stopped", "started"])
def test_state_change_updates(state):
    a = inst("A", state="started" if state == "stopped" else "stopped")
    p = plan(listing(inst("A", state=state)), known(live(a)), NOW, POLICY)
    assert kinds(p) == [(Kind.UPDATE, "A")]
    assert state in p.actions[0].reason


def test_changed_technical_cdn_settings_update_everything():
    a, b = inst("A"), inst("B")
    p = plan(listing(a, b), known(live(a), live(b)), NOW, replace(POLICY, spec_hash="spec-2"))
    assert sorted(kinds(p)) == [(Kind.UPDATE, "A"), (Kind.UPDATE, "B")]


def test_customer_destroyed_state_destroys():
    a = inst("A")
    b, c = inst("B"), inst("C")  # C: 1 of 3 gone stays under max_destroy_fraction (1 of 2 reaches it)
    p = plan(listing(inst("A", state="destroyed"), b, c), known(live(a), live(b), live(c)), NOW, POLICY)
    assert (Kind.DESTROY, "A") in kinds(p)


def test_destroyed_and_unknown_is_ignored():
    p = plan(listing(inst("A", state="destroyed")), {}, NOW, POLICY)
    assert p.actions == () and p.updates == ()


def test_removed_instance_is_destroyed():
    a, b, c = inst("A"), inst("B"), inst("C")
    p = plan(listing(a, b), known(live(a), live(b), live(c)), NOW, POLICY)
    assert kinds(p) == [(Kind.DESTROY, "C")]
    assert p.actions[0].instance is None


def test_empty_list_holds_every_destroy():
    a = inst("A")
    p = plan(listing(), known(live(a)), NOW, POLICY)
    assert p.actions == ()
    assert [r.guid for r in p.held] == ["A"]
    assert "allow_empty" in p.hold_reason


def test_empty_list_destroys_when_allowed():
    a = inst("A")
    p = plan(listing(), known(live(a)), NOW, replace(POLICY, allow_empty=True))
    assert kinds(p) == [(Kind.DESTROY, "A")]


def test_empty_list_with_nothing_known_is_fine():
    p = plan(listing(), {}, NOW, POLICY)
    assert p.actions == () and p.hold_reason is None


def test_mass_removal_beyond_the_fraction_is_held():
    instances = [inst(f"I{i}") for i in range(10)]
    records = known(*(live(i) for i in instances))
    p = plan(listing(*instances[:4]), records, NOW, POLICY)  # 6 of 10 gone
    assert p.actions == ()
    assert len(p.held) == 6 and "max_destroy_fraction" in p.hold_reason
    p = plan(listing(*instances[:5]), records, NOW, POLICY)  # 5 of 10: at the threshold, held
    assert p.actions == () and len(p.held) == 5
    p = plan(listing(*instances[:6]), records, NOW, POLICY)  # 4 of 10: allowed
    assert [k for k, _ in kinds(p)] == [Kind.DESTROY] * 4


def test_entries_without_guid_hold_destroys():
    a, b = inst("A"), inst("B")
    p = plan(listing(a, anonymous=1), known(live(a), live(b)), NOW, POLICY)
    assert p.actions == () and [r.guid for r in p.held] == ["B"]
    assert "without an instance_guid" in p.hold_reason


def test_unusable_entries_are_neither_requested_nor_destroyed():
    a, b = inst("A"), inst("B")
    p = plan(listing(a, unusable=("B",)), known(live(a), live(b)), NOW, POLICY)
    assert p.held == ()
    assert p.counts["unusable"] == 1
    # the customer is told why, and that is all (issue 10, item 1)
    assert kinds(p) == [(Kind.PUBLISH, "B")]
    assert p.actions[0].gate.error == "The CDN could not accept this entry: state: missing from the listing"


def test_an_instance_the_domain_step_did_not_judge_is_never_requested():
    """Issue 10, 4: only what cdnreq validated reaches the technical CDN.
    With gates given, a listed instance without one gets no action (and no
    record), instead of being forwarded as listed."""
    a, b = inst("A"), inst("B")
    from cdnreq.decide.gate import Gate as _Gate
    p = plan(listing(a, b), {}, NOW, POLICY, gates={"A": _Gate.accept(a)})
    assert [(x.kind, x.guid) for x in p.actions] == [(Kind.REQUEST, "A")]
    assert p.counts["ungated"] == 1 and [r.guid for r in p.updates] == ["A"]


def test_an_unusable_entry_is_told_once_and_nothing_else():
    """Issue 10, item 1: a new guid gets a record (what it was told is kept), one publication."""
    from cdnreq.decide.transitions import compose, published

    a = inst("A")
    reason = {"B": "parameters: not valid UTF-8 at byte 3"}
    p = plan(listing(a, unusable=reason), {}, NOW, POLICY)
    assert kinds(p) == [(Kind.REQUEST, "A"), (Kind.PUBLISH, "B")]
    told = p.actions[1]
    assert told.record.phase is Phase.NEW and told.record in p.updates and told.instance is None
    assert told.gate.extras["request-error-list"] == '["parameters: not valid UTF-8 at byte 3"]'
    assert p.counts["added"] == 1 and p.counts["unusable"] == 1
    # once published, the next tick has nothing to do for it, and never destroys it
    b = published(told.record, compose(None, told.gate, False), told.gate.error, NOW)
    again = plan(listing(a, unusable=reason), known(live(a), b), NOW + 60, POLICY)
    assert kinds(again) == [] and again.held == ()


def test_duplicates_are_counted_once():
    a = inst("A")
    p = plan(listing(a, a), {}, NOW, POLICY)
    assert kinds(p) == [(Kind.REQUEST, "A")] and p.counts["duplicate"] == 1


def test_held_records_are_marked_once():
    a = inst("A")
    p = plan(listing(), known(live(a)), NOW, POLICY)
    (marked,) = held_records(p, NOW)
    assert marked.phase is Phase.REMOVING and marked.last_error.startswith("removal held:")
    p2 = plan(listing(), known(marked), NOW + 60, POLICY)
    assert list(held_records(p2, NOW + 60)) == []


def test_held_instance_that_comes_back_is_restored_without_a_call():
    a = inst("A")
    removing = replace(live(a), phase=Phase.REMOVING, last_error="removal held: x")
    p = plan(listing(a), known(removing), NOW, POLICY)
    assert p.actions == ()
    (restored,) = p.updates
    assert restored.phase is Phase.LIVE and restored.last_error is None


def test_held_instance_that_comes_back_changed_is_updated():
    a = inst("A")
    removing = replace(live(a), phase=Phase.REMOVING)
    p = plan(listing(inst("A", url="https://new.example")), known(removing), NOW, POLICY)
    assert kinds(p) == [(Kind.UPDATE, "A")]


def test_pending_answer_is_polled_not_requested():
    a = inst("A")
    waiting = live(a, phase=Phase.REQUESTED, connection={}, published=shown_digest({"message": "..."}))
    p = plan(listing(a), known(waiting), NOW, POLICY)
    assert kinds(p) == [(Kind.POLL, "A")]


def test_a_request_is_read_back_once_before_it_counts_as_live():
    a = inst("A")
    unverified = live(a, phase=Phase.REQUESTED, published=shown_digest({"domain": "x.cdn"}))
    p = plan(listing(a), known(unverified), NOW, POLICY)
    assert kinds(p) == [(Kind.POLL, "A")]


def test_live_answer_not_relayed_is_published_without_a_call_first():
    a = inst("A")
    unrelayed = live(a, published=shown_digest({"message": "..."}))
    p = plan(listing(a), known(unrelayed), NOW, POLICY)
    assert kinds(p) == [(Kind.PUBLISH, "A")]


def test_reserved_but_never_requested_is_requested():
    a = inst("A")
    reserved = new_record(InstanceGuid("A"), "cdnreq-", NOW - 5)
    p = plan(listing(a), known(reserved), NOW, POLICY)
    assert kinds(p) == [(Kind.REQUEST, "A")] and p.updates == ()


def test_stored_title_is_kept_when_the_prefix_changes():
    a = inst("A")
    record = replace(live(a), spec_hash="old")
    p = plan(listing(a), known(record), NOW, replace(POLICY, request_prefix="other-"))
    assert p.actions[0].record.title == "cdnreq-A"


def test_backoff_defers_retries_until_due():
    a = inst("A")
    failing = replace(new_record(InstanceGuid("A"), "cdnreq-", NOW), failures=2, retry_at=NOW + 30)
    p = plan(listing(a), known(failing), NOW, POLICY)
    assert p.actions == () and p.counts["backoff"] == 1
    p = plan(listing(a), known(failing), NOW + 31, POLICY)
    assert kinds(p) == [(Kind.REQUEST, "A")]


def test_backoff_also_defers_destroys():
    a, b, c = inst("A"), inst("B"), inst("C")
    failing = replace(live(c), phase=Phase.REMOVING, failures=1, retry_at=NOW + 10)
    p = plan(listing(a, b), known(live(a), live(b), failing), NOW, POLICY)
    assert p.actions == () and p.counts["backoff"] == 1


def test_one_failure_does_not_hide_the_others():
    a, b = inst("A"), inst("B")
    failing = replace(new_record(InstanceGuid("A"), "cdnreq-", NOW), failures=1, retry_at=NOW + 30)
    p = plan(listing(a, b), known(failing), NOW, POLICY)
    assert kinds(p) == [(Kind.REQUEST, "B")]


def test_unknown_state_in_listing_is_not_possible_to_build():
    with pytest.raises(ValueError):
        SharedInstance.of("A", {}, state="exploded")


def test_requested_state_enum_round_trip():
    assert RequestedState("stopped") is RequestedState.STOPPED


# --- gates, retention and ownership ------------------------------------------------

from cdnreq.decide.gate import Gate, Status  # noqa: E402

RETAIN = replace(POLICY, retention_s=1000.0)


class Owners:
    def __init__(self, **hosts):
        self.hosts = hosts  # host -> guid

    def owns(self, guid, host):
        return self.hosts.get(host) == guid

    def hosts_of(self, guid):
        return {h for h, g in self.hosts.items() if g == guid}


def ok_gate(instance, hosts=(), extras=None):
    return Gate(Status.OK, instance.parameters, instance.param_hash, tuple(hosts), extras or {})


def test_pending_gate_publishes_instructions_and_requests_nothing():
    a = inst("A")
    gate = Gate(Status.PENDING, hosts=("a.example.com",), extras={"message": "prove it"})
    p = plan(listing(a), {}, NOW, POLICY, gates={"A": gate})
    assert kinds(p) == [(Kind.PUBLISH, "A")] and p.actions[0].gate is gate
    assert [r.guid for r in p.updates] == ["A"]


def test_pending_gate_already_published_is_quiet():
    a = inst("A")
    gate = Gate(Status.PENDING, extras={"message": "prove it"})
    record = replace(new_record(InstanceGuid("A"), "cdnreq-", NOW), published=shown_digest({"message": "prove it"}))
    p = plan(listing(a), known(record), NOW, POLICY, gates={"A": gate})
    assert p.actions == () and p.counts["unchanged"] == 1


def test_invalid_change_keeps_the_live_entry_and_shows_the_error():
    a = inst("A")
    gate = Gate(Status.INVALID, extras={"request-error-list": '["bad"]'}, error="bad")
    p = plan(listing(inst("A", url="broken")), known(live(a)), NOW, POLICY, gates={"A": gate})
    assert kinds(p) == [(Kind.PUBLISH, "A")]  # no UPDATE, no DESTROY


def test_ok_gate_forwards_normalised_parameters():
    a = inst("A", custom_domain="Shop.Example.com.")
    forward = {"custom_domain": "shop.example.com"}
    gate = Gate(Status.OK, forward, "fwd-hash", ("shop.example.com",))
    p = plan(listing(a), {}, NOW, POLICY, gates={"A": gate})
    assert kinds(p) == [(Kind.REQUEST, "A")] and p.actions[0].gate.forward == forward
    record = replace(live(a), param_hash="fwd-hash", served=("shop.example.com",))
    owners = Owners(**{"shop.example.com": "A"})
    assert plan(listing(a), known(record), NOW, POLICY, gates={"A": gate}, ownership=owners).actions == ()


def test_served_host_no_longer_owned_destroys_the_entry_but_keeps_the_instance():
    a = inst("A")
    record = replace(live(a), served=("shop.example.com",))
    pending = Gate(Status.PENDING, hosts=("a.example.com",), extras={"message": "prove it"})
    p = plan(listing(a), known(record), NOW, POLICY, gates={"A": pending}, ownership=Owners())
    assert kinds(p) == [(Kind.DESTROY, "A")] and p.actions[0].forget is False


def test_served_host_no_longer_named_by_an_ok_gate_is_read_back_not_destroyed():
    """The gate is OK: A owns every host it names, so the host it lost is one
    it no longer names, and its last request drops it. Its entry is read
    back (it holds the request: the host is served no more; it does not:
    the request is sent again), never destroyed: the request may have been
    applied, and its site is live."""
    a = inst("A")
    record = replace(live(a), served=("shop.example.com",))
    p = plan(listing(a), known(record), NOW, POLICY, gates={"A": ok_gate(a)}, ownership=Owners())
    assert kinds(p) == [(Kind.POLL, "A")]
    moved = replace(record, param_hash="old")  # its update not sent yet, or failed: sent
    p = plan(listing(a), known(moved), NOW, POLICY, gates={"A": ok_gate(a)}, ownership=Owners())
    assert kinds(p) == [(Kind.UPDATE, "A")]


def test_an_update_held_behind_another_entry_destroys_an_entry_serving_a_lost_host():
    """A and B swap hosts: each update would wait for the other's entry for
    ever; the entry serving a host its instance lost is destroyed instead."""
    a, b = inst("A"), inst("B")
    x, y = "x.example.com", "y.example.com"
    records = known(replace(live(a), param_hash="old", served=(x,)), replace(live(b), param_hash="old", served=(y,)))
    gates = {"A": ok_gate(a, (y,)), "B": ok_gate(b, (x,))}
    p = plan(listing(a, b), records, NOW, POLICY, gates=gates, ownership=Owners(**{x: "B", y: "A"}))
    assert kinds(p) == [(Kind.DESTROY, "A"), (Kind.DESTROY, "B")] and not any(a.forget for a in p.actions)


def test_gone_instance_is_retained_not_destroyed():
    a, b, c = inst("A"), inst("B"), inst("C")
    p = plan(listing(a, b), known(live(a), live(b), live(c)), NOW, RETAIN)
    assert p.actions == ()
    (kept,) = p.updates
    assert kept.guid == "C" and kept.phase is Phase.RETAINED and kept.gone_at == NOW


def test_retention_ends_with_a_destroy():
    a, b, c = inst("A"), inst("B"), inst("C")
    kept = replace(live(c), phase=Phase.RETAINED, gone_at=NOW - 999)
    records = known(live(a), live(b), kept)
    assert plan(listing(a, b), records, NOW, RETAIN).actions == ()
    p = plan(listing(a, b), records, NOW + 2, RETAIN)
    assert kinds(p) == [(Kind.DESTROY, "C")] and p.actions[0].forget


def test_gone_without_entry_or_hosts_is_destroyed_by_title_then_forgotten():
    """Issue 10, property 15: no entry known may still mean one exists (a
    restore, a lost store): one destroy by title, then forgotten."""
    a, c = inst("A"), inst("C")  # C keeps 1 of 3 gone under max_destroy_fraction
    never = new_record(InstanceGuid("B"), "cdnreq-", NOW)
    p = plan(listing(a, c), known(live(a), live(c), never), NOW, RETAIN, ownership=Owners())
    assert kinds(p) == [(Kind.DESTROY, "B")]  # never forgotten without a call: a Plan has no other way
    action = p.actions[0]
    assert action.forget and action.record.tech_guid is None and "destroyed by title" in action.reason


def test_pending_instance_that_leaves_keeps_nothing():
    """The reference's hole: request, remove, request again, and a never-proven
    domain counted as validated. A never-proven instance is forgotten."""
    a = inst("A")
    pending = replace(new_record(InstanceGuid("B"), "cdnreq-", NOW), published=shown_digest({"message": "prove"}))
    c = inst("C")  # keeps 1 of 3 gone under max_destroy_fraction
    p = plan(listing(a, c), known(live(a), live(c), pending), NOW, RETAIN, ownership=Owners(**{"a.example.com": "A"}))
    assert kinds(p) == [(Kind.DESTROY, "B")] and p.actions[0].forget  # by title, then forgotten


def test_customer_destroy_destroys_the_entry_and_keeps_the_hosts():
    a, b, c = inst("A"), inst("B"), inst("C")  # C keeps 1 of 3 gone under max_destroy_fraction
    p = plan(listing(a, c, inst("B", state="destroyed")), known(live(a), live(b), live(c)), NOW, RETAIN)
    assert kinds(p) == [(Kind.DESTROY, "B")]
    action = p.actions[0]
    assert action.forget is False and action.record.phase is Phase.RETAINED


def test_retained_instance_whose_host_was_taken_loses_its_entry():
    a, c = inst("A"), inst("C")
    kept = replace(live(c), phase=Phase.RETAINED, gone_at=NOW, served=("shop.example.com",))
    owners = Owners(**{"shop.example.com": "A"})
    p = plan(listing(a), known(live(a), kept), NOW + 1, RETAIN, ownership=owners)
    assert kinds(p) == [(Kind.DESTROY, "C")] and p.actions[0].forget is False


def test_retained_instance_back_in_time_is_restored():
    a = inst("A")
    kept = replace(live(a), phase=Phase.RETAINED, gone_at=NOW - 10)
    p = plan(listing(a), known(kept), NOW, RETAIN)
    assert p.actions == () and p.updates[0].phase is Phase.LIVE and p.updates[0].gone_at is None


def test_live_entries_are_read_back_now_and_then():
    a = inst("A")
    record = replace(live(a), updated_at=NOW - 1000)
    every = replace(POLICY, verify_interval_s=500.0)
    assert kinds(plan(listing(a), known(record), NOW, every)) == [(Kind.POLL, "A")]
    assert plan(listing(a), known(record), NOW, replace(POLICY, verify_interval_s=5000.0)).actions == ()
    assert plan(listing(a), known(record), NOW, POLICY).actions == ()  # 0: never


def test_read_backs_are_paced_after_a_long_stop():
    """Back from a stop longer than verify_interval_s, every live entry was
    due at once: one tick read back the whole fleet (100,000 entries, and as
    many customers' instances) while every customer's change waited behind
    it. At most read_backs_per_tick a tick; the others on the next ticks."""
    from cdnreq.decide.actions import IdleCache
    from cdnreq.decide.gate import Gate

    fleet = [inst(g) for g in "ABCDE"]
    gates = {i.guid: Gate.accept(i) for i in fleet}
    records = {i.guid: replace(live(i), updated_at=NOW - 10_000) for i in fleet}
    paced = replace(POLICY, verify_interval_s=500.0, read_backs_per_tick=2)
    read: list[str] = []
    idle = IdleCache()
    for tick in range(3):
        p = plan(listing(*fleet), known(*records.values()), NOW + tick, paced, gates=gates, idle=idle)
        due = len(fleet) - len(read)
        assert all(a.kind is Kind.POLL for a in p.actions) and len(p.actions) == min(2, due), kinds(p)
        assert p.counts.get("read_back_later", 0) == max(0, due - 2), p.counts
        for action in p.actions:  # read back: settled now
            read.append(action.guid)
            records[action.guid] = replace(records[action.guid], updated_at=NOW + tick)
        idle = p.idle
    assert sorted(read) == list("ABCDE")


# -- the idle cache: an idle tick skips what cannot have changed ---------------------------


def test_idle_cache_gives_the_same_answers_as_a_full_plan():
    from cdnreq.decide.actions import IdleCache
    from cdnreq.decide.gate import Gate

    a, b = inst("A"), inst("B")
    gates = {"A": Gate.accept(a), "B": Gate.accept(b)}
    records = known(live(a), live(b))
    empty = IdleCache()
    first = plan(listing(a, b), records, NOW, POLICY, gates=gates, idle=empty)
    assert first.actions == () and set(first.idle.entries) == {"A", "B"}
    assert empty.entries == {}  # returned, never written into
    again = plan(listing(a, b), records, NOW + 1, POLICY, gates=gates, idle=first.idle)
    assert again.actions == () and again.counts["unchanged"] == 2

    # the customer stopped A: same record, same gate, but another state
    stopped = SharedInstance.of("A", a.parameters, state="stopped")
    p = plan(listing(stopped, b), records, NOW + 2, POLICY, gates=gates, idle=again.idle)
    assert kinds(p) == [(Kind.UPDATE, "A")]

    # B's record changed (its answer was lost): a new record object is planned in full
    records = known(live(a), live(b, published=shown_digest({"other": "x"})))
    seen = plan(listing(a, b), known(live(a), live(b)), NOW, POLICY, gates=gates, idle=IdleCache())
    p = plan(listing(a, b), records, NOW + 1, POLICY, gates=gates, idle=seen.idle)
    assert kinds(p) == [(Kind.PUBLISH, "B")]

    # a new gate for A (its hosts changed): planned in full
    p = plan(listing(a, b), records, NOW + 2, POLICY, gates={**gates, "A": Gate.accept(inst("A", url="https://new.example"))}, idle=p.idle)
    assert (Kind.UPDATE, "A") in kinds(p)


def test_idle_cache_still_reads_back_when_due_and_forgets_on_policy_change():
    from cdnreq.decide.actions import IdleCache
    from cdnreq.decide.gate import Gate

    a = inst("A")
    gates = {"A": Gate.accept(a)}
    every = replace(POLICY, verify_interval_s=500.0)
    record = live(a, updated_at=NOW)
    first = plan(listing(a), known(record), NOW, every, gates=gates, idle=IdleCache())
    assert first.actions == ()
    later = plan(listing(a), known(record), NOW + 400, every, gates=gates, idle=first.idle)
    assert later.actions == ()
    due = plan(listing(a), known(record), NOW + 600, every, gates=gates, idle=later.idle)
    assert kinds(due) == [(Kind.POLL, "A")]
    # the technical CDN settings changed: the cache of the old policy is not used
    before = plan(listing(a), known(record), NOW, POLICY, gates=gates, idle=IdleCache())
    moved = plan(listing(a), known(record), NOW + 1, replace(POLICY, spec_hash="spec-2"), gates=gates, idle=before.idle)
    assert kinds(moved) == [(Kind.UPDATE, "A")]

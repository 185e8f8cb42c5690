"""One host, one owner (issue 10, properties 7, 8, 9, 10a, 15, 17): pure
rules of the planner, the records and the executor, and the domain step
against a real DevDns on loopback. No sleeps, a fake clock."""

from __future__ import annotations

from dataclasses import replace

from devtools.devdns import DevDns
from cdnreq.master import MasterUnavailable
from cdnreq.model import HostClaim, InstanceAnswer, InstanceGuid, Phase, RequestedState, SharedInstance
from cdnreq.decide import transitions
from cdnreq.reconcile.execute import execute
from cdnreq.decide.gate import Gate, Status
from cdnreq.decide.actions import IdleCache
from cdnreq.decide.plan import Kind, Policy, new_record, plan, plan_decided
from tests.test_domains import LABEL, NOW, PENDING_MAX_S, DAY, challenge, domains, dns, instance, record  # noqa: F401
from tests.test_execute import SETTINGS, FakeMaster
from tests.test_plan import RETAIN, POLICY, Owners, inst, known, listing, live, ok_gate
from tests.test_tick_stages import opened  # noqa: F401 (fixture)

G = InstanceGuid
SHOP = "shop.example.com"
ALREADY_USED = "already used by another CDN entry"


def kinds(p):
    return [(a.kind, a.guid) for a in p.actions]


async def run(actions, master):
    outcomes = []

    async def sink(outcome):
        outcomes.append(outcome)

    await execute(actions, master=master, settings=SETTINGS, concurrency=1, sink=sink, clock=lambda: NOW)
    return {o.action.guid: o for o in outcomes}


class Master(FakeMaster):
    """Reads back what was destroyed as destroyed; errors chosen per call."""

    def __init__(self, *, get_error=None, destroy_error=None, **kwargs):
        super().__init__(**kwargs)
        self.destroyed: set[str] = set()
        self.get_error, self.destroy_error = get_error, destroy_error

    async def request_instance(self, *, title, state, **kwargs):
        if state == "destroyed":
            self.calls.append(("destroy", title))
            if self.destroy_error is not None:
                raise self.destroy_error
            self.destroyed.add(f"tech-{title}")
            return InstanceAnswer(guid=f"tech-{title}", connection_parameters={}, state=state)
        return await super().request_instance(title=title, state=state, **kwargs)

    async def get_instance(self, instance_guid):
        self.calls.append(("get", instance_guid))
        if self.get_error is not None:
            raise self.get_error
        state = "destroyed" if instance_guid in self.destroyed else "started"
        return InstanceAnswer(guid=instance_guid, connection_parameters={"d": "x"}, state=state)


def slapproxy_absent(call="slapos.get.v0.software_instance"):
    return MasterUnavailable(call, "HTTP 500: Internal server error", status=500, title="Internal server error",
                             typed=True)


# -- 7: a loser never wins a host back on a cached gate ---------------------------------


async def test_retained_owner_that_lost_its_host_is_refused_on_return_unchanged(devdns: DevDns, dns) -> None:
    a, b = G("SOFTINST-A"), G("SOFTINST-B")
    d = domains(dns, hosts=[HostClaim(SHOP, a, "example.com", NOW - DAY, NOW - 60)],
                challenges={a: challenge(a, SHOP), b: challenge(b, SHOP)})
    served = replace(record(a, created_at=NOW - 9 * DAY), served=(SHOP,))
    known_ = {a: served, b: record(b)}
    out = await d.step([instance(a, SHOP)], known_, NOW, tick=1)
    assert out.gates[a].ok  # settled: its gate is reused while its parameters do not change
    devdns.set_txt(f"{LABEL}.{SHOP}", d.challenges[b].token)
    for n in (2, 3):  # A retained for fewer than confirm_ticks (3) ticks: still A's
        out = await d.step([instance(b, SHOP)], known_, NOW + n * 60, tick=n)
        assert out.gates[b].status is Status.INVALID and d.index.owns(a, SHOP)
    out = await d.step([instance(b, SHOP)], known_, NOW + 4 * 60, tick=4)  # B proves and takes it
    assert out.gates[b].ok and out.taken_from == {a}
    for n in range(5, 10):  # A comes back unchanged, tick after tick
        out = await d.step([instance(a, SHOP), instance(b, SHOP)], known_, NOW + n * 60, tick=n)
        assert out.gates[a].status is Status.INVALID and ALREADY_USED in (out.gates[a].error or "")
        assert out.gates[b].ok and d.index.owns(b, SHOP)


def test_idle_cache_does_not_keep_an_old_gate_of_a_loser() -> None:
    """The idle cache is keyed on gate identity: a loser's new gate is planned afresh."""
    a = inst("A")
    record_ = replace(live(a), served=(SHOP,))
    first = ok_gate(a, (SHOP,))
    idle = plan(listing(a), known(record_), NOW, POLICY, gates={"A": first}, ownership=Owners(**{SHOP: "A"}), idle=IdleCache())
    assert idle.actions == ()
    refused = Gate(Status.INVALID, hosts=(SHOP,), error=f"custom_domain: {ALREADY_USED}", extras={"message": ALREADY_USED})
    p = plan(listing(a), known(record_), NOW, POLICY, gates={"A": refused}, ownership=Owners(**{SHOP: "B"}), idle=idle.idle)
    assert kinds(p) == [(Kind.DESTROY, "A")] and not p.actions[0].forget


# -- 8: the new owner waits until the old entry reads back gone -------------------------


async def test_request_waits_while_another_entry_serves_the_host_and_says_why() -> None:
    old, new = inst("OLD"), inst("NEW")
    serving = replace(live(old), phase=Phase.RETAINED, served=(SHOP,), gone_at=NOW - 10)
    gates = {"NEW": ok_gate(new, (SHOP,))}
    p = plan(listing(new), known(serving), NOW, RETAIN, gates=gates, ownership=Owners(**{SHOP: "NEW"}), idle=IdleCache())
    assert (Kind.REQUEST, "NEW") not in kinds(p)
    (publish,) = [a for a in p.actions if a.guid == "NEW"]
    assert publish.kind is Kind.PUBLISH and publish.gate.status is Status.PENDING
    assert publish.gate.extras["message"].startswith(f"Waiting for the previous CDN entry of {SHOP} to be removed")
    assert (Kind.DESTROY, "OLD") in kinds(p) and p.counts["waiting_previous"] == 1
    out = (await run([publish], Master()))["NEW"]
    assert out.record.last_error == publish.gate.extras["message"]  # what `cdnreq status` says
    # destroy sent, not yet read back: still serving, and the idle cache did not keep NEW
    sent = transitions.destroy_sent(serving, NOW, keep=True)
    waiting = replace(p.updates[0], published=transitions.shown_digest(transitions.compose(None, publish.gate, False)))
    p = plan(listing(new), known(sent, waiting), NOW + 1, RETAIN, gates=gates, ownership=Owners(**{SHOP: "NEW"}), idle=p.idle)
    assert kinds(p) == [(Kind.POLL, "OLD")] and p.actions[0].forget is False
    # read back gone: NEW is requested
    cleared = transitions.confirmed(sent, NOW + 2)
    assert cleared is not None and cleared.served is None and cleared.phase is Phase.RETAINED
    p = plan(listing(new), known(cleared, waiting), NOW + 2, RETAIN, gates=gates, ownership=Owners(**{SHOP: "NEW"}), idle=p.idle)
    assert kinds(p) == [(Kind.REQUEST, "NEW")]


def test_plan_decided_holds_the_winner_and_destroys_the_loser() -> None:
    old, new = inst("OLD"), inst("NEW")
    serving = replace(live(old), phase=Phase.RETAINED, served=(SHOP,), gone_at=NOW - 10)
    p = plan_decided([new], known(serving), NOW, RETAIN, gates={"NEW": ok_gate(new, (SHOP,))},
                     ownership=Owners(**{SHOP: "NEW"}), losers=[serving])
    assert set(kinds(p)) == {(Kind.PUBLISH, "NEW"), (Kind.DESTROY, "OLD")}


def test_served_hosts_overlap_wildcards_both_ways_and_ignore_the_owner_itself() -> None:
    from cdnreq.decide.served import ServedHosts

    a = replace(live(inst("A")), served=("a.shop.example.com",))
    w = replace(live(inst("W")), served=("*.blog.example.com",))
    gone = replace(live(inst("R")), served=("r.example.com",), param_hash=None, last_action="destroy",
                   phase=Phase.REMOVING)  # destroy sent, not read back: still counts
    served = ServedHosts(known(a, w, gone))
    assert served.others(("*.shop.example.com",), "X") == ("*.shop.example.com",)
    assert served.others(("x.blog.example.com", "blog.example.com"), "X") == ("x.blog.example.com", "blog.example.com")
    assert served.others(("a.shop.example.com",), "A") == ()
    assert served.others(("r.example.com",), "X") == ("r.example.com",)
    assert served.others(("b.shop.example.com", "example.com"), "X") == ()


async def test_a_destroy_keeps_the_entry_until_it_reads_back_gone() -> None:
    old = replace(live(inst("OLD")), phase=Phase.RETAINED, served=(SHOP,), gone_at=NOW - 10)
    master = Master()
    p = plan_decided([], known(old), NOW, RETAIN, gates={}, ownership=Owners(), losers=[old])
    out = (await run(p.actions, master))["OLD"]
    sent = out.record
    assert sent.tech_guid == old.tech_guid and sent.served == (SHOP,) and sent.phase is Phase.RETAINED
    assert sent.param_hash is None and transitions.destroy_pending(sent)
    # a destroy that failed is sent again, never taken as done
    failing = Master(destroy_error=MasterUnavailable("post", "HTTP 502: bad gateway", status=502))
    out = (await run(p.actions, failing))["OLD"]
    assert out.record.served == (SHOP,) and out.record.failures == 1 and out.record.tech_guid == old.tech_guid


# -- 9: a host its owner no longer names is contestable -------------------------------------


async def test_a_host_its_owner_no_longer_names_can_be_taken_by_proof(devdns: DevDns, dns) -> None:
    a, b = G("SOFTINST-A"), G("SOFTINST-B")
    d = domains(dns, hosts=[HostClaim(SHOP, a, "example.com", NOW - DAY, NOW - 60)],
                challenges={b: challenge(b, SHOP)})
    known_ = {a: replace(record(a, created_at=NOW - 9 * DAY), served=(SHOP,)), b: record(b)}
    moved = instance(a, "new.example.org")  # A moved to a new domain, not proven yet
    devdns.set_txt(f"{LABEL}.{SHOP}", d.challenges[b].token)
    for tick in (1, 2):  # not named for fewer than confirm_ticks (3) ticks: still A's
        out = await d.step([moved, instance(b, SHOP)], known_, NOW + tick, tick=tick)
        assert out.gates[b].status is Status.INVALID and d.index.owns(a, SHOP)
    out = await d.step([moved, instance(b, SHOP)], known_, NOW + 3, tick=3)
    assert out.gates[a].status is Status.PENDING
    assert out.gates[b].ok and out.host_upserts[SHOP].guid == b and out.taken_from == {a}
    # A's entry still serves the host: the planner destroys it before B is requested
    p = plan(listing(SharedInstance.of(a, moved.parameters), SharedInstance.of(b, {})),
             {a: replace(live(inst(a)), served=(SHOP,)), b: new_record(b, "cdnreq-", NOW)}, NOW, POLICY,
             gates={a: out.gates[a], b: out.gates[b]}, ownership=d.index)
    assert set(kinds(p)) == {(Kind.PUBLISH, b), (Kind.DESTROY, a)}


async def test_a_host_its_owner_still_names_stays_refused(devdns: DevDns, dns) -> None:
    a, b = G("SOFTINST-A"), G("SOFTINST-B")
    d = domains(dns, hosts=[HostClaim(SHOP, a, "example.com", NOW - DAY, NOW - 60)],
                challenges={b: challenge(b, SHOP)})
    devdns.set_txt(f"{LABEL}.{SHOP}", d.challenges[b].token)
    known_ = {a: replace(record(a, created_at=NOW - 9 * DAY), served=(SHOP,)), b: record(b)}
    out = await d.step([instance(a, "new.example.org", SHOP), instance(b, SHOP)], known_, NOW, tick=1)
    assert out.gates[b].status is Status.INVALID and d.index.owns(a, SHOP)


# -- 10a: leaving for real means proving again ----------------------------------------------


async def test_an_instance_back_while_its_destroy_awaits_confirmation_proves_again(devdns: DevDns, dns) -> None:
    a = G("SOFTINST-A")
    d = domains(dns, hosts=[HostClaim(SHOP, a, "example.com", NOW - DAY, NOW - 60)], challenges={a: challenge(a, SHOP)})
    old_token = d.challenges[a].token
    devdns.set_txt(f"{LABEL}.{SHOP}", old_token)
    out = await d.step([instance(a, SHOP)], {a: record(a)}, NOW, tick=1)
    assert out.gates[a].ok  # settled
    left = d.leave([a], NOW + 1, 2)  # retention over: the destroy is decided
    assert left.host_deletes == {SHOP} and left.challenge_deletes == {a}
    out = await d.step([instance(a, SHOP)], {a: record(a)}, NOW + 2, tick=3)
    assert out.gates[a].status is Status.PENDING
    assert out.challenges and out.challenges[0].token != old_token


def test_back_while_destroy_awaits_confirmation_is_confirmed_not_resumed() -> None:
    a = inst("A")
    removing = transitions.destroy_sent(replace(live(a), served=(SHOP,)), NOW - 5)
    pending_gate = Gate(Status.PENDING, hosts=(SHOP,), extras={"message": "prove it"}, pending=(SHOP,))
    p = plan(listing(a), known(removing), NOW, RETAIN, gates={"A": pending_gate}, ownership=Owners())
    assert kinds(p) == [(Kind.POLL, "A")] and p.actions[0].forget is False and p.actions[0].instance is None
    (back,) = p.updates
    assert back.phase is Phase.NEW and back.tech_guid == removing.tech_guid
    after = transitions.confirmed(back, NOW + 1)
    assert after is not None and after.phase is Phase.NEW and after.tech_guid is None and after.served is None


def test_a_held_removal_that_returns_resumes_as_it_was() -> None:
    a = inst("A")
    held = replace(live(a), phase=Phase.REMOVING, last_action="hold", last_error="removal held: x")
    p = plan(listing(a), known(held), NOW, POLICY, gates={"A": ok_gate(a)}, ownership=Owners())
    assert p.actions == () and p.updates[0].phase is Phase.LIVE


# -- 15: nothing without history is forgotten while it may serve -----------------------------


async def test_a_departure_without_entry_is_destroyed_by_title_then_forgotten() -> None:
    never = new_record(G("B"), "cdnreq-", NOW)
    a, c = inst("A"), inst("C")  # C keeps 1 of 3 gone under max_destroy_fraction
    p = plan(listing(a, c), known(live(a), live(c), never), NOW, POLICY)
    assert kinds(p) == [(Kind.DESTROY, "B")]
    master = Master()
    out = (await run(p.actions, master))["B"]
    # acknowledged: read back by the guid the answer names (a master may drop a destroy), then forgotten
    assert out.ok and out.record is not None and out.record.tech_guid == "tech-cdnreq-B"
    confirm = plan(listing(a, c), known(live(a), live(c), out.record), NOW, POLICY)
    assert kinds(confirm) == [(Kind.POLL, "B")]
    out = (await run(confirm.actions, master))["B"]
    assert out.record is None and out.ok
    absent = Master(destroy_error=slapproxy_absent("slapos.post.v0.software_instance"))
    out = (await run(p.actions, absent))["B"]
    assert out.record is None and out.ok  # slapproxy: no such title
    failing = Master(destroy_error=MasterUnavailable("post", "HTTP 503: busy", status=503, title="busy"))
    out = (await run(p.actions, failing))["B"]
    assert out.record is not None and out.record.failures == 1 and not out.ok


# -- 17: a destroy counts once read back destroyed or absent ----------------------------------


def test_only_slapproxys_answer_for_a_destroyed_instance_counts_as_absent() -> None:
    from cdnreq.reconcile.execute import absent_answer

    assert absent_answer(slapproxy_absent())
    for status, title in ((500, "injected HTTP 500"), (500, None), (502, "Internal server error"), (503, "busy")):
        assert not absent_answer(MasterUnavailable("get", f"HTTP {status}", status=status, title=title, typed=True))
    # the same words as the start of a page (a gateway's), not slapproxy's JSON error document
    assert not absent_answer(MasterUnavailable("get", "HTTP 500", status=500, title="Internal server error"))


async def test_confirm_retries_on_other_5xx_and_forgets_on_the_absent_answer() -> None:
    removing = transitions.destroy_sent(replace(live(inst("A")), served=(SHOP,)), NOW - 5)
    p = plan(listing(inst("B")), known(removing, live(inst("B"))), NOW, POLICY)
    assert kinds(p) == [(Kind.POLL, "A")] and p.actions[0].forget
    other = Master(get_error=MasterUnavailable("get", "HTTP 500: injected", status=500, title="injected HTTP 500"))
    out = (await run(p.actions, other))["A"]
    assert out.record is not None and out.record.served == (SHOP,) and out.record.failures == 1
    # still awaiting its read-back: read again after the backoff, never retained or forgotten anew
    again = plan(listing(inst("B")), known(out.record, live(inst("B"))), NOW + 3600, RETAIN)
    assert kinds(again) == [(Kind.POLL, "A")] and again.updates == ()
    out = (await run(p.actions, Master(get_error=slapproxy_absent())))["A"]
    assert out.record is None and out.ok
    still = Master()  # read back as started: destroyed again
    out = (await run(p.actions, still))["A"]
    assert ("destroy", removing.title) in still.calls and out.record is not None


# -- 10a through a tick: the shell drops what a leaver held when its destroy is decided ------


async def test_retention_over_drops_hosts_and_challenge_and_a_return_starts_afresh(tmp_path, opened) -> None:
    import time

    from tests.test_tick_stages import Dns, config, customer, live as tick_live, reconciler, title

    dns = Dns({})
    back = customer("OLD", "www.r.example")
    gone = tick_live("OLD", phase=Phase.RETAINED, served=("www.r.example",), gone_at=time.time() - 7200)
    owned = HostClaim("www.r.example", G("OLD"), "r.example", 1.0, time.time())
    r, master = await reconciler(opened, config(tmp_path, retention_s=3600), [customer("B")], dns,
                                 records=[gone, tick_live("B")], hosts=[owned])
    await r.store.commit(challenge_upserts=[challenge(G("OLD"), "www.r.example")])
    await r.load()
    assert (await r.tick()).ok
    assert master.titles("destroyed") == [title("OLD")]
    assert "www.r.example" not in await r.store.load_hosts()
    assert G("OLD") not in await r.store.load_challenges()
    master.instances = (back, customer("B"))  # back before its destroy is read back
    dns.txt[f"{LABEL}.www.r.example"] = "cdnreq-the-old-token-is-gone"
    assert (await r.tick()).ok
    assert title("OLD") not in master.titles()
    record_ = r.known[G("OLD")]
    assert record_.phase is Phase.NEW and record_.tech_guid is None and record_.served is None
    assert (await r.store.load_challenges())[G("OLD")].created_at > time.time() - 600  # a new challenge
    assert "www.r.example" not in await r.store.load_hosts()

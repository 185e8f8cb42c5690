"""Many ticks, customers racing for hosts, a master that lies or fails once,
restarts, time passing and the clock set back: a hypothesis state machine
drives the real Reconciler (tests/stateful_world.py: its store, cdnreq's
resolver asking a DNS server on loopback, a master double in memory).

After every tick:
- every host an entry serves was proven (its token in DNS) by the instance
  the entry was requested for, and no two entries serve overlapping hosts;
  nor did they for a moment within the tick: the master double notes each
  request applied while another entry serves one of its hosts;
- a live entry is never destroyed while its instance is listed, not
  destroyed, with valid parameters and every host it names served;
- what a customer was shown of the CDN's answer is still shown while its
  entry is not destroyed;
- the tick is ok unless its listing failed;
- the records and host claims in memory are what the store would reload.
At `restart_is_invisible`, a daemon started on a copy of the store (and of
the master) makes the same calls at its next tick as the one that runs on;
at `converge`, once the master and the DNS behave and customers do as told,
every listed customer with valid parameters is served as it asks, or one of
its hosts is held by another instance.

CDNREQ_STATEFUL_EXAMPLES=300 runs that many random examples (a hunt; the
default is a fixed, derandomized set that takes about half a minute).
The defects it found are reduced to plain tests in
tests/test_attack_stateful_found.py.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from cdnreq.model import RequestedState, SharedInstance
from cdnreq.validate.hosts import overlaps
from tests.stateful_world import PREFIX, World

TOKEN = re.compile(r"cdnreq-[a-z2-7]{32}")
ACTIVE = ("A", "B", "C")
FILL = tuple(SharedInstance.of(f"F{i}", {"url": f"https://f{i}.backend.example"}) for i in range(6))
DOMAINS = ("shop.example", "www.shop.example", "blog.other.example")
ALIASES = {"shop.example": ("www.shop.example", "*.shop.example"), "www.shop.example": ("shop.example",),
           "blog.other.example": ("www.other.example",)}
HOSTILE = (
    {"url": 12},
    {"url": "https://x.example", "server-alias": ["not", "a", "string"]},
    {"url": "https://x.example", "custom_domain": "exa mple.com"},
    {"url": "https://x.example", "custom_domain": "shop.example", "server-alias": "www.bank.example"},
)


def event(text: str) -> None:
    """Counted by --hypothesis-show-statistics; nothing when replayed by hand."""
    try:
        hypothesis_event(text)
    except Exception:
        pass


@st.composite
def valid_parameters(draw: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    params: dict[str, Any] = {"url": draw(st.sampled_from(["https://one.backend.example", "https://two.backend.example"]))}
    hosts: tuple[str, ...] = ()
    domain = draw(st.sampled_from((None, *DOMAINS)))
    if domain is not None:
        params["custom_domain"] = domain
        hosts = (domain,)
        alias = draw(st.sampled_from((None, *ALIASES[domain])))
        if alias is not None:
            params["server-alias"] = alias
            hosts += (alias,)
    if draw(st.booleans()):
        params["enable_cache"] = "true"
    return params, hosts


FAULTS = (
    "list-fail", "list-empty", "list-missing", "list-unusable", "list-anonymous",
    "request-fail", "request-applied-then-fail", "request-dropped", "request-echoed", "request-rejected",
    "request-deploying",
    "destroy-fail", "destroy-applied-then-fail", "destroy-dropped",
    "get-fail", "read-back-empty", "read-back-lost", "read-back-other", "read-back-stale", "publish-fail",
)


class Customers(RuleBasedStateMachine):
    SECTIONS: dict[str, dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.w: World | None = None
        self.instances: dict[str, SharedInstance] = {}  # what each active customer has on the master
        self.valid: dict[str, bool] = {}
        self.hosts: dict[str, tuple[str, ...]] = {}
        self.placed: set[tuple[str, str]] = set()  # (guid, name) its token was put at (ever)
        self.unproved: set[str] = set()  # took a token away: may lose its hosts when re-checks release them
        self.named: dict[str, set[str]] = {}  # every host each customer ever named
        self.log: list[str] = []
        self.clock_set_back = False

    @initialize()
    def start(self) -> None:
        self.w = World(Path(self.dir.name), **self.SECTIONS)

    def teardown(self) -> None:
        if self.w is not None:
            self.w.close()
        self.dir.cleanup()

    # -- customers ---------------------------------------------------------------------

    @rule(guid=st.sampled_from(ACTIVE), parameters=valid_parameters(), stopped=st.booleans())
    def order(self, guid: str, parameters: tuple[dict[str, Any], tuple[str, ...]], stopped: bool) -> None:
        params, hosts = parameters
        state = RequestedState.STOPPED if stopped else RequestedState.STARTED
        self.instances[guid] = SharedInstance.of(guid, params, state=state)
        self.valid[guid], self.hosts[guid] = True, hosts
        self.named.setdefault(guid, set()).update(hosts)

    @rule(guid=st.sampled_from(ACTIVE), params=st.sampled_from(HOSTILE))
    def garbage(self, guid: str, params: dict[str, Any]) -> None:
        self.instances[guid] = SharedInstance.of(guid, params)
        self.valid[guid], self.hosts[guid] = False, ()

    @rule(guid=st.sampled_from(ACTIVE))
    def destroy(self, guid: str) -> None:
        if (old := self.instances.get(guid)) is not None:
            self.instances[guid] = SharedInstance.of(guid, old.parameters, state=RequestedState.DESTROYED)

    @rule(guid=st.sampled_from(ACTIVE))
    def leave(self, guid: str) -> None:
        self.instances.pop(guid, None)

    @rule(guid=st.sampled_from(ACTIVE), which=st.sets(st.integers(0, 1), min_size=1))
    def prove(self, guid: str, which: set[int]) -> None:
        """The customer puts its token at some of the hosts it names (draws
        never depend on the world's state: tokens are random)."""
        assert self.w is not None
        hosts = self.hosts.get(guid, ()) if guid in self.instances else ()
        challenge = self.w.token(guid) if hosts else None
        if challenge is None:
            return
        for host in sorted({hosts[i % len(hosts)] for i in which}):
            self.w.publish_txt(host, challenge[1])
            self.placed.add((guid, host.removeprefix("*.")))
            self.log.append(f"prove {guid} {host}")

    @rule(guid=st.sampled_from(ACTIVE), name=st.sampled_from(sorted({d.removeprefix("*.") for d in (*DOMAINS, *(a for v in ALIASES.values() for a in v))})))
    def unprove(self, guid: str, name: str) -> None:
        """The customer removes its token at one name (its current challenge's)."""
        assert self.w is not None
        challenge = self.w.token(guid)
        if challenge is not None and challenge[1] in self.w.txt.get(f"_slapos-challenge.{name}", ()):
            self.w.withdraw_txt(name, challenge[1])
            self.unproved.add(guid)
            self.log.append(f"unprove {guid} {name}")

    # -- the master and the DNS misbehave once --------------------------------------------

    @rule(fault=st.sampled_from(FAULTS), guid=st.sampled_from(ACTIVE))
    def fault(self, fault: str, guid: str) -> None:
        assert self.w is not None
        m = self.w.master
        call, _, how = fault.partition("-")
        if call == "list":
            if how == "fail":
                m.fail["list"] += 1
            else:
                m.listing_fault = (how, guid)
        elif call == "read":
            m.read_back_fault, m.read_back_target = how.removeprefix("back-"), PREFIX + guid
        elif how == "fail":
            m.fail[call] += 1
        elif how == "applied-then-fail":
            m.applied_then_fail[call] += 1
        elif how == "dropped":
            m.dropped[call] += 1
        elif how == "echoed":
            m.echoed[call] += 1
        elif how == "rejected":
            m.reject[call] += 1
        elif how == "deploying":
            m.deploying[call] += 1

    @rule(guid=st.sampled_from(ACTIVE + ("F0",)), how=st.sampled_from(["forgets-publication", "redeploys", "loses-entry", "destroys-entry"]))
    def master_changes(self, guid: str, how: str) -> None:
        """Between ticks the master changes what it holds: a customer's
        publication dropped, the CDN's answer changed, an entry gone or
        destroyed behind cdnreq's back."""
        assert self.w is not None
        m = self.w.master
        entry = m.entries.get(PREFIX + guid)
        if how == "forgets-publication":
            m.published.pop(guid, None)
        elif entry is not None and entry.state != "destroyed":
            if how == "redeploys":
                entry.connection = {**entry.connection, "rev": str(int(entry.connection.get("rev", "0")) + 1)}
            elif how == "loses-entry":
                del m.entries[PREFIX + guid]
            else:
                entry.state, entry.connection = "destroyed", {}
        self.log.append(f"master {how} {guid}")

    @rule(host=st.sampled_from(DOMAINS), how=st.sampled_from(["servfail", "normal"]))
    def dns_behaves(self, host: str, how: str) -> None:
        assert self.w is not None
        self.w.dns.behave(f"_slapos-challenge.{host}", how)

    # -- the daemon --------------------------------------------------------------------

    @rule()
    def restart(self) -> None:
        assert self.w is not None
        self.w.restart()

    @rule()
    def restart_is_invisible(self) -> None:
        """The next tick of a daemon restarted now makes the calls the running one makes."""
        w = self.w
        assert w is not None
        w.master.listed = [*(self.instances[g] for g in sorted(self.instances)), *FILL]
        known = {c.token for c in w.run(w.r.store.load_challenges()).values()}  # type: ignore[union-attr]
        other = w.fork("fork")
        try:
            w.now += 60
            report = w.run(other.tick())
            w.now -= 60
            theirs = other.master.writes  # type: ignore[attr-defined]
        finally:
            w.drop(other)
        ours = self.tick_and_check()
        self.log.append(f"(restarted: {theirs})")
        assert ours.ok == report.ok, (ours.error, report.error)
        def calls(writes: list[Any]) -> list[str]:  # tokens issued this tick are drawn anew by each
            return sorted(TOKEN.sub(lambda m: m[0] if m[0] in known else "NEW-TOKEN", repr(c)) for c in writes)

        if self.clock_set_back:
            # not compared: a restarted daemon reads back entries written "in the future", a warm
            # one keeps its sleepers' read-back times, so it may publish or request again a tick
            # later (known, not fixed)
            return
        assert calls(w.master.writes) == calls(theirs), (w.master.writes, theirs)

    @rule()
    def converge(self) -> None:
        """The master and the DNS behave, customers do as told, time passes:
        every listed customer with valid parameters and hosts no one else
        ever named ends live with what it asks, and is shown the answer."""
        w = self.w
        assert w is not None
        m = w.master
        m.fail.clear(); m.applied_then_fail.clear(); m.dropped.clear(); m.reject.clear(); m.deploying.clear()
        m.listing_fault = m.read_back_fault = None
        for host in DOMAINS:
            w.dns.behave(f"_slapos-challenge.{host}", "normal")
        for _ in range(8):
            for guid in sorted(self.instances):
                self.prove(guid, {0, 1})
            w.now += 600
            self.tick_and_check()
        for guid, instance in sorted(self.instances.items()):
            if instance.state is RequestedState.DESTROYED or not self.valid[guid]:
                continue
            rivals = [h for other, hosts in self.named.items() if other != guid for h in hosts
                      for mine in self.hosts[guid] if overlaps(h, mine)]
            if rivals:
                claims = w.r.domains.index.by_host.values()  # type: ignore[union-attr]
                taken = [c for c in claims if c.guid != guid and any(overlaps(c.host, h) for h in self.hosts[guid])]
                entry = m.entries.get(PREFIX + guid)
                served = entry is not None and entry.state != "destroyed" and \
                    set(m.serving().get(PREFIX + guid, ())) == set(self.hosts[guid])
                assert taken or served, (
                    f"{guid} names {self.hosts[guid]}, not served nor held by another: {entry}; "
                    f"record {w.r.known.get(guid) if w.r.known else None}; claims {list(claims)}")  # type: ignore[union-attr]
                continue
            entry = m.entries.get(PREFIX + guid)
            record = w.r.known.get(guid) if w.r.known is not None else None  # type: ignore[union-attr]
            why = f"{guid}: {instance.parameters} {instance.state}; record {record}; sleeping {guid in w.r.sleepers.keys()}"  # type: ignore[union-attr]
            assert entry is not None and entry.state == instance.state.value, f"entry {entry}; {why}"
            assert entry.parameters.get("url") == instance.parameters["url"], f"entry {entry}; {why}"
            assert entry.parameters.get("custom_domain") == instance.parameters.get("custom_domain"), f"entry {entry}; {why}"
            shown = m.published.get(guid, {})
            assert all(shown.get(k) == v for k, v in entry.connection.items()) and shown.get("site"), f"shown {shown}; {why}"
        for fill in FILL:
            entry = m.entries.get(PREFIX + fill.guid)
            shown = m.published.get(fill.guid, {})
            assert entry is not None and entry.state == "started", (fill.guid, entry)
            assert all(shown.get(k) == v for k, v in entry.connection.items()), (fill.guid, entry, shown)
        event("converged")

    @rule(seconds=st.sampled_from([600, 3600, 4000, 8000]))
    def time_passes(self, seconds: int) -> None:
        assert self.w is not None
        self.w.now += seconds

    @rule(seconds=st.sampled_from([120, 3600]))
    def clock_steps_back(self, seconds: int) -> None:
        """The host's clock is set back (NTP, a restored VM)."""
        assert self.w is not None
        self.w.now -= seconds
        self.clock_set_back = True
        self.log.append(f"clock back {seconds}")

    @rule(comply=st.booleans(), ticks=st.integers(1, 3))
    def tick(self, comply: bool, ticks: int) -> None:
        """A few ticks; with `comply`, every listed customer puts its token
        at every host it names, as it was told, before each."""
        for _ in range(ticks):
            if comply:
                for guid in sorted(self.instances):
                    self.prove(guid, {0, 1})
            self.tick_and_check()

    def tick_and_check(self) -> Any:
        w = self.w
        assert w is not None
        m = w.master
        m.listed = [*(self.instances[g] for g in sorted(self.instances)), *FILL]
        before_serving = m.serving()
        before_shown = {g: dict(p) for g, p in m.published.items()}
        listing_fault, list_fails = m.listing_fault, m.fail["list"] > 0
        delivered = dict(self.instances)
        if listing_fault is not None and listing_fault[0] in ("missing", "unusable"):
            delivered.pop(listing_fault[1], None)
        if listing_fault is not None and listing_fault[0] == "empty":
            delivered = {}
        m.clashes = []
        report = w.tick()
        self.log.append(f"tick ok={report.ok} planned={report.planned} writes={m.writes}")
        assert not m.clashes, m.clashes
        if list_fails:
            assert not report.ok
            return report
        assert report.ok, report.error
        self.check_served()
        for title, hosts in w.master.serving().items():
            if hosts:
                event(f"serving {len(hosts)} hosts")
        if sum(1 for hosts in w.master.serving().values() if hosts) > 1:
            event("two customers served with hosts")
        for call, _, _ in m.writes:
            event(f"write {call}")
        for key in report.planned:
            event(f"planned {key}")
        self.check_destroys(before_serving, delivered, listing_fault)
        self.check_shown(before_shown)
        problems = w.store_matches_memory()
        assert not problems, problems
        return report

    def check_served(self) -> None:
        assert self.w is not None
        for title, hosts in self.w.master.serving().items():
            guid = title.removeprefix(PREFIX)
            for host in hosts:
                assert self.proven(guid, host), f"{title} serves {host}, never proven by {guid}"
        assert not self.w.overlapping(), self.w.overlapping()

    def proven(self, guid: str, host: str) -> bool:
        """Its token was put at the host's name or a parent's (down to the registrable domain)."""
        base = host.removeprefix("*.")
        return any(g == guid and (base == n or base.endswith("." + n)) for g, n in self.placed)

    def check_destroys(self, before: dict[str, tuple[str, ...]], delivered: dict[str, SharedInstance],
                       listing_fault: Any) -> None:
        """No destroy of a live entry whose instance is listed valid, not
        destroyed, serving every host it names; nor of one left out or
        unusable in this one listing."""
        assert self.w is not None
        for call, title, _ in self.w.master.writes:
            if call != "destroy" or title not in before:
                continue
            guid = title.removeprefix(PREFIX)
            instance = delivered.get(guid)
            if instance is not None:
                if instance.state is RequestedState.DESTROYED or not self.valid.get(guid) or guid in self.unproved:
                    continue
                assert set(before[title]) != set(self.hosts[guid]), (
                    f"{title} destroyed, listed {instance.parameters} {instance.state}, serving {before[title]}")
            elif listing_fault is not None and listing_fault[1] == guid and guid in self.instances \
                    and self.instances[guid].state is not RequestedState.DESTROYED:
                raise AssertionError(f"{title} destroyed when one listing {listing_fault[0]} it")

    def check_shown(self, before: dict[str, dict[str, Any]]) -> None:
        """A customer shown the CDN's answer keeps it while its entry is not destroyed."""
        assert self.w is not None
        m = self.w.master
        for guid, shown in before.items():
            title = PREFIX + guid
            entry = m.entries.get(title)
            if shown.get("site") != title or entry is None or entry.state == "destroyed":
                continue
            if guid not in self.instances or self.instances[guid].state is RequestedState.DESTROYED:
                continue  # a customer who destroyed its instance may be told anything
            now = m.published.get(guid, {})
            assert now.get("site") == title, f"{guid} was shown {shown}, now {now}"


TestCustomers = Customers.TestCase
class Releasing(Customers):
    """Hosts whose proof goes missing are released after a short grace; a
    short retention; one tick is enough to confirm."""

    SECTIONS = {"domain": {"release_on_recheck_failure": True, "grace_s": 1200, "recheck_interval_s": 600,
                           "retention_s": 900},
                "daemon": {"confirm_ticks": 1}}


TestReleasing = Releasing.TestCase
EXPLORE = int(os.environ.get("CDNREQ_STATEFUL_EXAMPLES", "0"))  # > 0: that many random examples, to hunt
TestCustomers.settings = TestReleasing.settings = settings(
    max_examples=EXPLORE or 30, stateful_step_count=60 if EXPLORE else 40, deadline=None, derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], report_multiple_bugs=False,
)

"""Attacks on a cluster of `cdnreq run` nodes sharing one PostgreSQL store:
nodes started at the same moment on an empty database, a leader paused in
the middle of a tick while another leads and hands over, the database
restarted under the nodes, and a database outage longer than the lease.

Each node reaches the master double (bench/double, served from a thread of
this process) through its own FaultProxy, whose log tells which node sent
what."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from faultproxy import LIST, REQUEST, FaultProxy, trickle
from hanodes import LEASE_S, Node, store_section, the_leader, until

from bench.double import Double
from cdnreq.decide.titles import technical_title
from test_faults_hostile import PREFIX, ThreadedDouble, write_config

pytestmark = [pytest.mark.postgres]

TICK_S = 0.5


def start_node(name: str, root: Path, master_url: str, pg_url: str, **sections: dict) -> Node:
    """A node reaching the master double through its own FaultProxy."""
    proxy = FaultProxy(master_url).start()
    daemon = {"tick_interval_s": TICK_S, "retry_base_s": 0.2, "retry_max_s": 1.0, "max_destroy_fraction": 0.9,
              **sections.pop("daemon", {})}
    (root / name).mkdir(parents=True, exist_ok=True)
    config = write_config(
        root / name / "cdnreq.toml", {"url": proxy.url, "timeout_s": 60.0}, root / name / "cdnreq.db",
        daemon=daemon, store=store_section(pg_url, name), domain={"retention_s": 0}, **sections,
    )
    return Node(name, proxy, config)


@pytest.fixture
def double():
    master = Double(publish_after="immediately")
    with ThreadedDouble(master) as served:
        yield master, served


@pytest.fixture
def cluster(double, pg_url: str, tmp_path: Path):
    _, served = double
    nodes: list[Node] = []

    def start(name: str, **sections: dict) -> Node:
        nodes.append(start_node(name, tmp_path, served.url, pg_url, **sections))
        return nodes[-1]

    yield start
    for node in nodes:
        node.remove()


def served(master: Double, runner: ThreadedDouble, guids: list[str]) -> bool:
    published = runner.run(lambda: {g: dict(master.published.get(g, {})) for g in guids})
    return all(p.get("domain") for p in published.values())


def destroys(node: Node, title: str, since: int = 0) -> list:
    return [c for c in node.proxy.calls(since, name=REQUEST)
            if c.body.get("title") == title and c.body.get("state") == "destroyed"]


def test_three_nodes_started_at_once_on_an_empty_database(double, cluster):
    """A fleet started at the same moment on a new database: every node
    stays up (none exits on the schema being created beside it), exactly one
    leads, the customers are served, and each standby is ready."""
    master, runner = double
    guids = [f"SOFTINST-{i}" for i in range(3)]
    for g in guids:
        runner.run(lambda g=g: master.add(g, {"url": f"https://{g.lower()}.example"}))
    nodes = [cluster(f"node-{c}") for c in "abc"]
    leader = the_leader(nodes)
    until(lambda: served(master, runner, guids), "the customers served")
    dead = {n.name: n.tail() for n in nodes if not n.alive()}
    assert dead == {}, f"nodes exited: {dead}"
    for node in nodes:
        if node is not leader:
            answer = until(lambda node=node: (r := node.get("/readyz")) and r[0] == 200 and r, "a standby ready")
            assert answer[1]["role"] == "standby"


def test_a_tick_paused_across_another_leaders_term_destroys_no_live_site(double, cluster):
    """Node A lists (the answer slow to come: a slow link), and is paused
    (SIGSTOP) while the listing says customer X is gone. Node B takes over,
    destroys X's entry, X comes back to the master and B requests it again:
    X is live. B stops cleanly (hands the lease over). A resumes, takes the
    free lease again, and finishes its tick: what it decided from a listing
    of another leader's time must not be sent. X's entry must not be
    destroyed after B re-requested it."""
    master, runner = double
    guids = [f"SOFTINST-{i}" for i in range(6)]
    x = guids[0]
    params = {g: {"url": f"https://{g.lower()}.example"} for g in guids}
    for g in guids:
        runner.run(lambda g=g: master.add(g, params[g]))
    a = cluster("node-a")
    the_leader([a])
    until(lambda: served(master, runner, guids), "the customers served by A")
    b = cluster("node-b")
    until(lambda: (r := b.get("/readyz")) and r[0] == 200, "B standing by")

    # A's next listing, taken once X is gone, arrives over ~14 s
    size = len(runner.run(lambda: (master.remove(x), master.list_body())[1]))
    mark = len(a.proxy.log)
    a.proxy.inject(LIST, trickle(size / 14.0), times=1)
    until(lambda: any(c.name == LIST and c.fault for c in a.proxy.calls(mark)), "A listing X gone")
    a.process.send_signal(signal.SIGSTOP)
    paused_at = time.monotonic()

    title = technical_title(PREFIX, x)
    assert until(lambda: b.leads(), "B leading while A is paused")
    until(lambda: destroys(b, title), "B destroying X's entry")
    until(lambda: title not in runner.run(lambda: set(master.technical)), "X's entry gone")
    runner.run(lambda: master.add(x, params[x]))  # X is back
    until(lambda: title in runner.run(lambda: set(master.technical)) and served(master, runner, [x]),
          "B serving X again")
    b.stop()
    assert b.process.returncode == 0
    assert time.monotonic() - paused_at < 13.0, "too slow to test the paused tick"
    a_mark = len(a.proxy.log)
    a.process.send_signal(signal.SIGCONT)
    until(lambda: a.leads(), "A leading again")
    # A's paused tick gets its listing, then a tick or two more
    until(lambda: any(c.name == LIST for c in a.proxy.calls(a_mark)), "A listing again", timeout_s=25)
    until(lambda: len([c for c in a.proxy.calls(a_mark) if c.name == LIST]) >= 2, "A ticking again")
    assert destroys(a, title, a_mark) == [], "A destroyed X's live entry on a listing from before B's term"
    assert title in runner.run(lambda: set(master.technical)), "X's live entry is gone"


def test_postgresql_restarted_under_a_leader_and_a_standby(double, cluster, pg_server):
    """PostgreSQL restarted (every session cut): both nodes stay up, one
    leads, a new customer is served, each customer under one title, nothing
    destroyed, and the standby is ready again (its pool reconnects)."""
    master, runner = double
    guids = [f"SOFTINST-{i}" for i in range(3)]
    for g in guids:
        runner.run(lambda g=g: master.add(g, {"url": f"https://{g.lower()}.example"}))
    nodes = [cluster("node-a"), cluster("node-b")]
    first = the_leader(nodes)
    other = next(n for n in nodes if n is not first)
    until(lambda: (r := other.get("/readyz")) and r[0] == 200, "the standby up and ready")
    until(lambda: served(master, runner, guids), "the customers served")
    for _ in range(2):
        pg_server.restart()
        new = f"SOFTINST-{len(guids)}"
        guids.append(new)
        runner.run(lambda: master.add(new, {"url": f"https://{new.lower()}.example"}))
        until(lambda: served(master, runner, guids), "a new customer served after the restart")
    assert all(n.alive() for n in nodes), {n.name: n.tail() for n in nodes if not n.alive()}
    leader = the_leader(nodes)
    standby = next(n for n in nodes if n is not leader)
    until(lambda: (r := standby.get("/readyz")) and r[0] == 200, "the standby ready after the restarts")
    until(lambda: (r := standby.get(f"/instances/{guids[0]}")) and r[0] == 200, "the standby's /instances")
    requested: dict[str, set[str]] = {}
    for node in nodes:
        for call in node.proxy.calls(name=REQUEST):
            assert call.body.get("state") != "destroyed", call.body
            requested.setdefault(call.body["title"], set()).add(node.name)
    assert set(requested) == {technical_title(PREFIX, g) for g in guids}


def test_a_database_outage_longer_than_the_lease(double, cluster, pg_server):
    """The database down for twice the lease: the leader stops calling the
    master before its lease can expire, stays up, and leads again once the
    database is back (one node: nobody else could)."""
    master, runner = double
    guids = ["SOFTINST-0"]
    runner.run(lambda: master.add(guids[0], {"url": "https://softinst-0.example"}))
    node = cluster("node-a")
    the_leader([node])
    until(lambda: served(master, runner, guids), "served")
    pg_server.stop()
    stopped_at = time.monotonic()
    until(lambda: not node.leads(), "the leader stepping down without its database", timeout_s=LEASE_S + 5)
    quiet_from = len(node.proxy.log)
    until(lambda: time.monotonic() - stopped_at > 2 * LEASE_S, "the outage lasting")
    assert node.proxy.log[quiet_from:] == [], "master called without a lease"
    pg_server.start()
    guids.append("SOFTINST-1")
    runner.run(lambda: master.add("SOFTINST-1", {"url": "https://softinst-1.example"}))
    until(lambda: node.leads(), "leading again after the outage")
    until(lambda: served(master, runner, guids), "a new customer served after the outage")
    assert node.alive(), node.tail()


def test_postgresql_restarted_while_a_request_is_in_flight(double, cluster, pg_server):
    """The master's answer to a request comes slowly; PostgreSQL restarts
    meanwhile (the tick's sessions cut): the customer is requested under its
    one title, never destroyed, served in the end, and the node keeps
    leading and serving without a restart."""
    master, runner = double
    first = "SOFTINST-0"
    runner.run(lambda: master.add(first, {"url": "https://softinst-0.example"}))
    node = cluster("node-a")
    the_leader([node])
    until(lambda: served(master, runner, [first]), "served")
    slow = "SOFTINST-slow"
    title = technical_title(PREFIX, slow)
    mark = len(node.proxy.log)
    node.proxy.inject(REQUEST, trickle(200.0), times=1, match=lambda body: body.get("title") == title)
    runner.run(lambda: master.add(slow, {"url": "https://slow.example"}))
    until(lambda: any(c.fault for c in node.proxy.calls(mark, name=REQUEST)), "the request on its way")
    pg_server.restart()
    until(lambda: served(master, runner, [first, slow]), "the slow customer served after the restart")
    assert node.alive() and node.leads(), node.tail()
    titles = {c.body["title"] for c in node.proxy.calls(name=REQUEST)}
    assert titles == {technical_title(PREFIX, first), title}
    assert not [c for c in node.proxy.calls(name=REQUEST) if c.body.get("state") == "destroyed"]
    last = "SOFTINST-last"
    runner.run(lambda: master.add(last, {"url": "https://last.example"}))
    until(lambda: served(master, runner, [first, slow, last]), "served after")

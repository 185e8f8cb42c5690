"""Two and three `cdnreq run` nodes on one PostgreSQL store against slapproxy
(issue 15): exactly one leads; killed (kill -9), paused past its lease
(SIGSTOP) or cut off from the database (a TCP proxy on loopback dropping
every byte), the other takes over within the lease and a tick, finishes the
work, and the old leader never calls the master nor writes again;
PostgreSQL restarted while a request is in flight loses and doubles nothing.

Each node reaches slapproxy through its own FaultProxy (tests/faultproxy.py),
whose call log tells which node sent what: no customer requested under two
titles, no title requested for two customers, no destroy, every customer
converged."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from faultproxy import REQUEST, FaultProxy, trickle
from hanodes import (LEASE_S, RENEW_S, TICK_S, TOKEN, Link, Node, database_activity, store_section, the_leader,
                     until, write_token)

from cdnreq.decide.titles import technical_title
from devtools.devmaster import CdnSite, write_config

pytestmark = [pytest.mark.slapproxy, pytest.mark.postgres]


def start_node(name: str, root: Path, site: CdnSite, pg_url: str) -> Node:
    """A node reaching slapproxy through its own FaultProxy."""
    proxy = FaultProxy(site.proxy.url).start()
    config = write_config(
        root / name / "cdnreq.toml", site, database=root / name / "cdnreq.db", master={"url": proxy.url},
        daemon={"tick_interval_s": TICK_S, "retry_base_s": 0.2, "retry_max_s": 1.0,
                "token_file": str(write_token(root))},
        store=store_section(pg_url, name), domain={"retention_s": 0},
    )
    return Node(name, proxy, config)


@pytest.fixture
def cluster(cdn_site: CdnSite, pg_url: str, tmp_path: Path):
    nodes: list[Node] = []

    def start(name: str, database_url: str | None = None) -> Node:
        nodes.append(start_node(name, tmp_path, cdn_site, database_url or pg_url))
        return nodes[-1]

    yield start
    for node in nodes:  # shown by pytest when the test failed: what each node and the database were doing
        print(f"--- {node.name}: the end of its log ---\n{node.tail()}")
    print(f"--- the database's sessions ---\n{database_activity(pg_url)}")
    for node in nodes:
        node.remove()


def requests_by_title(nodes: list[Node]) -> dict[str, list[tuple[str, dict]]]:
    found: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for node in nodes:
        for call in node.proxy.calls(name=REQUEST):
            found[call.body["title"]].append((node.name, call.body))
    return found


class Cdn:
    """The technical CDN: answers each entry once it appears; tells when every customer shows its answer."""

    def __init__(self, site: CdnSite):
        self.site = site
        self.answered: set[str] = set()

    def converged(self, guids: dict[str, str]) -> bool:
        by_title = {e["title"]: e for e in self.site.technical_entries()}
        done = True
        for guid in guids.values():
            title = technical_title("cdnreq-", guid)
            entry = by_title.get(title)
            if entry is None:
                done = False
                continue
            if title not in self.answered:
                self.site.publish_as_cdn(entry["instance_guid"], {"domain": f"{title}.cdn.example"})
                self.answered.add(title)
            if self.site.customer(guid).get("connection_parameters") != {"domain": f"{title}.cdn.example"}:
                done = False
        return done


def check_call_log(nodes: list[Node], guids: dict[str, str]) -> None:
    titles = {technical_title("cdnreq-", g): g for g in guids.values()}
    requested = requests_by_title(nodes)
    assert set(requested) <= set(titles), f"titles of no customer: {set(requested) - set(titles)}"
    for title, calls in requested.items():
        assert all(body.get("state") != "destroyed" for _, body in calls), f"{title} destroyed"
    assert len(set(requested)) == len(guids)  # each customer under its one title


def test_one_leader_and_a_kill_9_takeover(cdn_site: CdnSite, cluster):
    guids = {f"c{i}": cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"}) for i in range(3)}
    nodes = [cluster("node-a"), cluster("node-b")]
    first = the_leader(nodes)
    standby = next(n for n in nodes if n is not first)
    status = until(lambda: (r := standby.get("/readyz")) and r[0] == 200 and r, "the standby ready")
    assert status[1]["role"] == "standby" and status[1]["leader"].startswith(first.name + "/"), status
    view = until(lambda: (s := standby.get("/status")) and s[1].get("cluster"), "the standby's /status")
    assert view["role"] == "standby" and view["leader"]["holder"].startswith(first.name + "/")
    shared = until(lambda: (s := standby.get("/status")) and sum(s[1]["cluster"]["store"].get("instances", {}).values())
                   == 3 and s[1]["cluster"]["store"], "the standby showing the leader's instances")
    assert shared["last_tick"]["id"] >= 1, shared
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged(guids), "the first customers served")
    assert not standby.proxy.calls(), "a standby called the master"
    refused = standby.get(f"/actions/retry?guid={guids['c0']}", method="POST")
    assert refused is not None and refused[0] == 503 and "stands by" in refused[1]["message"], refused
    # read from the shared store; the leader commits "live" after the master has the answer, so poll
    until(lambda: (r := standby.get(f"/instances/{guids['c0']}")) and r[0] == 200 and r[1]["state"] == "live",
          "the standby showing the first customer live")

    killed_at = time.monotonic()
    first.process.kill()
    first.process.wait()
    assert the_leader(nodes) is standby
    took_s = time.monotonic() - killed_at
    assert took_s <= LEASE_S + TICK_S + 2 * RENEW_S + 2.0, took_s
    guids["c3"] = cdn_site.add_customer("c3", {"url": "https://backend-3.example"})
    until(lambda: cdn.converged(guids), "the new leader serving a new customer")
    check_call_log(nodes, guids)
    request = urllib.request.Request(standby.base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    metrics = urllib.request.urlopen(request, timeout=2).read().decode()
    assert "cdnreq_leader 1.0" in metrics
    assert "cdnreq_last_backup_timestamp_seconds" not in metrics  # PostgreSQL's tools back it up, not cdnreq


def test_a_paused_leader_is_fenced_and_steps_down(cdn_site: CdnSite, cluster):
    guids = {f"c{i}": cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"}) for i in range(2)}
    nodes = [cluster("node-a"), cluster("node-b")]
    first = the_leader(nodes)
    other = next(n for n in nodes if n is not first)
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged(guids), "the first customers served")

    first.process.send_signal(signal.SIGSTOP)
    assert until(lambda: other.leads(), "the other node leading while the first is paused")
    guids["c2"] = cdn_site.add_customer("c2", {"url": "https://backend-2.example"})
    until(lambda: cdn.converged(guids), "the new leader serving a new customer")
    calls_before = len(first.proxy.log)
    first.process.send_signal(signal.SIGCONT)
    until(lambda: (a := first.get("/leaderz")) is not None and a[0] == 503, "the old leader stepping down")
    assert the_leader(nodes) is other
    guids["c3"] = cdn_site.add_customer("c3", {"url": "https://backend-3.example"})
    until(lambda: cdn.converged(guids), "served after the old leader came back")
    assert first.proxy.log[calls_before:] == [], "the old leader called the master after its lease"
    check_call_log(nodes, guids)


def cdnreq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdnreq.cli", *args], capture_output=True, text=True, timeout=120)


def test_commands_beside_a_leader_and_once_on_postgresql(cdn_site: CdnSite, cluster):
    """`cdnreq once` takes the lease for its run: refused while a node leads
    (naming it), run once the node stopped (a clean stop hands the lease over);
    `cdnreq plan` reads beside the leader and writes nothing."""
    guids = {"c0": cdn_site.add_customer("c0", {"url": "https://backend-0.example"})}
    node = cluster("node-a")
    the_leader([node])
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged(guids), "the customer served")
    refused = cdnreq("once", "--config", str(node.config))
    assert refused.returncode == 3, refused.stderr
    assert "node node-a/" in refused.stderr and "leads" in refused.stderr
    planned = cdnreq("plan", "--config", str(node.config))
    assert planned.returncode == 0, planned.stderr
    node.stop()
    assert node.process.returncode == 0
    guids["c1"] = cdn_site.add_customer("c1", {"url": "https://backend-1.example"})
    done = cdnreq("once", "--config", str(node.config))
    assert done.returncode == 0, done.stderr
    assert technical_title("cdnreq-", guids["c1"]) in {e["title"] for e in cdn_site.technical_entries()}
    first = technical_title("cdnreq-", guids["c0"])
    assert [c.body["title"] for c in node.proxy.calls(name=REQUEST)].count(first) == 1  # not again by once


def test_three_nodes_hand_over_twice(cdn_site: CdnSite, cluster):
    """Three nodes: a clean stop hands the lease over at once, a kill -9 after
    the lease; each time exactly one node leads and the work goes on."""
    guids = {f"c{i}": cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"}) for i in range(2)}
    nodes = [cluster("node-a"), cluster("node-b"), cluster("node-c")]
    cdn = Cdn(cdn_site)
    first = the_leader(nodes)
    until(lambda: cdn.converged(guids), "the first customers served")

    stopped_at = time.monotonic()
    first.stop()  # SIGTERM: the lease is released, not left to expire
    assert first.process.returncode == 0
    second = the_leader(nodes)
    assert second is not first and time.monotonic() - stopped_at < LEASE_S, "the lease was not handed over"
    guids["c2"] = cdn_site.add_customer("c2", {"url": "https://backend-2.example"})
    until(lambda: cdn.converged(guids), "served by the second leader")

    second.process.kill()
    second.process.wait()
    third = the_leader(nodes)
    assert third not in (first, second)
    guids["c3"] = cdn_site.add_customer("c3", {"url": "https://backend-3.example"})
    until(lambda: cdn.converged(guids), "served by the third leader")
    check_call_log(nodes, guids)
    epochs = {n.name: (n.get("/status") or (0, {}))[1].get("cluster", {}).get("epoch") for n in nodes[2:]}
    assert third.get("/status")[1]["cluster"]["epoch"] >= 3, epochs


def test_a_leader_cut_off_from_its_database(cdn_site: CdnSite, cluster, pg_url: str, pg_server):
    """The leader reaches PostgreSQL through a link that starts dropping every
    byte (its sessions hang, as in a partition) while it still reaches the
    master: it stops calling the master before its lease can expire, the
    other node leads and serves, and once the link is back the old leader
    stands by and never writes."""
    guids = {f"c{i}": cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"}) for i in range(2)}
    link = Link(pg_server.port).start()
    linked = []
    try:
        first = cluster("node-a", pg_url.replace(f":{pg_server.port}/", f":{link.port}/"))
        linked.append(first)
        the_leader([first])
        cdn = Cdn(cdn_site)
        until(lambda: cdn.converged(guids), "the first customers served")
        other = cluster("node-b")
        nodes = [first, other]
        until(lambda: (r := other.get("/readyz")) and r[0] == 200, "the other node standing by")

        link.set_cut(True)
        cut_at = time.time()
        assert until(lambda: other.leads(), "the other node leading", timeout_s=6 * LEASE_S + 10), other.tail()
        guids["c2"] = cdn_site.add_customer("c2", {"url": "https://backend-2.example"})
        until(lambda: cdn.converged(guids), "the new leader serving a new customer")
        late = [c.name for c in first.proxy.log if c.at > cut_at + LEASE_S]
        assert late == [], f"the cut-off leader called the master after its lease could expire: {late}"

        link.set_cut(False)
        until(lambda: (r := first.get("/readyz")) and r[0] == 200 and r[1]["role"] == "standby",
              "the old leader standing by once its link is back")
        assert the_leader(nodes) is other
        quiet = len(first.proxy.log)
        guids["c3"] = cdn_site.add_customer("c3", {"url": "https://backend-3.example"})
        until(lambda: cdn.converged(guids), "served after the link came back")
        assert first.proxy.log[quiet:] == [], "the old leader called the master as a standby"
        assert first.alive(), first.tail()
        check_call_log(nodes, guids)
    finally:
        for node in linked:  # stopped while its link still forwards: a clean stop
            node.stop()
        link.stop()


def test_postgresql_restarted_while_a_request_is_in_flight(cdn_site: CdnSite, cluster, pg_server):
    """The master's answer to a request trickles in; PostgreSQL restarts
    meanwhile (every session of both nodes cut, the tick's write among them):
    the customer is requested under its one title, nothing is destroyed,
    every customer converges and one node leads."""
    guids = {"c0": cdn_site.add_customer("c0", {"url": "https://backend-0.example"})}
    nodes = [cluster("node-a"), cluster("node-b")]
    leader = the_leader(nodes)
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged(guids), "the first customer served")

    mark = len(leader.proxy.log)
    served = technical_title("cdnreq-", guids["c0"])
    leader.proxy.inject(REQUEST, trickle(200.0), times=1, match=lambda body: body.get("title") != served)
    guids["slow"] = cdn_site.add_customer("slow", {"url": "https://backend-slow.example"})
    until(lambda: any(c.fault for c in leader.proxy.calls(mark, name=REQUEST)), "the request on its way")
    pg_server.restart()
    until(lambda: cdn.converged(guids), "the slow customer served after the restart", timeout_s=120)
    assert all(n.alive() for n in nodes), {n.name: n.tail() for n in nodes if not n.alive()}
    the_leader(nodes)
    guids["c1"] = cdn_site.add_customer("c1", {"url": "https://backend-1.example"})
    until(lambda: cdn.converged(guids), "a new customer served after the restart")
    check_call_log(nodes, guids)

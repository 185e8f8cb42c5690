"""Attacks from the network between a node and its PostgreSQL: the leader
cut off from the database (packets dropped, its sessions hanging) while it
still reaches the master, then the link back. The leader must stop calling
the master before its lease can expire, write nothing once another node
leads, and recover by itself: stand by, and lead again when the other
node stops.

Node A reaches PostgreSQL through a TCP proxy on loopback (hanodes.Link)
that can drop everything; node B reaches it directly."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from faultproxy import REQUEST

from bench.double import Double
from cdnreq.decide.titles import technical_title
from hanodes import LEASE_S, Link, Node, http, the_leader, until
from test_attack_pg_cluster import ThreadedDouble, served, start_node
from test_faults_hostile import PREFIX

pytestmark = [pytest.mark.postgres]


def test_a_leader_cut_off_from_its_database(tmp_path: Path, pg_url: str, pg_server) -> None:
    master = Double(publish_after="immediately")
    guids = [f"SOFTINST-{i}" for i in range(3)]
    for g in guids:
        master.add(g, {"url": f"https://{g.lower()}.example"})
    link = Link(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            a = start_node("node-a", tmp_path, runner.url, pg_url.replace(f":{pg_server.port}/", f":{link.port}/"))
            nodes.append(a)
            the_leader([a])
            until(lambda: served(master, runner, guids), "the customers served by A")
            b = start_node("node-b", tmp_path, runner.url, pg_url)
            nodes.append(b)
            until(lambda: (r := b.get("/readyz")) and r[0] == 200, "B standing by")

            link.set_cut(True)
            cut_at = time.time()
            # A's sessions hang until PostgreSQL ends them (idle_in_transaction_session_timeout = the lease)
            assert until(lambda: b.leads(), "B leading while A is cut off", timeout_s=6 * LEASE_S + 10), b.tail()
            new = "SOFTINST-new"
            runner.run(lambda: master.add(new, {"url": "https://new.example"}))
            guids.append(new)
            until(lambda: served(master, runner, guids), "B serving a new customer")
            late = [c for c in a.proxy.log if c.at > cut_at + LEASE_S]
            assert late == [], f"A called the master after its lease could expire: {[c.name for c in late]}"

            link.set_cut(False)
            until(lambda: (r := a.get("/leaderz")) is not None and r[0] == 503, "A standing by")
            until(lambda: (r := a.get("/readyz")) and r[0] == 200, "A ready again as a standby")
            assert the_leader(nodes) is b
            quiet = len(a.proxy.log)
            b.stop()
            assert until(lambda: a.leads(), "A leading again once B stopped")
            last = "SOFTINST-last"
            runner.run(lambda: master.add(last, {"url": "https://last.example"}))
            guids.append(last)
            until(lambda: served(master, runner, guids), "A serving a customer after its partition")
            assert a.alive(), a.tail()
            assert len(a.proxy.log) > quiet
            requested: set[str] = set()
            for node in nodes:
                for call in node.proxy.calls(name=REQUEST):
                    assert call.body.get("state") != "destroyed", call.body
                    requested.add(call.body["title"])
            assert requested == {technical_title(PREFIX, g) for g in guids}
    finally:
        for node in nodes:
            node.remove()
        link.stop()


@pytest.mark.parametrize("role", ["leader", "standby"])
def test_a_node_cut_off_from_its_database_stops_at_once(tmp_path: Path, pg_url: str, pg_server, role: str) -> None:
    """SIGTERM to a node whose database link drops every byte (a partition):
    it exits 0 within its shutdown timeout and 15 s (README), not waiting
    for ever on connections that cannot close (it hung until SIGKILL). A
    partitioned standby's /instances/<guid> answers 503 within 10 s first."""
    master = Double(publish_after="immediately")
    master.add("SOFTINST-0", {"url": "https://softinst-0.example"})
    link = Link(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            via = pg_url.replace(f":{pg_server.port}/", f":{link.port}/")
            if role == "standby":
                nodes.append(start_node("node-b", tmp_path, runner.url, pg_url))
                the_leader(nodes)
            node = start_node("node-a", tmp_path, runner.url, via, daemon={"shutdown_timeout_s": 1.0})
            nodes.append(node)
            if role == "leader":
                assert the_leader([node]) is node
                until(lambda: served(master, runner, ["SOFTINST-0"]), "served")
            else:
                until(lambda: (r := node.get("/readyz")) and r[0] == 200, "standing by")
            link.set_cut(True)
            if role == "standby":  # what operators ask: an answer, not a hang (no answer for over 70 s before)
                until(lambda: (r := node.get("/readyz")) and r[0] == 503, "not ready once cut off", 15)
                answer = http(node.base + "/instances/SOFTINST-0", timeout=25)
                assert answer is not None and answer[0] == 503, answer
                assert "cannot be read now" in answer[1]["error"], answer
            stopped_at = time.monotonic()
            node.process.send_signal(signal.SIGTERM)
            try:
                code = node.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 25 s after SIGTERM:\n{node.tail()}")
            took = time.monotonic() - stopped_at
            assert code == 0, node.tail()
            print(f"{role}: exited {took:.1f} s after SIGTERM")
    finally:
        for n in nodes:
            n.remove()
        link.stop()

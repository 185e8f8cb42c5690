"""Attacks on stopping while the database stops answering: a partition that
falls at a chosen moment (the first statement of a given kind a node sends),
then SIGTERM, and `cdnreq once` cut off mid-pass (a partitioned standby's
/instances: tests/test_attack_pg_network.py).

hanodes.Link with a `trigger` is a loopback TCP proxy to PostgreSQL that
forwards until a node sends a statement containing it, then drops every
byte both ways for good (the statement included), holding the connections
open, as a partition falling at that instant does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.double import Double
from hanodes import Link, Node, until
from test_attack_pg_cluster import ThreadedDouble, start_node

pytestmark = [pytest.mark.postgres]


def via(pg_url: str, pg_server, link: Link) -> str:
    return pg_url.replace(f":{pg_server.port}/", f":{link.port}/")


def stop_within(node: Node, limit_s: float) -> float:
    """SIGTERM; the seconds the node took to exit 0, or fail after `limit_s`."""
    began = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    try:
        code = node.process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node.name} still running {limit_s} s after SIGTERM:\n{node.tail()}")
    assert code == 0, node.tail()
    return time.monotonic() - began


def test_sigterm_while_the_take_over_migrates_on_a_partitioned_database(tmp_path: Path, pg_url: str, pg_server) -> None:
    """A node that has just taken the lease migrates the schema (its first
    fenced transaction); the database is partitioned at that moment, then
    the operator stops the node. Before the fix, a user saw this: `systemctl stop` does not
    return; the node logs "stopping" and nothing else for a minute (the
    migration waits for asyncpg's 60 s command timeout, then the lease's
    release waits 60 s more), far past the 15 s the README promises, until
    systemd's SIGKILL. A partition during a tick stops within 15 s."""
    master = Double(publish_after="immediately")
    master.add("SOFTINST-0", {"url": "https://softinst-0.example"})
    link = Link(pg_server.port, b"FOR KEY SHARE").start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            node = start_node("node-a", tmp_path, runner.url, via(pg_url, pg_server, link),
                              daemon={"shutdown_timeout_s": 1.0})
            nodes.append(node)
            assert link.tripped.wait(30), node.tail()  # its take-over's migration, cut off
            until(lambda: b"this node leads" in node.log_path.read_bytes(), "A took the lease", 10)
            took = stop_within(node, 25)
            print(f"exited {took:.1f} s after SIGTERM")
    finally:
        for n in nodes:
            n.remove()
        link.stop()


def test_once_cut_off_from_its_database_mid_pass(tmp_path: Path, pg_url: str, pg_server) -> None:
    """`cdnreq once` (a systemd timer's pass) whose PostgreSQL is partitioned
    just after it took the lease and migrated, at the tick's first write.
    Its lease (3 s here) is lost within seconds and another node may lead.
    Before the fix, a user saw this: the pass keeps waiting silently on every statement
    (asyncpg's 60 s command timeout each: the tick's begin, then the
    history's pruning, then the close), minutes in all, instead of ending
    within seconds with an error that names the unreachable database."""
    from hanodes import store_section
    from test_faults_hostile import write_config

    master = Double(publish_after="immediately")
    master.add("SOFTINST-0", {"url": "https://softinst-0.example"})
    link = Link(pg_server.port, b"INSERT INTO ticks").start()
    try:
        with ThreadedDouble(master) as runner:
            config = write_config(tmp_path / "cdnreq.toml", {"url": runner.url}, tmp_path / "cdnreq.db",
                                  store=store_section(via(pg_url, pg_server, link), "once"))
            began = time.monotonic()
            process = subprocess.Popen([sys.executable, "-m", "cdnreq.cli", "once", "--config", str(config)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = process.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                pytest.fail(f"`cdnreq once` still running 40 s after it started (cut off {link.tripped.is_set()}):"
                            f"\n{err[-3000:]}")
            took = time.monotonic() - began
            assert link.tripped.is_set()
            assert process.returncode != 0, (out, err)
            assert str(link.port) in err or "127.0.0.1" in err, err[-3000:]
            print(f"once ended {took:.1f} s after it started, exit {process.returncode}")
    finally:
        link.stop()

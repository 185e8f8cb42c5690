"""Attacks on a node's link to PostgreSQL that is cut, then heals: a
configuration reload (SIGHUP) during the partition, on the leader and on a
standby; the former leader coming back (link healed, or restarted) as a
standby that leads again, with a store read afresh and a newer epoch, once
the other node dies; and what a partitioned standby tells /readyz.

The partitioned node reaches PostgreSQL through hanodes.Link (a loopback
TCP proxy that drops every byte while cut); the other node directly."""

from __future__ import annotations

import asyncio
import signal
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from faultproxy import REQUEST

from bench.double import Double
from cdnreq.decide.titles import technical_title
from cdnreq.service.leader import LeaderSeen, unreachable
from cdnreq.store.errors import StoreUnreachable
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url
from hanodes import LEASE_S, Link, Node, the_leader, until
from test_attack_pg_cluster import ThreadedDouble, served, start_node
from test_attack_stop import stop_within, via
from test_faults_hostile import PREFIX


def customers(count: int) -> tuple[Double, list[str]]:
    """A master double with `count` customers, SOFTINST-0 on, answered at once."""
    master = Double(publish_after="immediately")
    guids = [f"SOFTINST-{i}" for i in range(count)]
    for g in guids:
        master.add(g, {"url": f"https://{g.lower()}.example"})
    return master, guids

pytestmark = [pytest.mark.postgres]


def reload_with(node: Node, **daemon: float) -> str:
    """Change [daemon] keys in the node's file and send SIGHUP; the new file's text."""
    config = tomllib.loads(node.config.read_text())
    config["daemon"].update(daemon)
    node.config.write_text(tomli_w.dumps(config))
    node.process.send_signal(signal.SIGHUP)
    return node.config.read_text()


def reloaded(node: Node, timeout_s: float = 5.0) -> dict:
    """The /status `config` once it says the file on disk runs (the reload was taken)."""

    def taken() -> dict | None:
        answer = node.get("/status")
        if answer is None or answer[0] != 200:
            return None
        config = answer[1]["config"]
        last = config["last_reload"]
        return config if last is not None and last["ok"] and not config["file_on_disk"]["differs"] else None

    return until(taken, f"{node.name} taking the reload", timeout_s)


def readyz(node: Node) -> tuple[int, dict] | None:
    return node.get("/readyz")


def destroyed(nodes: list[Node]) -> list[dict]:
    return [c.body for n in nodes for c in n.proxy.calls(name=REQUEST) if c.body.get("state") == "destroyed"]


def add(runner: ThreadedDouble, master: Double, guid: str) -> None:
    runner.run(lambda: master.add(guid, {"url": f"https://{guid.lower()}.example"}))


def test_what_a_standby_says_of_a_store_it_cannot_reach() -> None:
    """'not read yet' only when the store never answered; an attempt still
    hanging is said to be so, with when the store was last read."""
    assert unreachable(LeaderSeen(), None, 100.0) == "not read yet"
    assert unreachable(LeaderSeen(), 90.0, 100.0) == "no answer for 10 s; not read yet"
    assert unreachable(LeaderSeen(read_at=80.0), 90.0, 100.0) == "no answer for 10 s; last read 20 s ago"
    assert unreachable(LeaderSeen(read_at=80.0, error="db: no answer within 60 s"), None, 100.0) == (
        "db: no answer within 60 s; last read 20 s ago")
    assert unreachable(LeaderSeen(error="db: refused"), 99.0, 100.0) == "db: refused; not read yet"


def test_a_standby_reloaded_while_cut_off_then_healed(tmp_path: Path, pg_url: str, pg_server) -> None:
    """A standby loses its database link: /readyz turns 503 and says what
    is true (it had read the store: 'not read yet' was shown while its
    first attempt after the cut still hung). SIGHUP then: the reload is
    taken at once (it needs no store), the node stays up. The link heals:
    ready again, and it takes over when the leader stops."""
    master, guids = customers(1)
    link = Link(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            a = start_node("node-a", tmp_path, runner.url, pg_url)
            nodes.append(a)
            the_leader([a])
            until(lambda: served(master, runner, guids), "served by A")
            b = start_node("node-b", tmp_path, runner.url, via(pg_url, pg_server, link))
            nodes.append(b)
            until(lambda: (r := readyz(b)) and r[0] == 200, "B standing by")

            link.set_cut(True)
            answer = until(lambda: (r := readyz(b)) and r[0] == 503 and r, "B not ready once cut off", 15)
            reason = answer[1]["reason"]
            assert "not read yet" not in reason, reason  # B read the store before the cut
            assert "cannot reach the store" in reason and "last read" in reason, reason

            began = time.monotonic()
            reload_with(b, tick_interval_s=0.6)
            reloaded(b)
            assert time.monotonic() - began < 5
            assert b.alive(), b.tail()
            status = b.get("/status")
            assert status is not None and status[1]["cluster"]["role"] == "standby", status

            link.set_cut(False)
            until(lambda: (r := readyz(b)) and r[0] == 200, "B ready again once healed", 20)
            assert not b.leads()
            a.stop()
            until(lambda: b.leads(), "B leading once A stopped", 4 * LEASE_S + 10)
            add(runner, master, "SOFTINST-1")
            guids.append("SOFTINST-1")
            until(lambda: served(master, runner, guids), "B serving a new customer")
            assert destroyed(nodes) == []
            assert b.alive(), b.tail()
    finally:
        for n in nodes:
            n.remove()
        link.stop()


def test_a_leader_reloaded_while_cut_off_then_healed_leads_again_from_the_store(
    tmp_path: Path, pg_url: str, pg_server,
) -> None:
    """The leader loses its database link and gets SIGHUP during the
    partition: the reload is taken at once, the node stops calling the
    master before its lease can expire, B takes over and serves a new
    customer N. The link heals: A stands by. B stops: A leads again, from
    the store as B left it (it does not request N again: its memory from
    before the partition was dropped), and under a newer epoch."""
    master, guids = customers(3)
    link = Link(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            a = start_node("node-a", tmp_path, runner.url, via(pg_url, pg_server, link))
            nodes.append(a)
            the_leader([a])
            until(lambda: served(master, runner, guids), "served by A")
            first_epoch = a.get("/status")[1]["cluster"]["epoch"]
            b = start_node("node-b", tmp_path, runner.url, pg_url)
            nodes.append(b)
            until(lambda: (r := readyz(b)) and r[0] == 200, "B standing by")

            link.set_cut(True)
            cut_at = time.time()
            reload_with(a, tick_interval_s=0.6)
            reloaded(a)
            assert until(lambda: b.leads(), "B leading while A is cut off", 6 * LEASE_S + 10), b.tail()
            new = "SOFTINST-new"
            add(runner, master, new)
            guids.append(new)
            until(lambda: served(master, runner, guids), "B serving N")
            late = [c.name for c in a.proxy.log if c.at > cut_at + LEASE_S]
            assert late == [], f"A called the master after its lease could expire: {late}"
            b_epoch = b.get("/status")[1]["cluster"]["epoch"]
            assert b_epoch > first_epoch

            link.set_cut(False)
            until(lambda: (r := readyz(a)) and r[0] == 200 and r[1]["role"] == "standby", "A a ready standby", 20)
            assert the_leader(nodes) is b
            mark = len(a.proxy.log)
            b.stop()
            assert until(lambda: a.leads(), "A leading again once B stopped", 4 * LEASE_S + 10), a.tail()
            epoch = until(lambda: (s := a.get("/status")) and s[1]["cluster"]["epoch"], "A's epoch")
            assert epoch > b_epoch
            last = "SOFTINST-last"
            add(runner, master, last)
            guids.append(last)
            until(lambda: served(master, runner, guids), "A serving a customer after its partition")
            again = [c.body["title"] for c in a.proxy.calls(mark, name=REQUEST)]
            assert technical_title(PREFIX, new) not in again, "A requested N again: it led on its old memory"
            assert destroyed(nodes) == []
            assert a.alive(), a.tail()
    finally:
        for n in nodes:
            n.remove()
        link.stop()


def test_a_former_leader_restarted_after_its_partition(tmp_path: Path, pg_url: str, pg_server) -> None:
    """The leader is cut off, B takes over, A is stopped during the
    partition (within the README's bound) and started again once the link
    is back: a standby, ready; B is killed (-9): A takes over after B's
    lease, under a newer epoch, and serves a customer added meanwhile."""
    master, guids = customers(2)
    link = Link(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            url_a = via(pg_url, pg_server, link)
            a = start_node("node-a", tmp_path, runner.url, url_a, daemon={"shutdown_timeout_s": 1.0})
            nodes.append(a)
            the_leader([a])
            until(lambda: served(master, runner, guids), "served by A")
            b = start_node("node-b", tmp_path, runner.url, pg_url)
            nodes.append(b)
            until(lambda: (r := readyz(b)) and r[0] == 200, "B standing by")

            link.set_cut(True)
            assert until(lambda: b.leads(), "B leading while A is cut off", 6 * LEASE_S + 10), b.tail()
            stop_within(a, 25)
            link.set_cut(False)
            a.log.close()
            a = nodes[0] = Node("node-a", a.proxy, a.config)  # the same configuration, proxy and log file
            until(lambda: (r := readyz(a)) and r[0] == 200 and r[1]["role"] == "standby", "A restarted, standing by")
            b_epoch = until(lambda: (s := b.get("/status")) and s[1]["cluster"]["epoch"], "B's epoch")
            b.kill()
            assert until(lambda: a.leads(), "A leading once B was killed", 4 * LEASE_S + 10), a.tail()
            epoch = until(lambda: (s := a.get("/status")) and s[1]["cluster"]["epoch"], "A's epoch")
            assert epoch > b_epoch
            add(runner, master, "SOFTINST-2")
            guids.append("SOFTINST-2")
            until(lambda: served(master, runner, guids), "A serving a new customer")
            assert destroyed(nodes) == []
    finally:
        for n in nodes:
            n.remove()
        link.stop()


class SilentLink(Link):
    """A Link whose partition heals silently: connections made after the
    heal are forwarded, those it held stay dead for good, dropping every
    byte without a reset (a stateful firewall or NAT that lost their state,
    the old primary's address gone quiet after the name moved on)."""

    def __init__(self, port: int):
        super().__init__(port)
        self.era = 0  # connections of an earlier era than the current are dead once cut

    def set_cut(self, cut: bool) -> None:
        def change() -> None:
            if self.cut and not cut:
                self.era += 1
            self.cut = cut

        self.loop.call_soon_threadsafe(change)

    def stop(self) -> None:
        async def end() -> None:  # the dead connections' pipes, which no reset ends
            tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(10)
        super().stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        era = self.era
        self.writers.add(writer)
        if (upstream := await self._upstream(writer)) is None:
            return
        up_reader, up_writer = upstream
        dead = [False]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dead[0] = dead[0] or self.cut and self.era == era
                    if not (self.cut or dead[0]):
                        dst.write(data)
                        await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                if not dead[0]:
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_a_standby_after_a_partition_that_heals_silently(tmp_path: Path, pg_url: str, pg_server) -> None:
    """The partition heals, but the connections it held stay dead without a
    reset: a new connection works at once. The standby's attempt under way
    hangs on a dead pooled connection; once that statement gives up, the
    standby must be ready again at its next attempt, not wait a second
    command timeout for a cancel request the dead connection never
    acknowledges (a statement waits at most 60 s, README)."""
    master, _ = customers(1)
    link = SilentLink(pg_server.port).start()
    nodes: list[Node] = []
    try:
        with ThreadedDouble(master) as runner:
            nodes.append(a := start_node("node-a", tmp_path, runner.url, pg_url))
            the_leader([a])
            nodes.append(b := start_node("node-b", tmp_path, runner.url, via(pg_url, pg_server, link)))
            until(lambda: (r := readyz(b)) and r[0] == 200, "B standing by")
            link.set_cut(True)
            until(lambda: (r := readyz(b)) and r[0] == 503, "B not ready once cut off", 15)
            cut_at = time.monotonic()
            link.set_cut(False)
            until(lambda: (r := readyz(b)) and r[0] == 200, "B ready again after the heal", 150)
            took = time.monotonic() - cut_at
            print(f"B ready again {took:.1f} s after the heal")
            assert took < 75, b.tail()
    finally:
        for n in nodes:
            n.remove()
        link.stop()


def test_a_statement_on_a_connection_that_died_waits_one_command_timeout(
    pg_url: str, pg_server, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read, then a fenced write, sent while the link is cut; the link
    heals silently (their connection stays dead). Each fails as 'no answer
    within' the command timeout once that has passed, not twice that or
    more: the pool waited as long again for asyncpg's cancel request to be
    acknowledged, and a transaction's ROLLBACK waited behind it (a 60 s
    statement took 120 s, README says 60). The next statement answers at
    once, on a new connection."""
    timeout_s = 2.0
    monkeypatch.setattr("cdnreq.store.postgres.COMMAND_TIMEOUT_S", timeout_s)
    link = SilentLink(pg_server.port).start()

    async def attempt(store: PgStore, statement) -> float:
        began = time.monotonic()
        link.set_cut(True)
        asyncio.get_running_loop().call_later(0.3, link.set_cut, False)
        with pytest.raises(StoreUnreachable, match=f"no answer within {timeout_s:g} s"):
            await statement()
        return time.monotonic() - began

    async def main() -> None:
        store = await PgStore.open(parse_store_url(via(pg_url, pg_server, link)), holder="node-a", lease_s=30.0)
        try:
            read = await attempt(store, store.phases)
            assert read < 1.5 * timeout_s, f"a read took {read:.1f} s"
            assert await store.phases() == {}  # a new connection, made after the heal
            write = await attempt(store, lambda: store.begin_tick(time.time()))
            assert write < 1.5 * timeout_s, f"a write took {write:.1f} s"
            began = time.monotonic()
            assert await store.begin_tick(time.time()) > 0
            assert time.monotonic() - began < 1.0
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        link.stop()

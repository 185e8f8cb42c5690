"""Attacks on GET /changes and the webhook deliverer as services: hostile
queries, long polls that pile up or are cut, a stop while they wait, a
receiver that hangs, races in the outbox's fill. Loopback only."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from hanodes import TOKEN, http, until
from test_attack_feed_transitions import SECRET, Daemon, double  # noqa: F401  (the fixture)

from cdnreq.decide.changes import ChangeEvent
from cdnreq.metrics import Metrics
from cdnreq.model import ChangeKind
from devtools.slapproxy import free_port

CONSUMER_TOKEN = "c" * 24
NOW = 1_800_000_000.0


def secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def test_hostile_queries_are_refused_or_kept_in_scope(tmp_path: Path, double):  # noqa: F811
    """A reseller's token: its scope only, whatever it asks; cursors and
    odd values answer 400/410, never 500, never another customer's change."""
    master, served = double
    master.add("RES-1", {"url": "https://res-1.example"})
    master.add("RESX", {"url": "https://resx.example"})
    master.add("OTHER-1", {"url": "https://other-1.example"})
    consumer = {"name": "reseller", "token_file": secret_file(tmp_path / "r.token", CONSUMER_TOKEN),
                "instance_prefixes": ["RES-"]}
    daemon = Daemon(tmp_path, served, consumer=[consumer])
    try:
        until(lambda: len(daemon.changes("kind=live")) == 3, "three live", 30)
        base = daemon.base

        def get(query: str, token: str | None = CONSUMER_TOKEN):
            answer = http(f"{base}/changes?{query}", token=token)
            assert answer is not None
            return answer

        mine = get("limit=1000")[1]["changes"]
        assert {c["instance_guid"] for c in mine} == {"RES-1"}, mine
        last = get("")[1]["last"]
        for query in ("instance=RES-1&instance=RES-1", "instance=RES-1%00", "kind=live&kind=live",
                      "instance=RES-%5F"):
            status, body = get(query)
            assert status == 200 and {c["instance_guid"] for c in body["changes"]} <= {"RES-1"}, (query, body)
        for query in ("instance=RES%25", "instance=RESX", "instance=OTHER-1", "instance=RES-1&instance=OTHER-1", "instance=res-1",
                      "instance=%20RES-1"):
            assert get(query)[0] in (403,), query
        for query, code in ((f"after={last}", 200), (f"after={last + 1}", 410), (f"after={2**62}", 410),
                            (f"after={2**62 + 1}", 400), ("after=-0", 400), ("after=%2B1", 400),
                            ("after=%D9%A3", 400), ("after=1e3", 400), ("limit=0", 400), ("limit=1001", 400),
                            ("wait=-1", 400), ("wait=inf", 400), ("wait=1e400", 400), ("kind=live%00", 400),
                            ("kind=" + "x" * 5000, 400), ("after=" + "9" * 5000, 400),
                            ("instance=" + "R" * 1001, 400), ("kind=live'%20OR%201=1--", 400)):
            status, body = get(query)
            assert status == code, (query, status, body)
            if code == 200:
                assert body["changes"] == [] and body["next"] == last
        # the operator, with injection attempts in values bound as parameters
        for query in ("instance=' OR '1'='1", "instance=%E2%80%AE", "instance=" + urllib.parse.quote("\U0001F600" * 300)):
            status, body = get(query.replace(" ", "%20"), token=TOKEN)
            assert status == 200 and body["changes"] == [], (query, body)
        # the consumer's token opens nothing else
        for path in ("/status", "/metrics", "/readyz", "/leaderz", "/instances/RES-1", "/nosuch"):
            assert get("")[0] == 200 and http(base + path, token=CONSUMER_TOKEN)[0] == 401, path
        assert http(f"{base}/actions/retry?guid=RES-1", method="POST", token=CONSUMER_TOKEN)[0] == 401
    finally:
        daemon.stop()


def test_a_stop_does_not_wait_for_long_polls(tmp_path: Path, double):  # noqa: F811
    """Long polls of 60 s are waiting: SIGTERM stops the daemon within a few seconds."""
    _, served = double
    daemon = Daemon(tmp_path, served)
    answers: list = []
    waiters = [threading.Thread(target=lambda: answers.append(http(f"{daemon.base}/changes?wait=60", timeout=70)))
               for _ in range(20)]
    for w in waiters:
        w.start()
    time.sleep(0.5)  # let them reach the wait (a stop before it only makes the test easier)
    took = daemon.stop()
    for w in waiters:
        w.join(70)
    assert took < 8, f"the stop took {took:.1f} s with long polls waiting"


class HangingReceiver:
    """Accepts connections on loopback and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_a_receiver_that_never_answers_does_not_hold_the_stop(tmp_path: Path, double):  # noqa: F811
    """A webhook receiver that accepts and never answers (timeout_s = 120,
    allowed): service/webhooks.Webhooks.close sets the stop event, which
    Deliverer only reads between rounds, then waits up to 15 s for the
    round's POST before cancelling it. A SIGTERM should not wait on a
    consumer: a delivery in flight may be cut (it is sent again)."""
    master, served = double
    receiver = HangingReceiver()
    hook = {"name": "billing", "url": f"http://127.0.0.1:{receiver.port}/hook",
            "secret_file": secret_file(tmp_path / "hook.whsec", SECRET), "timeout_s": 120}
    daemon = Daemon(tmp_path, served, webhooks={"allow_networks": ["127.0.0.0/8"]}, consumer=[hook])
    try:
        until(lambda: (s := http(f"{daemon.base}/status")) and "billing" in s[1].get("webhooks", {}), "outbox", 30)
        served.run(lambda: master.add("SOFTINST-1", {"url": "https://one.example"}))
        until(lambda: receiver.accepted, "a delivery in flight", 30)
        took = daemon.stop()
    finally:
        daemon.stop()
        receiver.close()
    assert took < 8, f"the stop took {took:.1f} s while a delivery hung"


async def test_disconnected_long_polls_do_not_keep_running(tmp_path: Path):
    """Each GET /changes?wait=60 whose client went away keeps its handler
    (aiohttp does not cancel handlers on disconnect; Feed._moved never looks
    at the connection), polling the feed for the full wait. A consumer that
    opens and drops long polls piles up tasks without bound (the endpoint's
    256-connection cap counts connections, not handlers); each wakes every
    0.25 s and, when the feed moves, runs a query."""
    from cdnreq.endpoint import make_app, serve
    from cdnreq.service.feed import Feed, parse_query

    class Reads:
        async def changes_after(self, *a, **k):
            return []

        async def feed_bounds(self):
            return (None, 0)

        async def feed_gaps(self):
            return ()

    stop = asyncio.Event()
    feed = Feed(lambda: Reads(), stop)
    running = 0

    class Endpoint:
        async def changes(self, query, consumer, connected):  # as the daemon's (service/endpoint_view.py)
            nonlocal running
            running += 1
            try:
                return await feed.page(parse_query(query), connected)
            finally:
                running -= 1

    port = free_port()
    runner = await serve(make_app(Endpoint(), token=TOKEN), ("127.0.0.1", port))
    try:
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /changes?wait=60 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            await writer.drain()
            writer.close()
        deadline = time.monotonic() + 1.0
        while running < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert running == 30
        deadline = time.monotonic() + 3.0
        while running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert running == 0, f"{running} long polls still running 3 s after their clients left"
    finally:
        stop.set()
        await runner.cleanup()


async def test_a_change_written_while_the_outbox_fills_is_queued_once(tmp_path: Path):
    """service/webhooks.Deliverer._fill reads the feed's last id, then the
    changes after its cursor; a change committed between the two reads is
    queued, but the cursor moves only to the `last` read before it
    (`moved = ... else last`). Once delivered (deleted), the next fill queues
    it again: a second POST of a change already taken."""
    from cdnreq.config import ConsumerConfig
    from cdnreq.service.webhooks import Deliverer
    from cdnreq.store import Store

    store = await Store.open(tmp_path / "s.db")
    try:
        await store.commit(changes=[ChangeEvent("A", ChangeKind.LIVE, NOW, {})])

        class Racing:
            """The store, with a commit landing right after feed_bounds is read (once)."""

            def __init__(self):
                self.armed = True

            def __getattr__(self, name):
                return getattr(store, name)

            async def feed_bounds(self):
                bounds = await store.feed_bounds()
                if self.armed:
                    self.armed = False
                    await store.commit(changes=[ChangeEvent("A", ChangeKind.UPDATED, NOW + 1, {})])
                return bounds

        consumer = ConsumerConfig.model_validate({"name": "billing", "url": "https://h.example/x",
                                                  "secret_file": "/x"})
        deliverer = Deliverer(Racing(), consumer, b"k" * 32, [], Metrics(), lambda: True, asyncio.Event())
        await deliverer.outbox.start_at(0)
        await deliverer._fill()  # change 2 is committed during this fill
        due = await deliverer.outbox.due(NOW * 2, 10)
        assert [d.change_id for d in due] == [1]
        await deliverer.outbox.record([1], [], NOW)  # the consumer took them, in order
        assert [d.change_id for d in await deliverer.outbox.due(NOW * 2, 10)] == [2]
        await deliverer.outbox.record([2], [], NOW)
        await deliverer._fill()
        again = await deliverer.outbox.due(NOW * 2, 10)
    finally:
        await store.close()
    assert [d.change_id for d in again] == [], "change 2, already delivered, is queued again"


async def test_changes_pruned_before_they_were_queued_are_not_lost_silently(tmp_path: Path):
    """README: the feed is a down consumer's backlog "as long as the retention
    keeps it (a change pruned before delivery is dead-lettered)". A consumer
    whose outbox was full (MAX_QUEUED) or that was down long enough has its
    cursor behind the oldest kept change; Deliverer._fill then reads
    changes_after(cursor) and moves on past the pruned ids without a trace:
    no dead letter, no log, nothing in `cdnreq webhooks status`. GET /changes
    answers 410 in the same situation; the webhook consumer just misses them."""
    from cdnreq.config import ConsumerConfig
    from cdnreq.service.webhooks import Deliverer
    from cdnreq.store import Store
    from cdnreq.store.outbox import summary

    store = await Store.open(tmp_path / "s.db")
    try:
        await store.commit(changes=[ChangeEvent(f"G{i}", ChangeKind.LIVE, NOW + i, {}) for i in range(3)])
        consumer = ConsumerConfig.model_validate({"name": "billing", "url": "https://h.example/x",
                                                  "secret_file": "/x"})
        deliverer = Deliverer(store, consumer, b"k" * 32, [], Metrics(), lambda: True, asyncio.Event())
        await deliverer.outbox.start_at(0)  # it was added before the three changes, and was behind
        await store.commit(also=[("DELETE FROM changes WHERE id <= ?", [(2,)])])  # as a pruning pass would
        await deliverer._fill()
        queued = [d.change_id for d in await deliverer.outbox.due(NOW * 2, 10)]
        state = (await summary(store, NOW * 2))["billing"]
    finally:
        await store.close()
    assert queued == [3]
    # changes 1 and 2 are one dead letter that names them (webhooks status shows it), not silently gone
    assert state["dead"] == 1 and "changes 1 to 2 were pruned" in state["last_error"], state

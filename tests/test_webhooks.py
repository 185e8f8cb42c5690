"""Webhooks of the change feed (issue 16), end to end: `cdnreq run` against
the master double, delivering to a receiver on loopback that is down for a
while, then answers 500, then takes them. It receives every change at
least once, in order for each instance, each signature verified with the
`standardwebhooks` library; a kill -9 of cdnreq in the middle loses none."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest
import tomli_w
from aiohttp import web
from hanodes import TOKEN, http, until, write_token
from standardwebhooks import Webhook
from test_faults_hostile import ThreadedDouble, write_config

from bench.double import Double
from devtools.slapproxy import free_port

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


class Receiver:
    """An aiohttp app in its own thread on a loopback port: `mode` is down
    (the port closed), fail (500) or up (204, every request kept)."""

    def __init__(self, port: int):
        self.port = port
        self.mode = "down"
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        data = await request.read()
        if self.mode == "fail":
            self.refused += 1
            return web.Response(status=500)
        self.got.append(({k.lower(): v for k, v in request.headers.items()}, data))
        return web.Response(status=204)

    def listen(self, mode: str) -> None:
        self.mode = mode

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", self._hook)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def verified(self) -> list[dict]:
        """Every delivery kept, its signature checked by the standardwebhooks library."""
        hook = Webhook(SECRET)
        return [hook.verify(data, headers) for headers, data in list(self.got)]


def start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cdnreq.cli", "run", "--config", str(config)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def feed(base: str) -> list[dict]:
    answer = http(f"{base}/changes?limit=1000")
    return [] if answer is None or answer[0] != 200 else answer[1]["changes"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_section(request: pytest.FixtureRequest) -> dict:
    """The outbox on each engine (PostgreSQL: one node, which leads and delivers)."""
    if request.param == "sqlite":
        return {}
    return {"url": request.getfixturevalue("pg_url"), "sslmode": "disable", "lease_s": 3.0, "renew_s": 0.5}


def secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "hook.whsec"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return secret


@pytest.fixture
def receiver():
    found = Receiver(free_port())
    yield found
    found.close()


def test_every_change_arrives_signed_in_order_through_outages_and_a_kill(tmp_path: Path, receiver: Receiver,
                                                                          store_section: dict):
    secret, master = secret_file(tmp_path), Double(publish_after="immediately")
    guids = [f"SOFTINST-{i}" for i in range(12)]
    for g in guids:
        master.add(g, {"url": f"https://{g.lower()}.example"})
    with ThreadedDouble(master) as served:
        config = write_config(
            tmp_path / "cdnreq.toml", {"url": served.url}, tmp_path / "cdnreq.db",
            daemon={"token_file": str(write_token(tmp_path)), "max_destroy_fraction": 0.9, "retry_base_s": 0.2},
            domain={"retention_s": 0}, webhooks={"allow_networks": ["127.0.0.0/8"]},
            consumer=[{"name": "billing", "url": f"http://127.0.0.1:{receiver.port}/hook",
                       "secret_file": str(secret), "concurrency": 3}],
            **({"store": store_section} if store_section else {}),
        )
        base = "http://" + tomllib.loads(config.read_text())["daemon"]["listen"]
        log = tmp_path / "daemon.log"
        daemon = start(config, log)
        try:
            # the consumer starts with the changes written from its start: wait for it to be in place
            until(lambda: (s := http(f"{base}/status")) and "billing" in s[1].get("webhooks", {}), "the outbox")
            # every customer live first: a change made before the first listing is no update (the status
            # answers before the first tick lists, and a busy machine let the change in before it)
            until(lambda: len([c for c in feed(base) if c["kind"] == "live"]) == 12, "every customer live")
            # all six between two listings (one tick seeing half would hold that half apart)
            served.run(lambda: [master.change(g, {"url": f"https://{g.lower()}.example/v2"}) for g in guids[:6]])
            until(lambda: len([c for c in feed(base) if c["kind"] == "updated"]) == 6, "six updates written")
            receiver.listen("fail")  # up, but refusing
            until(lambda: '"HTTP 500"' in log.read_text(), "a refusal recorded")
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            served.run(lambda: [master.remove(g) for g in guids[6:9]])
            receiver.mode = "up"
            daemon = start(config, log)
            until(lambda: len([c for c in feed(base) if c["kind"] == "destroyed"]) == 3, "three destroyed")
            written = feed(base)
            wanted = {c["id"] for c in written}
            try:
                until(lambda: wanted <= {m["data"]["id"] for m in receiver.verified()}, "every change delivered",
                      timeout_s=90)
            except AssertionError:
                got = {m["data"]["id"] for m in receiver.verified()}
                raise AssertionError(f"missing {sorted(wanted - got)} of {[(c['id'], c['kind']) for c in written]}"
                                     f"; received {sorted(got)}") from None
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)

    messages = receiver.verified()  # raises on a bad signature
    assert {m["data"]["id"] for m in messages} >= wanted
    by_instance: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        by_instance[message["data"]["instance_guid"]].append(message["data"]["id"])
    for guid, ids in by_instance.items():
        assert ids == sorted(ids), (guid, ids)  # in order, repeats of one delivery side by side at most
    kinds = {m["data"]["kind"] for m in messages}
    assert {"live", "updated", "destroyed"} <= kinds, kinds
    first = messages[0]
    assert first["type"] == f"cdnreq.{first['data']['kind']}" and "payload" in first["data"]
    ids_seen = [h["webhook-id"] for h, _ in receiver.got]
    assert all(i.startswith("cdnreq_") for i in ids_seen)
    text = log.read_text()
    assert "webhook dead-lettered" not in text
    failed = [json.loads(line) for line in text.splitlines() if '"webhook delivery failed"' in line]
    assert any("Connect" in f["error"] for f in failed), failed[:3]  # while the receiver was down
    assert any(f["error"] == "HTTP 500" for f in failed), failed[:3]  # while it refused


def cdnreq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdnreq.cli", *args], capture_output=True, text=True, timeout=60)


def test_dead_letters_are_shown_and_sent_again_and_private_targets_refused(tmp_path: Path, receiver: Receiver):
    secret, master = secret_file(tmp_path), Double(publish_after="immediately")
    with ThreadedDouble(master) as served:
        hook = {"name": "billing", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret_file": str(secret),
                "max_retry_hours": 0.001}  # 3.6 s of retries, then dead

        def config_for(name: str, allow: list[str]) -> Path:
            # a directory each: the first daemon's backups (beside its database) made the
            # second refuse to start on its missing database when one was taken in time
            (tmp_path / name).mkdir()
            return write_config(tmp_path / f"{name}.toml", {"url": served.url}, tmp_path / name / "cdnreq.db",
                                daemon={"token_file": str(write_token(tmp_path))}, domain={"retention_s": 0},
                                webhooks={"allow_networks": allow}, consumer=[hook])

        config = config_for("cdnreq", ["127.0.0.0/8"])
        private = config_for("private", [])  # the same consumer, loopback not allowed
        base = "http://" + tomllib.loads(config.read_text())["daemon"]["listen"]
        log = tmp_path / "daemon.log"
        daemon = start(config, log)
        try:
            until(lambda: (s := http(f"{base}/status")) and "billing" in s[1].get("webhooks", {}), "the outbox")
            receiver.listen("fail")
            served.run(lambda: master.add("SOFTINST-1", {"url": "https://one.example"}))
            until(lambda: json.loads(cdnreq("webhooks", "status", "--json", "--config", str(config)).stdout or "{}")
                  .get("billing", {}).get("dead", 0) >= 1, "a dead letter", timeout_s=60)
            shown = cdnreq("webhooks", "status", "--config", str(config)).stdout
            assert "billing  http://127.0.0.1:" in shown and "dead 1" in shown and "HTTP 500" in shown, shown
            receiver.mode = "up"
            again = cdnreq("webhooks", "retry", "billing", "--config", str(config))
            assert again.returncode == 0 and "sent again" in again.stdout, again.stdout + again.stderr
            until(lambda: any(m["data"]["instance_guid"] == "SOFTINST-1" for m in receiver.verified()),
                  "the dead letter delivered")
            none = cdnreq("webhooks", "retry", "billing", "--config", str(config))
            assert none.returncode == 1 and "no dead-lettered delivery" in none.stderr, none.stderr
            tail = cdnreq("events", "tail", "--config", str(config), "--kind", "live")
            assert "SOFTINST-1  live" in tail.stdout, tail.stdout + tail.stderr
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        metrics = [line for line in log.read_text().splitlines() if "dead-lettered" in line]
        assert metrics, "the dead letter was not logged"

        # the same consumer without allow_networks: loopback is refused, never connected to
        receiver.got.clear()
        daemon = start(private, tmp_path / "private.log")
        private_base = "http://" + tomllib.loads(private.read_text())["daemon"]["listen"]
        try:
            until(lambda: (s := http(f"{private_base}/status")) and "billing" in s[1].get("webhooks", {}), "outbox")
            served.run(lambda: master.add("SOFTINST-2", {"url": "https://two.example"}))
            until(lambda: "not public, and not in [webhooks].allow_networks" in (tmp_path / "private.log").read_text(),
                  "the private target refused")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        assert receiver.got == []


def test_a_consumer_scoped_by_title_receives_its_customers_changes_only(tmp_path: Path, receiver: Receiver,
                                                                        store_section: dict):
    secret, master = secret_file(tmp_path), Double(publish_after="immediately")
    titles = {"SOFTINST-1": "shop-one", "SOFTINST-2": "shop-two", "SOFTINST-3": "other", "SOFTINST-4": "shopper"}
    receiver.listen("up")
    with ThreadedDouble(master) as served:
        config = write_config(
            tmp_path / "cdnreq.toml", {"url": served.url}, tmp_path / "cdnreq.db",
            daemon={"token_file": str(write_token(tmp_path))}, webhooks={"allow_networks": ["127.0.0.0/8"]},
            consumer=[{"name": "panel", "url": f"http://127.0.0.1:{receiver.port}/hook",
                       "secret_file": str(secret), "title_prefixes": ["shop-"]}],
            **({"store": store_section} if store_section else {}),
        )
        base = "http://" + tomllib.loads(config.read_text())["daemon"]["listen"]
        daemon = start(config, tmp_path / "daemon.log")
        try:
            # the consumer starts with the changes written from its start: wait for it to be in place
            until(lambda: (s := http(f"{base}/status")) and "panel" in s[1].get("webhooks", {}), "the outbox")
            served.run(lambda: [master.add(g, {"url": f"https://{g.lower()}.example"}, title=t)
                                for g, t in titles.items()])
            until(lambda: len([c for c in feed(base) if c["kind"] == "live"]) == 4, "all four live")
            until(lambda: len(receiver.verified()) >= 2, "the shop's two delivered")
            assert {c["instance_guid"]: c["customer_title"] for c in feed(base)} == titles
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    got = {(m["data"]["instance_guid"], m["data"]["customer_title"], m["data"]["kind"])
           for m in receiver.verified()}
    assert got == {("SOFTINST-1", "shop-one", "live"), ("SOFTINST-2", "shop-two", "live")}


def test_a_consumer_removed_by_a_reload_leaves_no_outbox_gauge(tmp_path: Path, receiver: Receiver):
    """Its last depth stayed on /metrics until a restart (a dashboard or an
    alert on the depth then watched a consumer that no longer exists)."""
    secret, master = secret_file(tmp_path), Double(publish_after="immediately")
    with ThreadedDouble(master) as served:
        hook = {"name": "billing", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret_file": str(secret)}
        config = write_config(tmp_path / "cdnreq.toml", {"url": served.url}, tmp_path / "cdnreq.db",
                              daemon={"token_file": str(write_token(tmp_path))},
                              webhooks={"allow_networks": ["127.0.0.0/8"]}, consumer=[hook])
        base = "http://" + tomllib.loads(config.read_text())["daemon"]["listen"]
        daemon = start(config, tmp_path / "daemon.log")
        try:
            until(lambda: 'cdnreq_webhook_outbox_depth{consumer="billing"}' in scrape(base), "the gauge")
            settings = tomllib.loads(config.read_text())
            del settings["consumer"]
            config.write_text(tomli_w.dumps(settings))
            daemon.send_signal(signal.SIGHUP)
            until(lambda: (s := http(f"{base}/status")) and "billing" not in s[1].get("webhooks", {}), "reloaded")
            until(lambda: not gauges(scrape(base), "billing"), "the gauges of the removed consumer gone", timeout_s=15)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)


def gauges(metrics: str, consumer: str) -> list[str]:
    """The outbox gauges' lines of `consumer` (its delivery counters stay: they count what was done)."""
    return [line for line in metrics.splitlines()
            if f'consumer="{consumer}"' in line and not line.startswith("cdnreq_webhook_deliveries")]


def scrape(base: str) -> str:
    import urllib.request

    request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return ""

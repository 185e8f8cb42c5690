"""Attacks on webhook targets and on consumers changed by a reload: every
spelling of loopback is refused where the connection is made, redirects
are not followed, and a consumer removed by a reload stops receiving."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import tomli_w
import tomllib
from hanodes import http, until
from test_attack_feed_service import CONSUMER_TOKEN, secret_file
from test_attack_feed_transitions import SECRET, Daemon, double  # noqa: F401  (the fixture)


class Listener:
    """A dual-stack socket on [::]:port (so 127.x, ::1 and ::ffff:127.x all
    land here) that counts connections and answers each with `answer`."""

    def __init__(self, answer: bytes = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"):
        self.sock = socket.socket(socket.AF_INET6)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(self.answer)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


def failures(log: Path) -> dict[str, str]:
    """The last delivery error logged for each consumer."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"webhook delivery failed"' in line or '"webhook dead-lettered"' in line:
            entry = json.loads(line)
            found[entry["consumer"]] = entry["error"]
    return found


def test_loopback_in_every_spelling_is_never_connected_to(tmp_path: Path, double):  # noqa: F811
    master, served = double
    target = Listener()
    hosts = {
        "zero": "0.0.0.0", "localhost": "localhost", "mapped": "[::ffff:127.0.0.1]", "mappedhex": "[::ffff:7f00:1]",
        "v6loop": "[::1]", "short": "127.1", "decimal": "2130706433", "hex": "0x7f.0.0.1", "dot": "127.0.0.1.",
        "v6long": "[0:0:0:0:0:ffff:127.0.0.1]", "unspec6": "[::]", "octal": "0177.0.0.1", "ten": "127.0.0.2",
    }
    key = secret_file(tmp_path / "hook.whsec", SECRET)
    consumers = [{"name": name, "url": f"http://{host}:{target.port}/hook", "secret_file": key, "timeout_s": 2}
                 for name, host in hosts.items()]
    daemon = Daemon(tmp_path, served, consumer=consumers)
    try:
        until(lambda: set(hosts) <= set((http(f"{daemon.base}/status") or (0, {}))[1].get("webhooks", {})),
              "the outboxes", 30)
        served.run(lambda: master.add("SOFTINST-1", {"url": "https://one.example"}))
        until(lambda: set(hosts) <= set(failures(daemon.log)), "every target tried", 30)
        errors = failures(daemon.log)
    finally:
        daemon.stop()
        target.close()
    assert target.connections == 0, (target.connections, errors)


def test_a_name_resolving_to_loopback_says_why_it_is_refused(tmp_path: Path, double):  # noqa: F811
    """README: a target whose name resolves to a non-public address is
    refused, and the error is logged and shown by `cdnreq webhooks status`.
    service/webhooks._CheckedResolver raises TargetRefused(message) from the
    resolver; aiohttp wraps it in ClientConnectorDNSError, whose text shows
    the OSError's strerror (None here): the operator reads "Cannot connect
    to host localhost:PORT ssl:default [None]" and never learns that the
    SSRF guard refused it (the same target as an IP literal says so)."""
    master, served = double
    target = Listener()
    hook = {"name": "billing", "url": f"http://localhost:{target.port}/hook",
            "secret_file": secret_file(tmp_path / "hook.whsec", SECRET), "timeout_s": 2}
    daemon = Daemon(tmp_path, served, consumer=[hook])
    try:
        until(lambda: "billing" in (http(f"{daemon.base}/status") or (0, {}))[1].get("webhooks", {}), "outbox", 30)
        served.run(lambda: master.add("SOFTINST-1", {"url": "https://one.example"}))
        until(lambda: "billing" in failures(daemon.log), "tried", 30)
        error = failures(daemon.log)["billing"]
    finally:
        daemon.stop()
        target.close()
    assert target.connections == 0
    assert "not public" in error and "127.0.0.1" in error, error


def test_a_redirect_to_loopback_is_not_followed(tmp_path: Path, double):  # noqa: F811
    master, served = double
    inner = Listener()
    redirector = Listener(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://[::1]:{inner.port}/x\r\n"
                          "Content-Length: 0\r\n\r\n".encode())
    hook = {"name": "billing", "url": f"http://127.0.0.1:{redirector.port}/hook",
            "secret_file": secret_file(tmp_path / "hook.whsec", SECRET)}
    daemon = Daemon(tmp_path, served, webhooks={"allow_networks": ["127.0.0.0/8"]}, consumer=[hook])
    try:
        until(lambda: "billing" in (http(f"{daemon.base}/status") or (0, {}))[1].get("webhooks", {}), "outbox", 30)
        served.run(lambda: master.add("SOFTINST-1", {"url": "https://one.example"}))
        until(lambda: failures(daemon.log).get("billing") == "HTTP 307", "the redirect refused", 30)
    finally:
        daemon.stop()
        inner.close()
        redirector.close()
    assert inner.connections == 0


def test_a_consumer_removed_by_a_reload_gets_nothing_more(tmp_path: Path, double):  # noqa: F811
    """A reseller's contract ends: the operator removes its [[consumer]] and
    reloads. Its token is refused from then on, but a long poll it opened
    before (GET /changes?wait=60) keeps the scope it was given
    (service/feed.Feed.page reads `query` once) and answers the next change
    of that scope, written after the reload, with 200."""
    master, served = double
    reseller = {"name": "reseller", "token_file": secret_file(tmp_path / "r.token", CONSUMER_TOKEN),
                "instance_prefixes": ["RES-"]}
    daemon = Daemon(tmp_path, served, consumer=[reseller])
    try:
        base = daemon.base
        _, first = http(f"{base}/changes", token=CONSUMER_TOKEN)
        answer: dict = {}

        def wait() -> None:
            answer["got"] = http(f"{base}/changes?after={first['next']}&wait=30", token=CONSUMER_TOKEN, timeout=40)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)  # the poll is waiting
        config = tomllib.loads(daemon.config.read_text())
        del config["consumer"]
        daemon.config.write_text(tomli_w.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)
        until(lambda: http(f"{base}/changes", token=CONSUMER_TOKEN)[0] == 401, "the token refused", 10)
        served.run(lambda: master.add("RES-1", {"url": "https://res-1.example"}))
        waiter.join(40)
    finally:
        daemon.stop()
    status, body = answer["got"]
    assert not (status == 200 and body["changes"]), f"a removed consumer was sent {body['changes']}"

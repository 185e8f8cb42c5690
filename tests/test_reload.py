"""Reload you can see: SIGHUP over a real NOTIFY_SOCKET, /status, metrics, `cdnreq status`.

The daemon is the real `cdnreq run` in a subprocess against a slapproxy; the
test binds the unix datagram socket systemd would and reads what the daemon
sends: RELOADING=1 with MONOTONIC_USEC, then READY=1 with a STATUS= naming
the configuration that runs or the refusal (Type=notify-reload, systemd >= 253).
"""

from __future__ import annotations

import json
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devmaster import CdnSite
from cdnreq.reloadstate import digest_of
from test_service import (  # noqa: F401  (spawn is a fixture)
    add_customers, cdnreq, clean_env, config_for, listen_of, metric_families, sample, spawn,
)

pytestmark = pytest.mark.slapproxy


class NotifySocket:
    """The datagram socket systemd listens on, bound by the test."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def next_matching(self, predicate, what: str, daemon, timeout: float = 20) -> tuple[int, str]:
        """Receive until a message matches; its index and text."""
        deadline = time.monotonic() + timeout
        start = len(self.received)
        while True:
            for index in range(start, len(self.received)):
                if predicate(self.received[index]):
                    return index, self.received[index]
            start = len(self.received)
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} received; got {self.received}\n{daemon.stderr()[-3000:]}")
            self.sock.settimeout(min(left, 0.5))
            try:
                self.received.append(self.sock.recv(65536).decode())
            except TimeoutError:
                assert daemon.process.poll() is None, daemon.stderr()[-3000:]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    # AF_UNIX paths are short (108 bytes): a private directory under /tmp if tmp_path is too long
    directory = tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="cdnreq-reload-"))
    listener = NotifySocket(directory / "notify.sock")
    try:
        yield listener
    finally:
        listener.sock.close()
        listener.path.unlink(missing_ok=True)
        if directory != tmp_path:
            directory.rmdir()


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines())


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reload_and_receive(daemon, notify: NotifySocket) -> dict[str, str]:
    """SIGHUP; RELOADING=1 with a plausible MONOTONIC_USEC, then at once READY=1: the latter's fields."""
    before = monotonic_usec()
    daemon.signal(signal.SIGHUP)
    index, reloading = notify.next_matching(lambda m: "RELOADING=1" in m, "RELOADING=1", daemon)
    after = monotonic_usec()
    sent = fields(reloading)
    assert sent["RELOADING"] == "1"
    assert before <= int(sent["MONOTONIC_USEC"]) <= after, (before, sent, after)
    ready_at, ready = notify.next_matching(lambda m: "READY=1" in m, "READY=1 after the reload", daemon)
    assert ready_at == index + 1, notify.received[index:]  # nothing in between
    return fields(ready)


def config_view(daemon) -> dict:
    return daemon.get("/status").json()["config"]


def metrics_of(daemon) -> dict:
    return metric_families(daemon.get("/metrics").body.decode())


def info_digest(families) -> str:
    (found,) = [s.labels["digest"] for s in families["cdnreq_config_info"].samples if s.name == "cdnreq_config_info"]
    return found


def test_sighup_reload_is_signalled_shown_and_a_refusal_keeps_the_old_config(
    cdn_site: CdnSite, tmp_path: Path, spawn, notify_socket: NotifySocket
):
    add_customers(cdn_site, 1)
    config = config_for(cdn_site, tmp_path)
    listen = listen_of(config)
    first = digest_of(config.read_bytes())
    daemon = spawn(config, env=clean_env(NOTIFY_SOCKET=str(notify_socket.path)))
    notify_socket.next_matching(lambda m: m == "READY=1", "the start-up READY=1", daemon)
    notify_socket.next_matching(lambda m: m.startswith("STATUS=tick "), "a tick's STATUS=", daemon)
    daemon.wait_status("/readyz", 200)
    view = config_view(daemon)
    assert view["digest"] == first and view["path"] == str(config) and view["last_reload"] is None
    assert view["file_on_disk"] == {"digest": first, "differs": False, "refused": False, "error": None}
    families = metrics_of(daemon)
    assert sample(families, "cdnreq_config_last_reload_success") == 1
    assert info_digest(families) == first

    # a good file: reloaded, STATUS= names its digest
    config_for(cdn_site, tmp_path, daemon={"listen": listen, "tick_interval_s": 0.6})
    second = digest_of(config.read_bytes())
    assert second != first
    ready = reload_and_receive(daemon, notify_socket)
    assert ready["STATUS"] == f"running config {second} from {config}", ready
    view = config_view(daemon)
    assert view["digest"] == second and view["last_reload"]["ok"] is True
    assert info_digest(metrics_of(daemon)) == second
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 0, shown
    assert f"config {second} from {config}" in shown.stdout and "last reload ok" in shown.stdout

    # a bad file: refused, the old configuration runs on, everyone is told
    config_for(cdn_site, tmp_path, daemon={"listen": listen, "tick_intervall_s": 1.0})
    bad = digest_of(config.read_bytes())
    refused_at = time.time()
    ready = reload_and_receive(daemon, notify_socket)
    assert ready["STATUS"].startswith(f"reload REFUSED, still running config {second}: "), ready
    assert "[daemon].tick_intervall_s" in ready["STATUS"]
    view = config_view(daemon)
    assert view["digest"] == second
    assert view["last_reload"]["ok"] is False and view["last_reload"]["digest"] == bad
    assert "[daemon].tick_intervall_s" in view["last_reload"]["error"]
    assert view["file_on_disk"] == {"digest": bad, "differs": True, "refused": True, "error": None}
    families = metrics_of(daemon)
    assert sample(families, "cdnreq_config_last_reload_success") == 0
    assert sample(families, "cdnreq_config_last_reload_timestamp_seconds") >= int(refused_at)
    assert info_digest(families) == second  # what runs, not what was refused
    # the ticks go on with the old configuration, and their STATUS= keeps the refusal visible
    _, status = notify_socket.next_matching(
        lambda m: m.startswith("STATUS=tick ") and "config reload REFUSED" in m, "a tick's STATUS= after", daemon
    )
    assert " ok in " in status, status
    assert daemon.get("/readyz").status == 200
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 1, shown
    assert "configuration refused" in shown.stderr and "tick_intervall_s" in shown.stderr  # the file itself
    assert "): ready" in shown.stdout and "CONFIG RELOAD REFUSED" in shown.stdout, shown.stdout  # what runs
    assert "[daemon].tick_intervall_s" in shown.stdout
    as_json = cdnreq("status", "--config", config, "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["daemon"]["config"]["last_reload"]["ok"] is False

    # fixed and reloaded: success again
    config_for(cdn_site, tmp_path, daemon={"listen": listen, "tick_interval_s": 0.7})
    third = digest_of(config.read_bytes())
    ready = reload_and_receive(daemon, notify_socket)
    assert ready["STATUS"] == f"running config {third} from {config}", ready
    families = metrics_of(daemon)
    assert sample(families, "cdnreq_config_last_reload_success") == 1 and info_digest(families) == third
    assert config_view(daemon)["file_on_disk"]["refused"] is False
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 0, shown
    assert "REFUSED" not in shown.stdout
    assert daemon.stop() == 0


def test_an_edit_not_yet_reloaded_is_shown_as_pending(cdn_site: CdnSite, tmp_path: Path, spawn):
    config = config_for(cdn_site, tmp_path)
    listen = listen_of(config)
    daemon = spawn(config)
    daemon.wait_status("/readyz", 200)
    running = config_view(daemon)["digest"]
    config_for(cdn_site, tmp_path, daemon={"listen": listen, "tick_interval_s": 0.9})
    disk = config_view(daemon)["file_on_disk"]
    assert disk == {"digest": digest_of(config.read_bytes()), "differs": True, "refused": False, "error": None}
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 0, shown  # an edit is not a refusal
    assert f"differs from the running one; not reloaded yet" in shown.stdout
    assert config_view(daemon)["digest"] == running
    assert daemon.stop() == 0

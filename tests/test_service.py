"""`cdnreq run` as a service: endpoint, CLI, signals, systemd, lock, logs.

Every test starts the real `cdnreq run` console script in a subprocess and
talks to it the way operators and supervisors do: over HTTP on the configured
loopback address, with signals, through a real systemd-style notify socket,
and with the `cdnreq status` / `cdnreq explain` commands. The master is a real
slapproxy (`cdn_site`, devtools.devmaster) unless a test needs a master that is
down (a loopback port nobody listens on) or one that never answers (a loopback
socket that is listening but never accepts, so every call hangs).

The daemon's stderr goes to a file and is read as JSON lines. Waiting is
always polling with a deadline.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

import storeread

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, Slapproxy, free_port, write_config
from cdnreq.decide.transitions import IN_PROGRESS
from cdnreq.decide.titles import technical_title

pytestmark = pytest.mark.slapproxy

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
PREFIX = "cdnreq-"
LABEL = "_slapos-challenge"

# Log lines about the daemon's life rather than a tick: they may lack `tick`.
LIFECYCLE = (
    "started",
    "stopped",
    "stopping: no new tick, finishing the calls in flight",
    "second stop signal, exiting at once",
    "calls still in flight after the shutdown timeout; cancelling",
    "configuration reloaded; applies from the next tick",
    "configuration refused, keeping the running one",
    "these changes apply after a restart",
)

REQUIRED_METRICS = (
    "cdnreq_ticks_total",
    "cdnreq_tick_duration_seconds",
    "cdnreq_last_successful_tick_timestamp_seconds",
    "cdnreq_instances",
    "cdnreq_actions_total",
    "cdnreq_master_call_duration_seconds",
    "cdnreq_dns_lookups_total",
    "cdnreq_master_calls_in_flight",
    "cdnreq_consecutive_failed_ticks",
)


# -- helpers ---------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything systemd might have left in it."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(extra)
    return env


def cdnreq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CDNREQ, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout, env=clean_env(),
        stdin=subprocess.DEVNULL,
    )


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20, daemon: Daemon | None = None) -> Any:
    """Polls `predicate` until it returns something truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.process.poll() is not None:
            pytest.fail(f"cdnreq exited {daemon.process.returncode} while waiting for {what}:\n{daemon.stderr()}")
        if time.monotonic() > deadline:
            tail = f"\n--- cdnreq stderr ---\n{daemon.stderr()[-4000:]}" if daemon is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{tail}")
        time.sleep(0.05)


# Never through an HTTP proxy from the environment: loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str, token: str | None = None, timeout: float = 5) -> Response:
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers, error.read())


def metric_families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels`."""
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


class Daemon:
    """`cdnreq run --config FILE` in a subprocess; stderr (JSON lines) to a file."""

    def __init__(self, config: Path, stderr_path: Path, env: dict[str, str] | None = None):
        self.config = Path(config)
        settings = tomllib.loads(self.config.read_text())
        host, _, port = settings["daemon"]["listen"].rpartition(":")
        assert host in ("127.0.0.1", "0.0.0.0"), host
        self.base = f"http://127.0.0.1:{port}"  # only ever connect to loopback
        self.database = Path(settings["daemon"]["database"])
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [CDNREQ, "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=env if env is not None else clean_env(),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """Every complete stderr line, parsed; a line that is not JSON fails the test."""
        entries = []
        for line in self.stderr().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # being written
            try:
                entry = json.loads(line)
            except ValueError:
                pytest.fail(f"cdnreq wrote a stderr line that is not JSON: {line!r}")
            assert isinstance(entry, dict), line
            entries.append(entry)
        return entries

    def logged(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.lines()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_logged(self, event: str, timeout: float = 20, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (found := self.logged(event, **match)) and len(found) >= count and found,
            f"{count} log line(s) {event!r} {match or ''}", timeout, self,
        )

    def last_tick_id(self) -> int:
        ticks = [e["tick"] for e in self.lines() if e.get("event") in ("tick done", "tick failed")]
        return max(ticks, default=0)

    def wait_tick_after(self, tick: int, *, ok: bool = True, timeout: float = 20) -> dict[str, Any]:
        """The summary line of the first tick after `tick` (tick done when ok)."""
        event = "tick done" if ok else "tick failed"
        return wait_for(
            lambda: next((e for e in self.logged(event) if e["tick"] > tick), None),
            f"a {event!r} after tick {tick}", timeout, self,
        )

    def get(self, path: str, token: str | None = None) -> Response:
        return http_get(self.base + path, token)

    def try_get(self, path: str, token: str | None = None) -> Response | None:
        try:
            return self.get(path, token)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_status(self, path: str, status: int, timeout: float = 20, token: str | None = None) -> Response:
        return wait_for(
            lambda: (r := self.try_get(path, token)) is not None and r.status == status and r,
            f"GET {path} -> {status}", timeout, self,
        )

    def wait_started(self, timeout: float = 20) -> None:
        """Until the signal handlers are installed (logged right after)."""
        self.wait_logged("started", timeout)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cdnreq did not exit within {timeout} s of SIGTERM:\n{self.stderr()[-4000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts daemons; whatever still runs at the end of the test is killed."""
    daemons: list[Daemon] = []

    def start(config: Path, *, env: dict[str, str] | None = None, name: str = "daemon") -> Daemon:
        daemon = Daemon(config, tmp_path / f"{name}-{len(daemons)}.stderr", env)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill()


# Dead ports, held bound (not listening) for the session: a connection is
# refused, and no other test's master can take one meanwhile (a free port
# only picked was once taken by a concurrent test's slapproxy, and a daemon
# meant to have no master found one serving 11 instances).
_DEAD_PORTS: list[socket.socket] = []


def dead_master_url() -> str:
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    _DEAD_PORTS.append(held)
    return f"http://127.0.0.1:{held.getsockname()[1]}"


def offline_site(tmp_path: Path, url: str | None = None) -> CdnSite:
    """A CdnSite whose master is never started: its URL is a dead loopback port
    (or `url`). Enough for write_config when the test needs no master."""
    proxy = Slapproxy(tmp_path / "no-master")
    proxy.url = url if url is not None else dead_master_url()
    return CdnSite(proxy, "cdn-requester______0", "slappart0", "cdn-tech______0", "slappart1")


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A master URL on loopback that accepts connections (kernel backlog) and
    never answers: every call stays in flight until its timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def add_customers(site: CdnSite, n: int) -> dict[str, dict[str, str]]:
    """guid -> parameters. No custom_domain: nothing to prove by DNS."""
    customers = {}
    for i in range(n):
        parameters = {"url": f"https://backend-{i}.example", "enable_cache": "true"}
        customers[site.add_customer(f"customer-{i}", parameters)] = parameters
    return customers


def config_for(site: CdnSite, tmp_path: Path, name: str = "cdnreq.toml", **sections: dict) -> Path:
    daemon = {"tick_interval_s": 0.5, **sections.pop("daemon", {})}
    domain = {"retention_s": 0, **sections.pop("domain", {})}
    return write_config(
        tmp_path / name, site, database=tmp_path / "state" / "cdnreq.db", daemon=daemon, domain=domain, **sections
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine_config(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """config_for on each engine: SQLite, and PostgreSQL (one node, short lease)."""
    if request.param == "sqlite":
        return config_for
    store = {"url": request.getfixturevalue("pg_url"), "sslmode": "disable", "lease_s": 3.0, "renew_s": 0.5}
    return functools.partial(config_for, store=store)


def listen_of(config: Path) -> str:
    return tomllib.loads(config.read_text())["daemon"]["listen"]


# -- 1. the endpoint ---------------------------------------------------------------


def test_endpoints_health_metrics_status_and_instances(cdn_site: CdnSite, tmp_path: Path, spawn, engine_config):
    customers = add_customers(cdn_site, 3)
    odd = cdn_site.add_customer("shop/eu x%", {"url": "https://odd-backend.example"})
    assert odd == "shop/eu x%______1"
    customers[odd] = {"url": "https://odd-backend.example"}
    daemon = spawn(engine_config(cdn_site, tmp_path))

    ready = daemon.wait_status("/readyz", 200)
    assert ready.json()["ready"] is True and ready.json()["last_success_at"]
    assert ready.headers["Content-Type"].startswith("application/json")
    assert ready.headers["Cache-Control"] == "no-store"

    health = daemon.get("/healthz")
    assert (health.status, health.json()) == (200, {"alive": True})

    # /metrics: valid Prometheus text with every documented series
    metrics = daemon.get("/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    families = metric_families(text)
    names = set(families) | {s.name for f in families.values() for s in f.samples}
    missing = [name for name in REQUIRED_METRICS if name not in names]
    assert not missing, f"missing metrics: {missing}"
    assert sample(families, "cdnreq_ticks_total", result="ok") >= 1
    assert sample(families, "cdnreq_consecutive_failed_ticks") == 0
    assert abs(sample(families, "cdnreq_last_successful_tick_timestamp_seconds") - time.time()) < 60
    assert sample(families, "cdnreq_actions_total", kind="request", result="ok") == 4
    assert sample(families, "cdnreq_instances", state="requested") == 4
    assert sample(families, "cdnreq_tick_duration_seconds_count") >= 1
    listed = [
        s.value for s in families["cdnreq_master_call_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels.get("call") == "slapos.allDocs.v0.instance_node_instance_list"
    ]
    assert listed and sum(listed) >= 1
    # no customer data in any label or value
    for guid, parameters in customers.items():
        for secret in (guid, guid.split("______")[0], technical_title(PREFIX, guid), *parameters.values()):
            if secret in ("true",):
                continue
            assert secret not in text, f"/metrics leaks {secret!r}"

    # /status: the daemon's state and the last tick's progress
    status = daemon.get("/status")
    assert status.status == 200 and status.headers["Cache-Control"] == "no-store"
    body = status.json()
    assert body["pid"] == daemon.pid and body["ready"] is True
    assert body["consecutive_failed_ticks"] == 0
    assert body["instances"] == {"requested": 4}
    last = body["progress"]["last"]
    assert last["ok"] is True and isinstance(last["tick"], int) and last["tick"] >= 1
    assert last["finished_at"] and last["duration_s"] >= 0
    assert body["progress"]["phases"], body["progress"]
    first_tick = min(e["tick"] for e in daemon.logged("tick done"))
    first_summary = next(e for e in daemon.logged("tick done") if e["tick"] == first_tick)
    assert first_summary["results"]["request:ok"] == 4

    # /instances/{guid}: why the instance is in its state, with events
    for guid in customers:
        answer = daemon.get("/instances/" + quote(guid, safe=""))
        assert answer.status == 200, (guid, answer.body)
        data = answer.json()
        assert data["instance_guid"] == guid
        assert data["state"] == "requested"
        assert "waiting for its answer" in data["why"]
        assert data["title"] == technical_title(PREFIX, guid)
        assert ("request", "ok") in {(e["action"], e["outcome"]) for e in data["events"]}
        assert all(isinstance(e["tick"], int) for e in data["events"])
    unknown = daemon.get("/instances/" + quote("customer-404______1", safe=""))
    assert (unknown.status, unknown.json()) == (404, {"error": "unknown instance"})
    assert daemon.get("/nowhere").status == 404

    # the endpoint follows the next ticks: the CDN publishes, the instance goes live
    guid = next(iter(customers))
    entry = next(e for e in cdn_site.technical_entries() if e["title"] == technical_title(PREFIX, guid))
    cdn_site.publish_as_cdn(entry["instance_guid"], {"domain": "c0.cdn.example"})
    live = wait_for(
        lambda: (d := daemon.get("/instances/" + quote(guid, safe="")).json())["state"] == "live" and d,
        "the instance to turn live", daemon=daemon,
    )
    assert live["why"].startswith("live") and live["published"] == {"domain": "c0.cdn.example"}
    assert daemon.stop() == 0


# -- 1. readiness follows the master -----------------------------------------------


def test_readyz_reports_failed_ticks_until_the_master_answers(cdn_site: CdnSite, tmp_path: Path, spawn, engine_config):
    guid = next(iter(add_customers(cdn_site, 1)))
    cdn_site.proxy.stop()  # the master is down before the daemon starts
    config = engine_config(cdn_site, tmp_path)
    daemon = spawn(config)

    # 503 at once ("the first tick has not finished"), then for the failed tick
    not_ready = wait_for(
        lambda: (r := daemon.try_get("/readyz")) is not None and r.status == 503
        and "tick(s) failed" in r.json()["reason"] and r,
        "GET /readyz -> 503 for a failed tick", 20, daemon,
    )
    reason = not_ready.json()
    assert reason["ready"] is False and "master" in reason["reason"], reason
    assert daemon.get("/healthz").status == 200  # alive all the same
    status = daemon.get("/status").json()
    assert status["ready"] is False and status["consecutive_failed_ticks"] >= 1
    assert status["progress"]["last"]["ok"] is False
    families = metric_families(daemon.get("/metrics").body.decode())
    assert sample(families, "cdnreq_consecutive_failed_ticks") >= 1
    assert sample(families, "cdnreq_ticks_total", result="failed") >= 1
    assert sample(families, "cdnreq_last_successful_tick_timestamp_seconds") == 0
    failed = daemon.logged("tick failed")
    assert failed and all("master" in e["error"] for e in failed)
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 1, shown.stderr  # not ready
    assert "NOT READY" in shown.stdout and "tick(s) failed" in shown.stdout

    cdn_site.proxy.start()  # same port, same database
    ready = daemon.wait_status("/readyz", 200)
    assert ready.json()["ready"] is True
    families = metric_families(daemon.get("/metrics").body.decode())
    assert sample(families, "cdnreq_consecutive_failed_ticks") == 0
    assert daemon.get("/status").json()["consecutive_failed_ticks"] == 0
    assert [e["title"] for e in cdn_site.technical_entries()] == [technical_title(PREFIX, guid)]
    assert daemon.stop() == 0


# -- 1 and 5. a tick that hangs: readiness before the first tick, stop timeout, second signal


def test_first_tick_in_flight_then_stop_times_out_the_calls(black_hole: str, tmp_path: Path, spawn, engine_config):
    site = offline_site(tmp_path, black_hole)
    config = engine_config(site, tmp_path, master={"timeout_s": 60.0}, daemon={"shutdown_timeout_s": 1.0})
    daemon = spawn(config)

    # on PostgreSQL the node reads the store inside its first tick (it took the
    # lease), before the listing: running, with no phase yet for a moment
    running = wait_for(
        lambda: (r := daemon.try_get("/status")) is not None and r.json()["progress"]["phase"] == "listing" and r.json(),
        "the first tick to be listing", daemon=daemon,
    )
    assert running["progress"]["running"] and running["progress"]["last"] is None
    not_ready = daemon.get("/readyz")
    assert not_ready.status == 503
    assert not_ready.json() == {"ready": False, "reason": "the first tick has not finished"}
    families = metric_families(daemon.get("/metrics").body.decode())
    assert sample(families, "cdnreq_master_calls_in_flight") == 1
    assert sample(families, "cdnreq_ticks_total", result="ok") == 0

    daemon.wait_started()
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.process.wait(timeout=1.0 + 10)
    assert code == 0, daemon.stderr()
    assert time.monotonic() - began < 1.0 + 10
    assert daemon.logged("calls still in flight after the shutdown timeout; cancelling")
    assert daemon.logged("stopped")


def test_a_tick_cancelled_at_shutdown_is_recorded(black_hole: str, tmp_path: Path, spawn, engine_config):
    site = offline_site(tmp_path, black_hole)
    config = engine_config(site, tmp_path, master={"timeout_s": 60.0}, daemon={"shutdown_timeout_s": 0.5})
    daemon = spawn(config)
    daemon.wait_started()
    wait_for(
        lambda: (r := daemon.try_get("/status")) is not None and r.json()["progress"]["running"],
        "the first tick to be running", daemon=daemon,
    )
    assert daemon.stop() == 0
    assert daemon.logged("calls still in flight after the shutdown timeout; cancelling")
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 1 and "daemon: not running" in shown.stdout, shown
    last = next(line for line in shown.stdout.splitlines() if line.startswith("last tick"))
    assert "None" not in last, last
    assert "INTERRUPTED" in last, last
    rows = storeread.query(config, "SELECT id, finished_at, result FROM ticks")
    assert rows, "no tick recorded"
    assert all(finished is not None and result == "interrupted" for _, finished, result in rows), rows
    assert daemon.logged("tick interrupted")


def test_second_signal_exits_at_once(black_hole: str, tmp_path: Path, spawn):
    site = offline_site(tmp_path, black_hole)
    config = config_for(site, tmp_path, master={"timeout_s": 60.0}, daemon={"shutdown_timeout_s": 60.0})
    daemon = spawn(config)
    daemon.wait_started()
    wait_for(
        lambda: (r := daemon.try_get("/status")) is not None and r.json()["progress"]["running"],
        "the first tick to be running", daemon=daemon,
    )
    daemon.signal(signal.SIGTERM)
    daemon.wait_logged("stopping: no new tick, finishing the calls in flight")
    assert daemon.process.poll() is None  # waiting for the call in flight (up to 60 s)
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.process.wait(timeout=10)
    assert time.monotonic() - began < 10
    assert code == 128 + signal.SIGTERM
    assert daemon.logged("second stop signal, exiting at once")


# -- 2. the CLI, with and without the daemon ------------------------------------------


def test_cli_status_and_explain_ask_the_daemon_then_the_database(
    cdn_site: CdnSite, tmp_path: Path, spawn, engine_config
):
    customers = add_customers(cdn_site, 2)
    odd = cdn_site.add_customer("a/b c", {"url": "https://ab.example"})
    config = engine_config(cdn_site, tmp_path, daemon={"tick_interval_s": 5.0})
    daemon = spawn(config)
    daemon.wait_status("/readyz", 200)
    guid = next(iter(customers))

    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 0, shown.stderr
    assert f"(pid {daemon.pid}): ready" in shown.stdout, shown.stdout
    assert "last tick" in shown.stdout and "3 instances: 3 requested" in shown.stdout
    as_json = cdnreq("status", "--config", config, "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["daemon"] is not None
    assert document["daemon"]["pid"] == daemon.pid and document["daemon"]["ready"] is True
    assert document["daemon"]["progress"]["last"]["ok"] is True
    assert {row["instance_guid"] for row in document["instances"]} == {*customers, odd}

    running_answers = {}
    for who in (guid, odd):
        explained = cdnreq("explain", who, "--config", config)
        assert explained.returncode == 0, explained.stderr
        assert explained.stdout.startswith(f"{who}: requested\n"), explained.stdout
        assert "requested on the technical CDN; waiting for its answer" in explained.stdout
        assert "recent events" in explained.stdout and "request ok" in explained.stdout
        # explain asks the daemon: the same document as the endpoint, unless a tick
        # (every 5 s) changed the instance between the two reads; then read both again
        deadline = time.monotonic() + 30
        while True:
            as_json = cdnreq("explain", who, "--config", config, "--json")
            running_answers[who] = json.loads(as_json.stdout)
            served = daemon.get("/instances/" + quote(who, safe="")).json()
            if running_answers[who] == served or time.monotonic() > deadline:
                break
        assert running_answers[who]["state"] == "requested"
        assert running_answers[who] == served
    nobody = cdnreq("explain", "nobody______1", "--config", config)
    assert nobody.returncode == 1 and "no instance 'nobody______1' is known" in nobody.stderr

    assert daemon.stop() == 0

    for who in (guid, odd):
        explained = cdnreq("explain", who, "--config", config)
        assert explained.returncode == 0, explained.stderr
        assert explained.stdout.startswith(f"{who}: requested\n")
        assert "waiting for its answer" in explained.stdout
        from_store = json.loads(cdnreq("explain", who, "--config", config, "--json").stdout)
        assert from_store["why"] == running_answers[who]["why"]
        # the same events (the daemon may have logged a few more polls since)
        stored = {e["id"]: e for e in from_store["events"]}
        assert stored and all(stored[e["id"]] == e for e in running_answers[who]["events"] if e["id"] in stored)
        assert from_store["events"][0]["id"] >= running_answers[who]["events"][0]["id"]
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 1, shown.stderr  # no daemon answers
    assert "daemon: not running" in shown.stdout
    assert "last tick" in shown.stdout and "3 instances: 3 requested" in shown.stdout
    document = json.loads(cdnreq("status", "--config", config, "--json").stdout)
    assert document["daemon"] is None and len(document["instances"]) == 3


# -- 3. SIGHUP ------------------------------------------------------------------------


def test_sighup_reloads_a_good_file_and_refuses_a_bad_one(cdn_site: CdnSite, tmp_path: Path, spawn, engine_config):
    first = cdn_site.add_customer("first", {"url": "https://first.example"})
    config = engine_config(cdn_site, tmp_path)
    listen = listen_of(config)
    daemon = spawn(config)
    daemon.wait_started()
    daemon.wait_status("/readyz", 200)
    assert [e["title"] for e in cdn_site.technical_entries()] == [technical_title(PREFIX, first)]

    # a good file: a new request prefix applies from the next tick
    engine_config(cdn_site, tmp_path, technical_cdn={"request_prefix": "hup-"}, daemon={"listen": listen})
    daemon.signal(signal.SIGHUP)
    daemon.wait_logged("configuration reloaded; applies from the next tick")
    second = cdn_site.add_customer("second", {"url": "https://second.example"})
    wait_for(
        lambda: len(cdn_site.technical_entries()) == 2, "the second customer's entry", daemon=daemon
    )
    assert sorted(e["title"] for e in cdn_site.technical_entries()) == sorted(
        [technical_title(PREFIX, first), technical_title("hup-", second)]
    )

    # a bad file (a typo'd key): refused, the daemon keeps running and ticking
    engine_config(cdn_site, tmp_path, daemon={"listen": listen, "tick_intervall_s": 1.0})
    daemon.signal(signal.SIGHUP)
    (refused,) = daemon.wait_logged("configuration refused, keeping the running one")
    assert "[daemon].tick_intervall_s" in refused["error"], refused
    assert refused["level"] == "error"
    tick = daemon.last_tick_id()
    after = daemon.wait_tick_after(tick)
    daemon.wait_tick_after(after["tick"])
    assert daemon.process.poll() is None
    assert daemon.get("/readyz").status == 200

    # [daemon].listen changes only after a restart: said so, and the old address stays
    moved = engine_config(cdn_site, tmp_path, daemon={"listen": f"127.0.0.1:{free_port()}"})
    daemon.signal(signal.SIGHUP)
    (restart,) = daemon.wait_logged("these changes apply after a restart")
    assert restart["keys"] == ["[daemon].listen"] and restart["level"] == "warning"
    daemon.wait_logged("configuration reloaded; applies from the next tick", count=2)
    assert daemon.get("/healthz").status == 200
    port = int(listen_of(moved).rpartition(":")[2])  # not served before a restart
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    daemon.wait_tick_after(daemon.last_tick_id())

    assert daemon.stop() == 0
    daemon.lines()  # every line is JSON
    assert daemon.logged("stopped")


def test_sighup_applies_a_new_logging_level(cdn_site: CdnSite, tmp_path: Path, spawn):
    add_customers(cdn_site, 1)
    config = config_for(cdn_site, tmp_path)
    listen = listen_of(config)
    daemon = spawn(config)
    daemon.wait_started()
    daemon.wait_tick_after(0)
    config_for(cdn_site, tmp_path, daemon={"listen": listen}, logging={"format": "json", "level": "warning"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_logged("configuration reloaded; applies from the next tick")
    assert not daemon.logged("these changes apply after a restart")
    reloaded_at = daemon.last_tick_id()
    # let two full ticks run after the reload (counted on the endpoint, not the log)
    wait_for(
        lambda: (daemon.get("/status").json()["progress"]["last"] or {}).get("tick", 0) >= reloaded_at + 2,
        "two ticks after the reload", daemon=daemon,
    )
    late_info = [e for e in daemon.lines() if e.get("level") == "info" and e.get("tick", 0) > reloaded_at + 1]
    assert late_info == [], f"info lines still logged at level warning: {late_info[:3]}"
    assert daemon.stop() == 0


def test_sighup_applies_new_nameservers(cdn_site: CdnSite, tmp_path: Path, spawn, devdns: DevDns):
    guid = cdn_site.add_customer("shop", {"url": "https://shop.example", "custom_domain": "shop.example.com"})
    config = config_for(cdn_site, tmp_path)  # [dns].nameservers: a dead loopback port
    listen = listen_of(config)
    daemon = spawn(config)
    daemon.wait_started()
    challenge = wait_for(
        lambda: (r := daemon.try_get("/instances/" + quote(guid, safe=""))) is not None
        and r.status == 200 and r.json()["challenge"],
        "the challenge to be issued", daemon=daemon,
    )
    devdns.set_txt(f"{LABEL}.shop.example.com", challenge["txt_value"])
    config_for(cdn_site, tmp_path, daemon={"listen": listen}, dns={"nameservers": [devdns.address]})
    daemon.signal(signal.SIGHUP)
    daemon.wait_logged("configuration reloaded; applies from the next tick")
    reloaded_at = daemon.last_tick_id()
    daemon.wait_tick_after(daemon.wait_tick_after(reloaded_at)["tick"])  # two full ticks later
    assert devdns.queries_for(f"{LABEL}.shop.example.com") >= 1, "the new nameserver was never asked"
    assert [e["title"] for e in cdn_site.technical_entries()] == [technical_title(PREFIX, guid)]
    assert daemon.stop() == 0


# -- 4. SIGTERM with calls in flight ---------------------------------------------------


REQUESTS_OK = "SELECT instance_guid FROM events WHERE action = 'request' AND outcome = 'ok'"


def test_sigterm_mid_tick_commits_and_once_finishes_the_rest(cdn_site: CdnSite, tmp_path: Path, spawn, engine_config):
    customers = add_customers(cdn_site, 60)
    timeout_s = 5.0
    config = engine_config(cdn_site, tmp_path, daemon={"concurrency": 1, "shutdown_timeout_s": timeout_s})
    daemon = spawn(config)
    daemon.wait_started()
    wait_for(lambda: len(cdn_site.technical_entries()) >= 5, "some technical entries", daemon=daemon)
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        code = daemon.process.wait(timeout=timeout_s + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {timeout_s + 10} s of SIGTERM:\n{daemon.stderr()[-4000:]}")
    assert code == 0, daemon.stderr()
    assert time.monotonic() - began < timeout_s + 10
    before = [e["title"] for e in cdn_site.technical_entries()]
    assert 5 <= len(before) < 60, f"{len(before)} entries: the tick was not interrupted, nothing was tested"
    assert daemon.logged("stopping: no new tick, finishing the calls in flight")
    (summary,) = daemon.logged("tick interrupted")  # it still ends cleanly, and says it was cut short
    assert summary["results"].get("request:ok", 0) == len(before), summary
    assert summary["level"] == "warning" and summary["error"].startswith("interrupted"), summary
    assert not daemon.logged("tick failed") and not daemon.logged("tick done")

    if "postgresql://" not in config.read_text():
        with sqlite3.connect(daemon.database) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.close()
    unfinished = storeread.query(config, "SELECT id FROM ticks WHERE finished_at IS NULL")
    results = [r for (r,) in storeread.query(config, "SELECT result FROM ticks ORDER BY id")]
    committed = storeread.query(config, REQUESTS_OK)
    assert unfinished == [] and results == ["interrupted"], results
    # every request the master acknowledged was committed before the exit
    assert sorted(technical_title(PREFIX, g) for (g,) in committed) == sorted(before)

    result = cdnreq("once", "--config", config, timeout=120)
    assert result.returncode == 0, result.stderr
    titles = [e["title"] for e in cdn_site.technical_entries()]
    assert sorted(titles) == sorted(technical_title(PREFIX, g) for g in customers)
    assert len(set(titles)) == len(titles) == 60
    requests = Counter(
        g for (g,) in storeread.query(config, REQUESTS_OK)
    )
    assert requests == Counter({g: 1 for g in customers}), "some customer was requested twice or never"
    for guid in list(customers)[:3] + list(customers)[-3:]:
        assert cdn_site.customer(guid)["connection_parameters"] == IN_PROGRESS


# -- 6. systemd notify ----------------------------------------------------------------


def test_systemd_notify_ready_status_watchdog_stopping(cdn_site: CdnSite, tmp_path: Path, spawn, engine_config):
    add_customers(cdn_site, 1)
    config = engine_config(cdn_site, tmp_path)
    # AF_UNIX paths are short (108 bytes): a private directory under /tmp if tmp_path is too long
    directory = tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="cdnreq-notify-"))
    path = directory / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = clean_env(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
        daemon = spawn(config, env=env)
        received: list[str] = []

        def receive_until(predicate: Callable[[list[str]], bool], what: str, timeout: float = 20) -> None:
            deadline = time.monotonic() + timeout
            while not predicate(received):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out waiting for {what}; received {received}\n{daemon.stderr()[-3000:]}")
                sock.settimeout(min(left, 0.5))
                try:
                    received.append(sock.recv(4096).decode())
                except TimeoutError:
                    assert daemon.process.poll() is None or what == "STOPPING=1", daemon.stderr()

        receive_until(lambda r: any(m.startswith("STATUS=tick ") for m in r), "a STATUS line")
        receive_until(lambda r: r.count("WATCHDOG=1") >= 3, "three WATCHDOG=1 pings")
        assert received[0] == "READY=1", received
        status = next(m for m in received if m.startswith("STATUS="))
        assert " ok in " in status and "FAILED" not in status, status
        tick = int(status.split()[1])
        assert tick >= 1
        daemon.signal(signal.SIGTERM)
        receive_until(lambda r: "STOPPING=1" in r, "STOPPING=1")
        assert daemon.process.wait(timeout=20) == 0
    if directory != tmp_path:
        path.unlink(missing_ok=True)
        directory.rmdir()


# -- 7. the lock ------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_database_is_refused(cdn_site: CdnSite, tmp_path: Path, spawn):
    add_customers(cdn_site, 1)
    config = config_for(cdn_site, tmp_path)
    daemon = spawn(config)
    daemon.wait_status("/readyz", 200)
    # the same database behind another listen address, so only the lock can refuse it
    other = config_for(cdn_site, tmp_path, name="other.toml", daemon={"listen": f"127.0.0.1:{free_port()}"})
    second = cdnreq("run", "--config", other, timeout=30)
    assert second.returncode == 3, (second.returncode, second.stderr)
    assert "another cdnreq" in second.stderr and "lock" in second.stderr
    assert f"held by pid {daemon.pid}" in second.stderr
    assert daemon.process.poll() is None and daemon.get("/healthz").status == 200
    assert daemon.stop() == 0


# -- 8. logs ------------------------------------------------------------------------------


def test_json_logs_carry_the_tick_and_the_instance(cdn_site: CdnSite, tmp_path: Path, spawn):
    customers = add_customers(cdn_site, 2)
    # slapproxy answers 403 to a shared request of a software type nobody hosts
    config = config_for(cdn_site, tmp_path, technical_cdn={"software_type": "nosuch"})
    daemon = spawn(config)
    failing = daemon.wait_logged("instance failing", count=2)
    summary = daemon.wait_tick_after(0)
    daemon.wait_tick_after(summary["tick"])
    assert daemon.stop() == 0

    lines = daemon.lines()  # every stderr line is one JSON object
    assert lines and all({"event", "level", "timestamp"} <= set(e) for e in lines)
    untagged = [e for e in lines if e["event"] not in LIFECYCLE and not isinstance(e.get("tick"), int)]
    assert untagged == [], f"tick-time lines without `tick`: {untagged}"
    assert {e["instance_guid"] for e in failing} == set(customers)
    for line in failing:
        assert line["tick"] == summary["tick"] and line["level"] == "warning"
        assert "403" in line["error"] and line["action"] == "request"
    assert summary["results"] == {"request:failed": 2}
    for guid in customers:
        published = cdn_site.customer(guid)["connection_parameters"]
        assert "request-error-list" in published, published


# -- 9. a listener reachable from other hosts needs a token --------------------------------


def test_non_loopback_listen_needs_a_token(tmp_path: Path, spawn):
    site = offline_site(tmp_path)  # no master: ticks fail, the endpoint serves anyway
    port = free_port()
    refused = config_for(site, tmp_path, name="open.toml", daemon={"listen": f"0.0.0.0:{port}"})
    result = cdnreq("run", "--config", refused, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "[daemon].listen" in result.stderr and "token_file" in result.stderr

    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    short = config_for(site, tmp_path, name="short.toml", daemon={"listen": f"0.0.0.0:{port}", "token_file": token_file})
    result = cdnreq("run", "--config", short, timeout=30)
    assert result.returncode == 2 and "[daemon].token_file" in result.stderr, result.stderr

    token = "s3cret-token-0123456789abcdef"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = config_for(site, tmp_path, daemon={"listen": f"0.0.0.0:{port}", "token_file": token_file})
    daemon = spawn(config)
    health = daemon.wait_status("/healthz", 200)  # open without the token
    assert health.json() == {"alive": True}
    for path in ("/status", "/readyz", "/metrics", "/instances/x______1", "/nowhere"):
        denied = daemon.get(path)
        assert denied.status == 401, (path, denied.status)
        assert denied.json() == {"error": "unauthorized"} and denied.headers["WWW-Authenticate"] == "Bearer"
        assert daemon.get(path, token="wrong-token-0123456789").status == 401
    assert daemon.get("/status", token=token).status == 200
    assert daemon.get("/metrics", token=token).status == 200
    assert daemon.get("/instances/x______1", token=token).status == 404
    shown = cdnreq("status", "--config", config)  # the CLI reads the token file
    assert shown.returncode == 1, shown.stderr  # no master: not ready
    assert f"(pid {daemon.pid}): NOT READY" in shown.stdout, shown.stdout
    assert daemon.stop() == 0

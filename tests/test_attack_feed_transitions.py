"""Attacks on the change feed (issue 16): does every customer-visible
transition make exactly one change, and do payloads keep secrets out?

A real `cdnreq run` against the master double (bench/double) on loopback,
read through GET /changes with the operator's token."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hanodes import TOKEN, http, until, write_token
from test_faults_hostile import ThreadedDouble, write_config

from bench.double import Double

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


class Daemon:
    """`cdnreq run` with the operator's token, against `served` (a ThreadedDouble)."""

    def __init__(self, tmp: Path, served: ThreadedDouble, **sections: Any):
        daemon = {"token_file": str(write_token(tmp)), "retry_base_s": 0.2, "retry_max_s": 1.0,
                  **sections.pop("daemon", {})}
        self.config = write_config(tmp / "cdnreq.toml", {"url": served.url}, tmp / "cdnreq.db", daemon=daemon,
                                   domain={"retention_s": 0, **sections.pop("domain", {})}, **sections)
        self.base = "http://" + tomllib.loads(self.config.read_text())["daemon"]["listen"]
        self.log = tmp / "daemon.log"
        self.process = subprocess.Popen([sys.executable, "-m", "cdnreq.cli", "run", "--config", str(self.config)],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        until(lambda: http(f"{self.base}/healthz") is not None or self.process.poll() is not None, "endpoint")
        assert self.process.poll() is None, self.tail()

    def changes(self, query: str = "", token: str | None = TOKEN) -> list[dict]:
        answer = http(f"{self.base}/changes?limit=1000&{query}", token=token)
        assert answer is not None and answer[0] == 200, answer
        return answer[1]["changes"]

    def kinds_of(self, guid: str) -> list[str]:
        return [c["kind"] for c in self.changes() if c["instance_guid"] == guid]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> float:
        """SIGTERM; the seconds it took to exit."""
        began = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.monotonic() - began


@pytest.fixture
def double():
    master = Double(publish_after="immediately")
    with ThreadedDouble(master) as served:
        yield master, served


def test_an_update_of_a_live_entry_does_not_make_it_live_a_second_time(tmp_path: Path, double):
    """README: `live` is "the CDN's answer reached the customer for the first
    time". A parameter update on a live entry goes through
    transitions.requested() (phase REQUESTED), then polled() makes it LIVE
    again, and decide/changes.of_record emits `live` once more: billing
    counting activations bills the customer twice for each update."""
    master, served = double
    master.add("SOFTINST-1", {"url": "https://one.example"})
    daemon = Daemon(tmp_path, served)
    try:
        until(lambda: "live" in daemon.kinds_of("SOFTINST-1"), "live", 30)
        served.run(lambda: master.change("SOFTINST-1", {"url": "https://one.example/v2"}))
        until(lambda: "updated" in daemon.kinds_of("SOFTINST-1"), "updated", 30)
        # the next ticks read the new answer back and relay it
        until(lambda: (r := http(f"{daemon.base}/instances/SOFTINST-1")) and r[1].get("state") == "live"
              and r[1].get("last_action") != "update", "live again", 30)
        # (the poll's record and its changes are written in one transaction: nothing to wait for)
        kinds = daemon.kinds_of("SOFTINST-1")
    finally:
        daemon.stop()
    assert kinds == ["live", "updated"], kinds


def test_live_is_not_announced_before_the_customer_was_shown_the_answer(tmp_path: Path, double):
    """README: `live` is when "the CDN's answer reached the customer". When
    publishing the answer to the customer fails (the master answers 500),
    reconcile/execute.relay returns failure() with the polled LIVE record, and
    the committer's of_outcome emits `live` although the customer saw nothing;
    once the publication finally succeeds, no change is written (already LIVE)."""
    from bench.double.master import PUBLISH
    from bench.double.wire import error_body

    master, served = double
    real_publish = master._handlers[PUBLISH]
    served.run(lambda: master._handlers.__setitem__(PUBLISH, lambda body: (500, error_body(500, "down"))))
    master.add("SOFTINST-1", {"url": "https://one.example"})
    daemon = Daemon(tmp_path, served)
    try:
        until(lambda: "publish" in daemon.tail() and master.calls[PUBLISH] >= 2, "publication attempts", 30)
        early = daemon.kinds_of("SOFTINST-1")
        assert "SOFTINST-1" not in master.published
        served.run(lambda: master._handlers.__setitem__(PUBLISH, real_publish))
        until(lambda: "SOFTINST-1" in master.published, "published at last", 30)
        until(lambda: daemon.kinds_of("SOFTINST-1").count("live") >= 1, "live", 10)
        later = daemon.kinds_of("SOFTINST-1")
    finally:
        daemon.stop()
    assert "live" not in early, f"live announced while the customer was shown nothing: {early}"
    assert later.count("live") == 1, later


def test_a_refusal_does_not_carry_the_backends_credentials(tmp_path: Path, double):
    """README: "A payload never carries a parameter's value (an ssl_key or a
    backend's credentials may be among them)". A backend URL refused for its
    address is quoted whole in the error the customer is shown, and
    decide/changes._told copies `request-error-list` into the `refused`
    payload: the backend's password goes to every consumer (and webhook)."""
    master, served = double
    password = "Hunter2-TOPSECRET-backend-pw"
    master.add("SOFTINST-1", {"url": f"https://admin:{password}@10.1.2.3/"})
    daemon = Daemon(tmp_path, served)
    try:
        until(lambda: "refused" in daemon.kinds_of("SOFTINST-1"), "refused", 30)
        refused = [c for c in daemon.changes("kind=refused")]
    finally:
        daemon.stop()
    assert refused and refused[0]["payload"]["errors"], refused
    assert password not in json.dumps(refused), refused[0]["payload"]


def test_held_is_written_once_per_hold_even_when_more_customers_leave(tmp_path: Path, double):
    """README: `held` is "once per hold". decide/removals.held_records marks a
    held record again whenever the hold's reason text changes, and the reason
    counts the departures ("5 of 10 known instances are gone..."): one more
    customer leaving re-announces `held` for every instance already held."""
    master, served = double
    guids = [f"SOFTINST-{i}" for i in range(10)]
    for g in guids:
        master.add(g, {"url": f"https://{g.lower()}.example"})
    daemon = Daemon(tmp_path, served)
    try:
        until(lambda: len(daemon.changes("kind=live")) == 10, "ten live", 40)
        for g in guids[:5]:
            served.run(lambda g=g: master.remove(g))
        until(lambda: len(daemon.changes("kind=held")) == 5, "five held", 30)
        served.run(lambda: master.remove(guids[5]))
        until(lambda: guids[5] in {c["instance_guid"] for c in daemon.changes("kind=held")}, "the sixth held", 30)
        held = [c["instance_guid"] for c in daemon.changes("kind=held")]
    finally:
        daemon.stop()
    assert sorted(held) == sorted(guids[:6]), held


def test_idle_ticks_write_nothing_to_the_feed(tmp_path: Path, double):
    """Live, refused and DNS-pending customers, then ticks with nothing new:
    the feed's last id does not move (no change re-announced each tick)."""
    master, served = double
    master.add("SOFTINST-live", {"url": "https://one.example"})
    master.add("SOFTINST-bad", {"url": "gopher://one.example"})
    master.add("SOFTINST-dns", {"url": "https://two.example", "custom_domain": "shop.example"})
    master.add("SOFTINST-stopped", {"url": "https://three.example"}, state="stopped")
    daemon = Daemon(tmp_path, served)
    try:
        until(lambda: {"SOFTINST-live", "SOFTINST-bad", "SOFTINST-dns", "SOFTINST-stopped"}
              <= {c["instance_guid"] for c in daemon.changes()}, "each customer in the feed", 30)
        settled = until(lambda: (last := http(f"{daemon.base}/changes")[1]["last"]) == len(daemon.changes())
                        and last, "the first changes", 10)
        time.sleep(3.0)  # an observation window: ten idle ticks (0.3 s) must write nothing
        after = http(f"{daemon.base}/changes")[1]["last"]
        shown = daemon.changes()
    finally:
        daemon.stop()
    assert after == settled, [(c["instance_guid"], c["kind"]) for c in shown]

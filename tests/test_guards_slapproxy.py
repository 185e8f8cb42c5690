"""Issue 10 #12 end to end: a master that suddenly rewrites the whole fleet
(every customer's `url` gone) against a real slapproxy, through the `cdnreq`
command as operators run it. Nothing is updated until the same change has been
seen for [daemon].confirm_ticks ticks or an operator approves it; the hold is
shown by `cdnreq status`, /status, /readyz and /metrics; an operator's small
change goes through at once."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_faults_master import _OPENER, wait_for
from test_reconcile_slapproxy import CDNREQ, cdnreq, load, once

from devtools.devmaster import CdnSite, write_config
from cdnreq.model import Phase

pytestmark = pytest.mark.slapproxy

CUSTOMERS = 20


def url_of(i: int) -> str:
    return f"https://backend-{i}.example"


def entries(site: CdnSite) -> dict[str, dict]:
    return {e["title"]: dict(e["parameters"]) for e in site.technical_entries()}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest, cdn_site: CdnSite, tmp_path: Path) -> tuple[CdnSite, Path, Path]:
    """Twenty live customers, with the default guards, on each engine."""
    database = tmp_path / "state" / "cdnreq.db"
    store = {} if request.param == "sqlite" else {
        "url": request.getfixturevalue("pg_url"), "sslmode": "disable", "lease_s": 3.0, "renew_s": 0.5,
    }
    config = write_config(tmp_path / "cdnreq.toml", cdn_site, database=database, domain={"retention_s": 0},
                          store=store)
    make_live(cdn_site, config)
    return cdn_site, config, database


def make_live(site: CdnSite, config: Path) -> None:
    """CUSTOMERS customers requested, published by the CDN and live (two `cdnreq once`)."""
    for i in range(CUSTOMERS):
        site.add_customer(f"customer-{i}", {"url": url_of(i)})
    assert once(config).returncode == 0
    for entry in site.technical_entries():
        site.publish_as_cdn(entry["instance_guid"], {"domain": f"{entry['title']}.cdn.example"})
    assert once(config).returncode == 0
    records, _ = load(config)
    assert len(records) == CUSTOMERS and all(r.phase is Phase.LIVE for r in records.values())


def authorized_get(token: str):
    """A GET of the daemon's endpoint with its token: (status, JSON) or None."""

    def get(url: str):
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with _OPENER.open(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    return get


def empty_every_url(site: CdnSite) -> None:
    for i in range(CUSTOMERS):
        site.add_customer(f"customer-{i}", {"enable_cache": "true"})


def test_a_fleet_without_url_is_held_until_seen_for_confirm_ticks(fleet):
    site, config, database = fleet
    before = entries(site)
    empty_every_url(site)
    for seen in (1, 2):  # confirm_ticks = 3: held for two ticks
        result = once(config)
        assert result.returncode == 0, result.stderr
        assert entries(site) == before, f"updated after {seen} tick(s)"
        if seen == 1:
            assert "updates held" in result.stderr and "max_update_fraction" in result.stderr
        status = cdnreq("status", "--config", str(config))
        assert f"UPDATES HELD: {CUSTOMERS} update(s)" in status.stdout, status.stdout
        assert f"seen {seen} of 3 ticks" in status.stdout and "cdnreq approve --fingerprint" in status.stdout
    records, events = load(config)
    assert sorted(e.instance_guid for e in events if e.action == "hold") == sorted(records)  # once each
    assert all(r.phase is Phase.LIVE for r in records.values())

    result = once(config)  # the third tick sees it again: applied
    assert result.returncode == 0, result.stderr
    after = entries(site)
    assert len(after) == CUSTOMERS and all(p == {"enable_cache": "true"} for p in after.values()), after
    assert "UPDATES HELD" not in cdnreq("status", "--config", str(config)).stdout
    refused = cdnreq("approve", "--config", str(config))  # no daemon: under the store's lock
    assert refused.returncode == 1 and "nothing is held" in refused.stderr


def test_approve_applies_held_updates_while_the_daemon_runs(fleet, tmp_path: Path):
    site, config, database = fleet
    nothing = cdnreq("approve", "--config", str(config))
    assert nothing.returncode == 1 and "nothing is held" in nothing.stderr

    # an operator's own change of one customer in twenty: applied at once
    site.add_customer("customer-0", {"url": "https://moved.example"})
    assert once(config).returncode == 0
    assert entries(site)[next(t for t in entries(site) if "customer-0" in t)] == {"url": "https://moved.example"}

    # the daemon, with a streak it never reaches: only an approval lets the change through;
    # an approval sent to a daemon needs its token (cdnreq/commands/actions.py)
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    store = tomllib.loads(config.read_text()).get("store", {})
    daemon = write_config(
        tmp_path / "daemon.toml", site, database=database, domain={"retention_s": 0},
        daemon={"tick_interval_s": 0.3, "confirm_ticks": 1000, "token_file": str(token)}, store=store,
    )  # fmt: skip
    http_get = authorized_get("t" * 32)
    endpoint = "http://127.0.0.1:" + tomllib.loads(daemon.read_text())["daemon"]["listen"].rpartition(":")[2]
    before = entries(site)
    empty_every_url(site)
    stderr = tmp_path / "daemon.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen([CDNREQ, "run", "--config", str(daemon)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        status = wait_for(
            lambda: (r := http_get(endpoint + "/status")) and r[0] == 200 and r[1].get("held_updates") and r[1],
            "/status showing the held updates", process, stderr)  # fmt: skip
        held = status["held_updates"]
        assert held["count"] == CUSTOMERS and held["needed"] == 1000 and "max_update_fraction" in held["reason"]
        code, ready = http_get(endpoint + "/readyz")
        assert code == 200 and "updates held" in ready["reason"], ready
        request = urllib.request.Request(endpoint + "/metrics", headers={"Authorization": "Bearer " + "t" * 32})
        with _OPENER.open(request, timeout=5) as answer:
            metrics = answer.read().decode()
        assert re.search(rf"^cdnreq_held_updates {CUSTOMERS}(\.0)?$", metrics, re.MULTILINE), metrics[:3000]
        wait_for(lambda: (r := http_get(endpoint + "/status")) and r[1]["held_updates"]["streak"] >= 3,
                 "a few ticks of hold", process, stderr)  # fmt: skip
        assert entries(site) == before

        approved = cdnreq("approve", "--config", str(daemon))
        assert approved.returncode == 0, approved.stderr
        assert f"approved {CUSTOMERS} update(s)" in approved.stdout and "customer-" in approved.stdout
        wait_for(lambda: all(p == {"enable_cache": "true"} for p in entries(site).values()),
                 "the approved updates applied", process, stderr)  # fmt: skip
        wait_for(lambda: (r := http_get(endpoint + "/status")) and r[1].get("held_updates") is None,
                 "the hold cleared", process, stderr)  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert '"updates held"' in stderr.read_text() and '"held updates released"' in stderr.read_text()

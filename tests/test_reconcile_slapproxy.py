"""End to end against a real slapproxy: the `cdnreq` command, as operators run it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hanodes import when_the_lease_is_free

from cdnreq.configfile import load_config
from cdnreq.service.opening import open_store
from devtools.devmaster import CdnSite, MasterLog, write_config
from cdnreq.model import Phase
from cdnreq.decide.transitions import IN_PROGRESS
from cdnreq.decide.titles import technical_title
from cdnreq.store import Store
from tests.storeread import events_since

pytestmark = pytest.mark.slapproxy

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
LIST = "slapos.allDocs.v0.instance_node_instance_list"


def cdnreq(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CDNREQ, *args], capture_output=True, text=True, timeout=timeout)


def once(config: Path) -> subprocess.CompletedProcess:
    result = cdnreq("once", "--config", str(config))
    return result


def load(config: Path):
    """The store's records and events, read as `cdnreq status` reads them (either engine)."""
    async def go():
        store = await open_store(load_config(config), lock=False)
        try:
            return await store.load(), [e for _, e in await events_since(store, 0, 100000)]
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def setup(request: pytest.FixtureRequest, cdn_site: CdnSite, tmp_path: Path):
    """The same behaviour on each engine: SQLite, and PostgreSQL (one node, short lease)."""
    database = tmp_path / "state" / "cdnreq.db"
    store = {} if request.param == "sqlite" else {
        "url": request.getfixturevalue("pg_url"), "sslmode": "disable", "lease_s": 3.0, "renew_s": 0.5,
    }
    config = write_config(tmp_path / "cdnreq.toml", cdn_site, database=database, domain={"retention_s": 0},
                          store=store)
    return cdn_site, config, database


def on_postgresql(config: Path) -> bool:
    return "postgresql://" in config.read_text()


def once_when_the_lease_is_free(config: Path) -> subprocess.CompletedProcess:
    return when_the_lease_is_free(lambda: once(config), config)


def add_customers(site: CdnSite, n: int) -> dict[str, str]:
    """Customers without custom_domain: nothing to prove by DNS (see test_domains_slapproxy.py)."""
    return {
        site.add_customer(f"customer-{i}", {"url": f"https://backend-{i}.example", "enable_cache": "true"}): f"customer-{i}"
        for i in range(n)
    }


def test_twenty_customers_end_to_end(setup):
    site, config, database = setup
    log = MasterLog(site)
    guids = add_customers(site, 20)

    first = once(config)
    assert first.returncode == 0, first.stderr
    entries = {e["title"]: e for e in site.technical_entries()}
    assert len(entries) == 20
    for guid in guids:
        entry = entries[technical_title("cdnreq-", guid)]
        assert entry["parameters"] == site.customer(guid)["parameters"]
        assert site.customer(guid)["connection_parameters"] == IN_PROGRESS

    # the technical CDN deploys and publishes its answer, as its partition would
    for entry in entries.values():
        site.publish_as_cdn(entry["instance_guid"], {"domain": f"{entry['title']}.cdn.example", "replication": "1"})
    second = once(config)
    assert second.returncode == 0, second.stderr
    records, _ = load(config)
    for guid in guids:
        title = technical_title("cdnreq-", guid)
        assert site.customer(guid)["connection_parameters"] == {"domain": f"{title}.cdn.example", "replication": "1"}
        assert records[guid].phase is Phase.LIVE

    log.mark()
    third = once(config)
    assert third.returncode == 0, third.stderr
    assert log.calls() == [LIST]

    removed = next(iter(guids))
    site.remove_customer(guids[removed])
    log.mark()
    fourth = once(config)
    assert fourth.returncode == 0, fourth.stderr
    assert log.calls() == [LIST, "slapos.post.v0.software_instance"]
    records, events = load(config)
    destroys = [e for e in events if e.action == "destroy"]
    assert [(e.instance_guid, e.outcome) for e in destroys] == [(removed, "ok")]
    assert records[removed].phase is Phase.REMOVING and len(records) == 20
    assert technical_title("cdnreq-", removed) not in {e["title"] for e in site.technical_entries()}

    # the next tick reads the destroyed entry back (a master may drop a destroy), then forgets it
    assert once(config).returncode == 0
    records, events = load(config)
    assert [e.outcome for e in events if e.action == "destroy"] == ["ok", "confirmed"]
    assert removed not in records and len(records) == 19


def test_parameter_change_updates_the_request(setup):
    site, config, database = setup
    guid = site.add_customer("shop", {"url": "https://old.example"})
    assert once(config).returncode == 0
    site.add_customer("shop", {"url": "https://new.example", "enable_cache": "true"})
    log = MasterLog(site)
    log.mark()
    result = once(config)
    assert result.returncode == 0, result.stderr
    (entry,) = site.technical_entries()
    assert entry["parameters"] == {"url": "https://new.example", "enable_cache": "true"}
    assert log.calls()[:2] == [LIST, "slapos.post.v0.software_instance"]
    _, events = load(config)
    assert [(e.action, e.outcome) for e in events if e.instance_guid == guid and e.action in ("request", "update")] == [
        ("request", "ok"),
        ("update", "ok"),
    ]


def test_master_down_fails_the_tick_and_changes_nothing(setup):
    site, config, database = setup
    add_customers(site, 3)
    assert once(config).returncode == 0
    before, events_before = load(config)
    site.proxy.stop()
    result = once(config)
    assert result.returncode == 1
    assert "tick failed" in result.stderr and "master" in result.stderr
    after, events_after = load(config)
    assert after == before and events_after == events_before


def test_empty_list_holds_destroys_unless_allowed(setup, tmp_path):
    site, config, database = setup
    add_customers(site, 2)
    assert once(config).returncode == 0
    for i in range(2):
        site.remove_customer(f"customer-{i}")
    assert site.customers() == []
    result = once(config)
    assert result.returncode == 0, result.stderr
    assert "removals held" in result.stderr
    records, events = load(config)
    assert len(records) == 2 and all(r.phase is Phase.REMOVING for r in records.values())
    assert not [e for e in events if e.action == "destroy"]
    assert len(site.technical_entries()) == 2

    allowed = tmp_path / "allow.toml"
    allowed.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nallow_empty = true\n", 1))
    assert once(allowed).returncode == 0
    assert once(allowed).returncode == 0  # destroys read back, then forgotten
    records, events = load(config)
    assert records == {} and len([e for e in events if e.action == "destroy" and e.outcome == "ok"]) == 2
    assert site.technical_entries() == []


def test_status_shows_each_instance(setup):
    site, config, database = setup
    guids = add_customers(site, 2)
    assert once(config).returncode == 0
    table = cdnreq("status", "--config", str(config))
    assert table.returncode == 1, table.stderr  # no daemon answers: 1, from the database
    for guid in guids:
        assert re.search(rf"^{re.escape(guid)}\s+requested\s+publish", table.stdout, re.M)
    as_json = json.loads(cdnreq("status", "--config", str(config), "--json").stdout)
    assert {row["instance_guid"] for row in as_json["instances"]} == set(guids)
    assert as_json["daemon"] is None  # no daemon running: read from the database
    assert "daemon: not running" in table.stdout


def test_daemon_ticks_until_sigterm(setup):
    site, config, database = setup
    guid = site.add_customer("shop", {"url": "https://b.example"})
    process = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not site.technical_entries():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the daemon never requested the entry"
            time.sleep(0.1)
        (entry,) = site.technical_entries()
        site.publish_as_cdn(entry["instance_guid"], {"domain": "shop.cdn.example"})
        while site.customer(guid)["connection_parameters"] != {"domain": "shop.cdn.example"}:
            assert time.monotonic() < deadline, "the daemon never relayed the answer"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert '"stopped"' in process.stderr.read()
    records, _ = load(config)
    assert records[guid].phase is Phase.LIVE


def test_check_config_names_a_typo(tmp_path, cdn_site):
    config = write_config(tmp_path / "c.toml", cdn_site, database=tmp_path / "x.db")
    config.write_text(config.read_text().replace("instance_guid", "instance_giud"))
    result = cdnreq("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "[master].instance_giud" in result.stderr
    good = write_config(tmp_path / "good.toml", cdn_site, database=tmp_path / "x.db")
    shown = cdnreq("check-config", "--config", str(good))
    assert shown.returncode == 0 and cdn_site.requester_guid in shown.stdout


def test_second_once_on_a_locked_database_refuses(setup):
    site, config, database = setup
    process = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        if on_postgresql(config):  # the daemon leads: once is refused naming it
            while (result := once(config)).returncode != 3:
                assert time.monotonic() < deadline, result.stderr
            assert "leads" in result.stderr
            return
        while not Path(f"{database}.lock").exists() or not Path(f"{database}.lock").read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        result = once(config)
        assert result.returncode == 3
        assert "another cdnreq" in result.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_kill_mid_tick_is_repaired_by_the_next_tick(setup):
    site, config, database = setup
    guids = add_customers(site, 30)
    process = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(site.technical_entries()) < 5:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
    finally:
        process.kill()  # SIGKILL: no chance to commit
        process.wait()
    assert len(site.technical_entries()) < 30, "the tick finished before the kill; nothing was tested"
    result = once_when_the_lease_is_free(config)
    assert result.returncode == 0, result.stderr
    titles = sorted(e["title"] for e in site.technical_entries())
    assert titles == sorted(technical_title("cdnreq-", g) for g in guids)
    for guid in guids:
        assert site.customer(guid)["connection_parameters"] == IN_PROGRESS
    records, _ = load(config)
    assert set(records) == set(guids)

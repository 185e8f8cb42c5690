"""Issue 11 #3 end to end: `cdnreq plan` against a real slapproxy shows what
the next `cdnreq once` then does, writes nothing, and runs next to a daemon."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from daemons import daemon_holding_store

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, MasterLog, write_config
from cdnreq.store import Store
from tests.storeread import events_since

pytestmark = pytest.mark.slapproxy

ROOT = Path(__file__).resolve().parents[1]  # this tree's cdnreq, not the installed one
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LIST = "slapos.allDocs.v0.instance_node_instance_list"
EXECUTED = {"request", "update", "destroy", "publish", "poll"}


def cdnreq(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cdnreq.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)


def plan(config: Path) -> dict:
    result = cdnreq("plan", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def once(config: Path) -> None:
    result = cdnreq("once", "--config", str(config))
    assert result.returncode == 0, result.stderr


def tick_record(database: Path) -> tuple[dict, list]:
    """The last tick's row and its events."""

    async def go():
        store = await Store.open(database, lock=False)
        try:
            (tick,) = await store.last_ticks(1)
            events = [e for _, e in await events_since(store, 0, 100000) if e.tick == tick["id"]]
            return tick, events
        finally:
            await store.close()

    return asyncio.run(go())


def planned_pairs(doc: dict) -> set[tuple[str, str]]:
    """(instance, kind) of every action the plan would hand to the executor."""
    return {(row["instance_guid"], kind) for kind, rows in doc["would"].items() for row in rows}


def performed_pairs(events: list) -> set[tuple[str, str]]:
    """(instance, kind) of the actions the tick carried out, from its events:
    an action's first event names it (a read-back of a destroy says
    `destroy confirmed`; a read-back with no answer yet leaves none)."""
    first: dict[str, str] = {}
    for e in events:
        if e.action in EXECUTED and e.instance_guid not in first:
            poll = e.action == "poll" or (e.action, e.outcome) == ("destroy", "confirmed")
            first[e.instance_guid] = "poll" if poll else e.action
    return set(first.items())


def performed_counts(tick: dict) -> dict[str, int]:
    done: Counter[str] = Counter()
    for key, n in tick["summary"].get("results", {}).items():
        done[key.split(":")[0]] += n
    return {kind: done[kind] for kind in sorted(EXECUTED)}


def answer_all(site: CdnSite) -> None:
    """The technical CDN publishes an answer for every entry, as its partition would."""
    for entry in site.technical_entries():
        if not entry.get("connection_parameters"):
            site.publish_as_cdn(entry["instance_guid"], {"domain": f"{entry['title']}.cdn.example"})


def assert_plan_then_once_agree(config: Path, database: Path, site: CdnSite) -> tuple[dict, list]:
    log = MasterLog(site)
    log.mark()
    doc = plan(config)
    assert log.calls() == [LIST], "the plan made a call that is not a read"
    once(config)
    tick, events = tick_record(database)
    assert tick["id"] == doc["tick"]
    planned, performed = planned_pairs(doc), performed_pairs(events)
    assert {p for p in planned if p[1] != "poll"} == {p for p in performed if p[1] != "poll"}
    assert {p for p in performed if p[1] == "poll"} <= planned  # a read-back with no answer leaves no event
    assert {k: v for k, v in doc["counts"].items() if k in EXECUTED} == performed_counts(tick)
    assert doc["planned"] == {k: v for k, v in tick["summary"]["planned"].items() if v}
    issued = {e.instance_guid for e in events if (e.action, e.outcome) == ("challenge", "issued")}
    assert issued == {r["instance_guid"] for r in doc["challenges"]}
    held = {e.instance_guid for e in events if e.action == "hold"}
    assert held == set(doc["held"]["removals"]["instances"]) | {
        r["instance_guid"] for r in doc["held"]["updates"]["instances"] if r["seen"] == 1
    }
    return doc, events


@pytest.fixture
def fleet(cdn_site: CdnSite, tmp_path: Path) -> tuple[CdnSite, Path, Path, dict[str, str]]:
    """Six live customers."""
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(tmp_path / "cdnreq.toml", cdn_site, database=database, domain={"retention_s": 0})
    guids = {f"c{i}": cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"}) for i in range(6)}
    once(config)
    answer_all(cdn_site)
    once(config)
    return cdn_site, config, database, guids


def test_plan_shows_what_the_next_once_does(fleet):
    site, config, database, guids = fleet
    new = [site.add_customer(f"new{i}", {"url": f"https://new-{i}.example"}) for i in range(2)]
    site.add_customer("c0", {"url": "https://moved.example"})
    site.remove_customer("c1")
    bad = site.add_customer("bad", {"url": "https://b.example", "domain": "victim.example"})

    doc, _ = assert_plan_then_once_agree(config, database, site)
    assert {r["instance_guid"] for r in doc["would"]["request"]} == set(new)
    assert [r["instance_guid"] for r in doc["would"]["update"]] == [guids["c0"]]
    assert [r["instance_guid"] for r in doc["would"]["destroy"]] == [guids["c1"]]
    assert [r["instance_guid"] for r in doc["errors"]] == [bad]
    assert doc["errors"][0]["error"] and bad in {r["instance_guid"] for r in doc["would"]["publish"]}

    # next: read-backs (destroy confirmed, answers), and a mass change the guard holds
    answer_all(site)
    for name in ("c2", "c3", "c4", "c5"):
        site.add_customer(name, {"url": f"https://elsewhere-{name}.example"})
    doc, events = assert_plan_then_once_agree(config, database, site)
    held = {r["instance_guid"] for r in doc["held"]["updates"]["instances"]}
    assert held == {guids[n] for n in ("c2", "c3", "c4", "c5")}
    assert "max_update_fraction" in doc["held"]["updates"]["reason"]
    assert doc["would"]["update"] == [] and doc["would"]["poll"]
    assert not [e for e in events if e.action == "update"]

    text = cdnreq("plan", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert "held updates (4): " in text.stdout and "max_update_fraction" in text.stdout
    assert "totals: request 0, update 0" in text.stdout


def test_plan_shows_removals_held_by_the_guard(fleet):
    site, config, database, guids = fleet
    gone = ("c0", "c1", "c2", "c3")  # 4 of 6: at least [daemon].max_destroy_fraction
    for name in gone:
        site.remove_customer(name)
    doc, events = assert_plan_then_once_agree(config, database, site)
    assert doc["held"]["removals"]["instances"] == sorted(guids[n] for n in gone)
    assert doc["held"]["removals"]["reason"] and doc["would"]["destroy"] == []
    assert not [e for e in events if e.action == "destroy"]
    text = cdnreq("plan", "--config", str(config))
    assert f"held removals (4): {doc['held']['removals']['reason']}" in text.stdout


def digests(database: Path) -> dict[str, str | None]:
    out = {}
    for suffix in ("", "-wal"):
        path = Path(f"{database}{suffix}")
        out[suffix or "db"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return out


def test_plan_writes_nothing(fleet, tmp_path):
    site, config, database, guids = fleet
    site.add_customer("new", {"url": "https://new.example"})
    site.add_customer("c0", {"url": "https://moved.example"})
    site.remove_customer("c1")
    before = digests(database)
    listing = sorted(os.listdir(database.parent))
    log = MasterLog(site)
    log.mark()
    doc = plan(config)
    assert doc["counts"]["request"] == 1 and doc["counts"]["update"] == 1 and doc["counts"]["destroy"] == 1
    assert log.calls() == [LIST]
    assert digests(database) == before
    assert sorted(os.listdir(database.parent)) == listing  # no -wal, -shm or lock file created
    assert doc["writes_skipped"]["commit"] >= 1  # there was something to write, and it was not


def test_plan_runs_next_to_a_daemon(fleet):
    site, config, database, guids = fleet
    with daemon_holding_store(config, database, ENV) as daemon:
        lock = Path(f"{database}.lock")
        doc = plan(config)
        assert doc["ok"] and doc["counts"]["request"] == 0 and doc["counts"]["update"] == 0
        assert daemon.poll() is None and lock.read_text().strip()  # the daemon kept its lock and runs on


def test_plan_of_a_first_deployment_is_the_first_tick_and_creates_nothing(cdn_site, tmp_path):
    """No database yet: the plan starts from an empty store, as the first
    tick does, creates nothing in the configured place, and agrees with the
    `once` that follows."""
    state = tmp_path / "state"
    database = state / "cdnreq.db"
    config = write_config(tmp_path / "c.toml", cdn_site, database=database)
    guids = {cdn_site.add_customer(f"first{i}", {"url": f"https://first-{i}.example"}) for i in range(3)}
    bad = cdn_site.add_customer("bad", {"url": "https://b.example", "domain": "victim.example"})

    text = cdnreq("plan", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("no database yet: this is the plan of the first tick")
    assert "would request (3):" in text.stdout and "not in `publish`" in text.stdout
    assert not state.exists()  # no database, no secret, no backup directory made

    doc, _ = assert_plan_then_once_agree(config, database, cdn_site)
    assert doc["first_tick"] is True and doc["tick"] == 1
    assert {r["instance_guid"] for r in doc["would"]["request"]} == guids
    assert [r["instance_guid"] for r in doc["errors"]] == [bad]


def test_plan_on_a_lost_database_refuses_as_run_does(cdn_site, tmp_path):
    """A missing database while backups of it exist: `run` and `once` refuse
    (the store was lost), so the plan does not pretend to be a first tick."""
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(tmp_path / "c.toml", cdn_site, database=database)
    cdn_site.add_customer("kept", {"url": "https://kept.example"})
    once(config)
    backup = cdnreq("backup", "--config", str(config))
    assert backup.returncode == 0, backup.stderr
    database.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)

    planned = cdnreq("plan", "--config", str(config))
    refused = cdnreq("once", "--config", str(config))
    assert planned.returncode == 3 == refused.returncode, (planned.stderr, refused.stderr)
    assert "backups of it exist" in planned.stderr and "cdnreq restore" in planned.stderr
    assert not database.exists()


def test_plan_with_the_master_down_exits_1(fleet):
    site, config, database, guids = fleet
    before = digests(database)
    site.proxy.stop()
    result = cdnreq("plan", "--config", str(config))
    assert result.returncode == 1
    assert "no plan could be made" in result.stderr and "master" in result.stderr
    as_json = cdnreq("plan", "--config", str(config), "--json")
    doc = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and doc["ok"] is False and doc["error"].startswith("master: ")
    assert digests(database) == before


def stored_challenges(database: Path) -> dict:
    async def go():
        store = await Store.open(database, lock=False)
        try:
            return await store.load_challenges()
        finally:
            await store.close()

    return asyncio.run(go())


def test_plan_issues_no_challenge_and_sees_a_proof(cdn_site: CdnSite, devdns: DevDns, tmp_path: Path):
    site = cdn_site
    database = tmp_path / "state" / "cdnreq.db"
    dns = {"nameservers": [devdns.address], "timeout_s": 0.5, "tries": 1}
    config = write_config(tmp_path / "cdnreq.toml", site, database=database, dns=dns, domain={"retention_s": 0})
    site.add_customer("first", {"url": "https://first.example"})
    once(config)
    guid = site.add_customer("shop", {"url": "https://backend.example", "custom_domain": "shop.example.com"})
    shown = site.customer(guid)["connection_parameters"]

    log = MasterLog(site)
    log.mark()
    doc = plan(config)
    assert doc["challenges"] == [{"instance_guid": guid, "domain": "shop.example.com"}]
    assert [r["instance_guid"] for r in doc["pending"]] == [guid]
    assert [r["instance_guid"] for r in doc["would"]["publish"]] == [guid]
    assert log.calls() == [LIST]
    assert stored_challenges(database) == {}  # not issued: no token stored...
    assert site.customer(guid)["connection_parameters"] == shown  # ...nor shown to the customer

    assert_plan_then_once_agree(config, database, site)
    token = site.customer(guid)["connection_parameters"]["txt_value"]
    assert stored_challenges(database)[guid].token == token

    devdns.set_txt("_slapos-challenge.shop.example.com", token)
    doc, events = assert_plan_then_once_agree(config, database, site)
    assert [r["instance_guid"] for r in doc["would"]["request"]] == [guid]
    assert ("request", "ok") in [(e.action, e.outcome) for e in events if e.instance_guid == guid]


@pytest.mark.postgres
def test_plan_on_a_postgresql_database_no_node_has_led_plans_a_first_tick(cdn_site: CdnSite, tmp_path: Path,
                                                                         pg_url: str):
    """Before any node led, the database holds no schema: the plan is the first
    tick's, from nothing (as on a missing SQLite file), and creates nothing."""
    guid = cdn_site.add_customer("c0", {"url": "https://backend-0.example"})
    config = write_config(tmp_path / "cdnreq.toml", cdn_site, database=tmp_path / "cdnreq.db",
                          store={"url": pg_url, "sslmode": "disable"})
    doc = plan(config)
    assert doc["first_tick"] is True, doc
    assert guid in json.dumps(doc)
    result = cdnreq("status", "--config", str(config))
    assert result.returncode == 3 and "no node has led" in result.stderr, result.stderr  # still nothing written

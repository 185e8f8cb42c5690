"""`cdnreq orphans` against a real slapproxy: entries under cdnreq's prefix
and the legacy requester's, some owned by the store, one under a foreign
prefix; listing, destroying, the mass-removal guard and its approval, and
the store's lock."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemons import daemon_holding_store

from devtools.devmaster import CdnSite, free_port, write_config
from faultproxy import FaultProxy, status, trickle
from cdnreq.model import Phase, Record
from cdnreq.store import Store
from tests.storeread import events_since

pytestmark = pytest.mark.slapproxy

ROOT = Path(__file__).resolve().parents[1]  # this tree's cdnreq, not the installed one
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
LEGACY = "_cdnreq_"
REQUEST = "slapos.post.v0.software_instance"
LIST = "slapos.allDocs.v0.instance_node_instance_list"


def cdnreq(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cdnreq.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)


def orphans(config: Path, *args: str) -> tuple[int, dict]:
    result = cdnreq("orphans", "--config", str(config), "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def request_entry(site: CdnSite, title: str) -> str:
    """An entry on the technical CDN requested as the requester's partition
    requests them (cdnreq now, the cron requester before it)."""
    answer = site.proxy.request(title, site.cdn_sr, shared=True, partition=site.requester_partition)
    return answer["instance_guid"]


def entries(site: CdnSite) -> dict[str, str]:
    """title: guid of what the technical CDN hosts now."""
    return {e["title"]: e["instance_guid"] for e in site.technical_entries()}


def store_events(database: Path) -> list:
    async def go():
        store = await Store.open(database, lock=False)
        try:
            return [e for _, e in await events_since(store, 0, 100000) if e.action == "orphan-destroy"]
        finally:
            await store.close()

    return asyncio.run(go())


def adopt(database: Path, title: str, tech_guid: str, customer: str = "LEGACY-CUSTOMER") -> None:
    """A record that owns a legacy entry by its guid (as an import would make it)."""

    async def go():
        store = await Store.open(database)
        try:
            now = time.time()
            await store.commit(upserts=[Record(customer, title, Phase.LIVE, now, now, tech_guid=tech_guid)])
        finally:
            await store.close()

    asyncio.run(go())


def configure(site: CdnSite, tmp_path: Path, database: Path, **sections: dict) -> Path:
    sections = {"legacy": {"request_prefix": LEGACY}, **sections}
    sections["technical_cdn"] = {"host_instance_guid": site.cdn_guid, **sections.get("technical_cdn", {})}
    return write_config(tmp_path / "cdnreq.toml", site, database=database, **sections)


@pytest.fixture
def cdn(cdn_site: CdnSite, tmp_path: Path) -> dict:
    """Two customers served by cdnreq, a legacy entry owned by an imported
    record, an unowned entry under each prefix, one under a foreign prefix."""
    database = tmp_path / "state" / "cdnreq.db"
    config = configure(cdn_site, tmp_path, database)
    for i in range(2):
        cdn_site.add_customer(f"c{i}", {"url": f"https://backend-{i}.example"})
    result = cdnreq("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    owned = entries(cdn_site)
    assert len(owned) == 2 and all(t.startswith("cdnreq-") for t in owned)
    adopt(database, "legacy-customer", request_entry(cdn_site, f"{LEGACY}slappart0_kept"))
    orphan_titles = ["cdnreq-left-behind", f"{LEGACY}slappart0_gone"]
    made = {t: request_entry(cdn_site, t) for t in orphan_titles}
    foreign = request_entry(cdn_site, "someone-else-1")
    return {"site": cdn_site, "config": config, "database": database, "orphans": made,
            "kept": set(entries(cdn_site)) - set(made), "foreign": foreign}  # fmt: skip


def test_orphans_lists_the_unowned_entries_under_both_prefixes(cdn):
    code, doc = orphans(cdn["config"])
    assert code == 1  # orphans remain
    listed = {r["title"]: (r["guid"], r["prefix"]) for r in doc["orphans"]}
    assert listed == {
        "cdnreq-left-behind": (cdn["orphans"]["cdnreq-left-behind"], "cdnreq-"),
        f"{LEGACY}slappart0_gone": (cdn["orphans"][f"{LEGACY}slappart0_gone"], LEGACY),
    }
    assert doc["counts"] == {"orphans": 2, "owned": 3, "under_prefixes": 5, "ignored": 1, "unreadable": 0}
    assert doc["guard"]["held"] is False and doc["destroy"] is None
    assert set(entries(cdn["site"])) == cdn["kept"] | set(cdn["orphans"])  # listing destroyed nothing
    text = cdnreq("orphans", "--config", str(cdn["config"]))
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert f"cdnreq-left-behind  {cdn['orphans']['cdnreq-left-behind']}  cdnreq-" in lines
    assert f"{LEGACY}slappart0_gone  {cdn['orphans'][f'{LEGACY}slappart0_gone']}  {LEGACY}" in lines
    assert not any("someone-else" in line for line in lines)


def test_destroy_removes_the_orphans_and_leaves_the_rest(cdn):
    code, doc = orphans(cdn["config"], "--destroy")
    assert code == 0, doc
    assert {r["title"]: r["outcome"] for r in doc["destroy"]} == {t: "destroyed" for t in cdn["orphans"]}
    assert set(entries(cdn["site"])) == cdn["kept"]  # owned ones and the foreign one stay
    assert cdn["foreign"] in entries(cdn["site"]).values()
    events = store_events(cdn["database"])
    assert {(e.instance_guid, e.outcome) for e in events} == {(g, "destroyed") for g in cdn["orphans"].values()}
    again, doc = orphans(cdn["config"])
    assert again == 0 and doc["orphans"] == []


def test_a_sweep_of_an_empty_store_is_held_until_its_fingerprint_is_approved(cdn_site, tmp_path):
    database = tmp_path / "state" / "cdnreq.db"
    config = configure(cdn_site, tmp_path, database)
    assert cdnreq("once", "--config", str(config)).returncode == 0  # a store that knows no instance
    ours = {t: request_entry(cdn_site, t) for t in ("cdnreq-a", "cdnreq-b", f"{LEGACY}slappart0_c")}
    request_entry(cdn_site, "someone-else-1")
    code, doc = orphans(config, "--destroy")
    assert code == 3 and doc["guard"]["held"] and "knows no instance" in doc["guard"]["reason"]
    assert doc["destroy"] is None and set(ours) <= set(entries(cdn_site))
    text = cdnreq("orphans", "--config", str(config), "--destroy")
    assert text.returncode == 3 and f"--approve {doc['guard']['fingerprint']}" in text.stdout
    wrong, _ = orphans(config, "--destroy", "--approve", "0123456789abcdef")
    assert wrong == 3 and set(ours) <= set(entries(cdn_site))
    code, doc = orphans(config, "--destroy", "--approve", doc["guard"]["fingerprint"])
    assert code == 0 and sorted(r["title"] for r in doc["destroy"]) == sorted(ours)
    assert set(entries(cdn_site)) == {"someone-else-1"}


def test_an_approval_of_another_set_does_not_release_a_grown_one(cdn_site, tmp_path):
    database = tmp_path / "state" / "cdnreq.db"
    config = configure(cdn_site, tmp_path, database)
    assert cdnreq("once", "--config", str(config)).returncode == 0
    request_entry(cdn_site, "cdnreq-a")
    _, seen = orphans(config)
    request_entry(cdn_site, "cdnreq-b")  # appeared after the operator looked
    code, doc = orphans(config, "--destroy", "--approve", seen["guard"]["fingerprint"])
    assert code == 3 and doc["guard"]["approve_mismatch"] and {"cdnreq-a", "cdnreq-b"} <= set(entries(cdn_site))
    assert "they changed since it was printed" in doc["guard"]["reason"]


def test_destroy_refuses_while_a_daemon_holds_the_store_and_listing_works(cdn):
    with daemon_holding_store(cdn["config"], cdn["database"], ENV) as daemon:
        code, doc = orphans(cdn["config"])  # a snapshot next to the daemon
        assert code == 1 and {r["title"] for r in doc["orphans"]} == set(cdn["orphans"])
        refused = cdnreq("orphans", "--config", str(cdn["config"]), "--destroy")
        assert refused.returncode == 3 and "stop cdnreq first" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        code, doc = orphans(cdn["config"], "--destroy")
        assert code == 3 and doc["ok"] is False and "stop cdnreq first" in doc["error"]
        assert set(cdn["orphans"]) <= set(entries(cdn["site"]))
        assert daemon.poll() is None


def test_bad_setups_are_one_line_refusals(cdn):
    without = configure(cdn["site"], cdn["config"].parent, cdn["database"], technical_cdn={"host_instance_guid": None})
    result = cdnreq("orphans", "--config", str(without))
    assert result.returncode == 2 and "[technical_cdn].host_instance_guid" in result.stderr
    down = configure(
        cdn["site"], cdn["config"].parent, cdn["database"],
        master={"url": f"http://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    for args in ((), ("--destroy",)):
        result = cdnreq("orphans", "--config", str(down), *args)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "cannot list the entries of" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert set(cdn["orphans"]) <= set(entries(cdn["site"]))


def test_each_orphan_is_reported_destroyed_still_there_or_failed(cdn, tmp_path):
    """One orphan the master refuses to destroy (its words reported), one
    requested by another partition (a destroy by its title does not reach
    it: read back, it is still there), one destroyed; exit 1."""
    site = cdn["site"]
    elsewhere = site.proxy.request("cdnreq-other-partition", site.cdn_sr, shared=True, partition=site.cdn_partition)
    more = [site.add_customer(f"more{i}", {"url": f"https://more-{i}.example"}) for i in range(3)]  # keep under the bar
    assert more and cdnreq("once", "--config", str(cdn["config"])).returncode == 0
    refused = cdn["orphans"]["cdnreq-left-behind"]
    with FaultProxy(site.proxy.url) as proxy:
        proxy.inject(REQUEST, status(422, {"title": "entry is locked by policy"}), times=None,
                     match=lambda body: body.get("title") == "cdnreq-left-behind")  # fmt: skip
        config = configure(site, tmp_path, cdn["database"], master={"url": proxy.url})
        code, doc = orphans(config, "--destroy")
    assert code == 1, doc
    outcomes = {r["guid"]: (r["outcome"], r["detail"]) for r in doc["destroy"]}
    assert outcomes[refused][0] == "failed" and "entry is locked by policy" in outcomes[refused][1]
    assert outcomes[elsewhere["instance_guid"]][0] == "still there"
    assert outcomes[cdn["orphans"][f"{LEGACY}slappart0_gone"]][0] == "destroyed"
    events = {e.instance_guid: e.outcome for e in store_events(cdn["database"])}
    assert events == {refused: "failed", elsewhere["instance_guid"]: "still-there",
                      cdn["orphans"][f"{LEGACY}slappart0_gone"]: "destroyed"}  # fmt: skip
    assert {"cdnreq-left-behind", "cdnreq-other-partition"} <= set(entries(site))


def test_the_store_is_read_after_the_listing(cdn, tmp_path):
    """A record stored while the CDN's entries are being listed (as a daemon
    stores a title before requesting it) is in what the sweep reads: its
    entry is owned, not an orphan. Read before the listing, it would be one."""
    site = cdn["site"]
    size = len(json.dumps({"result_list": site.technical_entries()}))
    with FaultProxy(site.proxy.url) as proxy:
        proxy.inject(LIST, trickle(size / 3), times=1)  # the answer takes about 3 s to arrive
        config = configure(site, tmp_path, cdn["database"], master={"url": proxy.url})
        command = [sys.executable, "-m", "cdnreq.cli", "orphans", "--config", str(config), "--json"]
        sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            deadline = time.monotonic() + 30
            while not proxy.calls(name=LIST):
                assert sweep.poll() is None and time.monotonic() < deadline, "the sweep did not list"
                time.sleep(0.02)
            adopt(cdn["database"], "cdnreq-left-behind", "not-its-guid", customer="LATE-CUSTOMER")  # owns it by title
            out, err = sweep.communicate(timeout=60)
        finally:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
    assert proxy.calls(name=LIST)[0].fault.startswith("trickle")  # the record came in while the answer was on its way
    doc = json.loads(out)
    assert sweep.returncode == 1, err
    assert [r["title"] for r in doc["orphans"]] == [f"{LEGACY}slappart0_gone"]

"""End to end: taking over from the cron requester (issue 12).

The legacy state is real: tests/legacy runs slapos.cookbook 1.0.514's own
recipes against a real slapproxy and DevDns until its customers are live
under its titles. Then the real `cdnreq import-legacy` and `cdnreq once`
run as subprocesses, and slapproxy's access log, the technical CDN's
entries, the customers' connection parameters and the store say what
happened: for unchanged live customers, nothing at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devtools.devmaster import MasterLog
from cdnreq.model import Phase
from cdnreq.configfile import load_config
from cdnreq.service.opening import open_store
from legacy.fixtures import LegacySite
from legacy.pipeline import read_rows

pytestmark = pytest.mark.slapproxy

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
REQUEST = "slapos.post.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"


def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([CDNREQ, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, f"cdnreq {args[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_section(request: pytest.FixtureRequest) -> dict:
    """The [store] of the import's destination, on each engine."""
    if request.param == "sqlite":
        return {}
    return {"url": request.getfixturevalue("pg_url"), "sslmode": "disable", "lease_s": 3.0, "renew_s": 0.5}


def nothing_written(config: Path) -> bool:
    """No store at all: no SQLite file, or no table in the PostgreSQL database."""
    settings = tomllib.loads(config.read_text())
    url = settings.get("store", {}).get("url")
    if url is None:
        return not Path(settings["daemon"]["database"]).exists()

    async def tables() -> int:
        conn = await asyncpg.connect(url, ssl=False)
        try:
            return await conn.fetchval("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'")
        finally:
            await conn.close()

    return asyncio.run(tables()) == 0


def stored(config: Path) -> tuple[dict, dict, dict, list]:
    async def read() -> tuple[dict, dict, dict, list]:
        store = await open_store(load_config(config), lock=False)
        try:
            events = []
            for guid in await store.load():
                events.extend(e for _, e in await store.events_for(guid, limit=100))
            return await store.load(), await store.load_hosts(), await store.load_challenges(), events
        finally:
            await store.close()
    return asyncio.run(read())


def legacy_tokens(ls: LegacySite) -> dict[str, str]:
    rows = read_rows(ls.db("domains"), "SELECT instance_reference, token FROM domain_validation")
    return {r["instance_reference"]: r["token"] for r in rows}


def entries(ls: LegacySite) -> dict[str, dict]:
    return {e["title"]: e for e in ls.site.technical_entries()}


def import_json(config: Path, *extra: str, expect: int = 0) -> dict[str, Any]:
    return json.loads(run("import-legacy", "-c", str(config), "--from", "--json", *extra, expect=expect).stdout or "{}")


def test_every_kind_of_legacy_state_is_taken_over_and_its_damage_reported(
    legacy_site: LegacySite, tmp_path: Path, store_section: dict
):
    ls = legacy_site
    database = tmp_path / "store" / "cdnreq.db"
    config = ls.write_config(tmp_path / "cdnreq.toml", database=database, store=store_section)
    before, tech_before = digests(ls.db_dir), entries(ls)

    dry = json.loads(run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), "--dry-run", "--json").stdout)
    assert dry["dry_run"] and nothing_written(config)  # a dry run writes nothing, not even an empty store
    doc = json.loads(run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), "--json").stdout)
    assert doc["summary"] == dry["summary"] and doc["findings"] == dry["findings"]
    assert digests(ls.db_dir) == before  # the old databases, byte for byte: the rollback finds them as they were
    roles = {Path(s["path"]).name: s["role"] for s in doc["sources"]}
    assert roles == {"domains.db": "domains", "requested.db": "requested", "validated.db": "validated",
                     "instance.db": "source (not needed)"}

    found = {(f["kind"], f["host"], f["guid"]) for f in doc["findings"]}
    by = {c.title: c for c in ls.all()}
    assert ("alias-unproven", "shop.x.test", by["proven-www"].guid) in found
    assert ("psl-unconfirmed", "bob.github.io", by["psl-github"].guid) in found
    assert ("psl-unconfirmed", "www.beta.co.uk", by["psl-couk"].guid) in found
    # changed-1 moved from old-1.test to new-1.test: the old code dropped the old proof and issued
    # a token for the new domain (kept: it is what the customer was shown); its entry still serves
    # old-1.test, which nothing proves any more
    assert ("served-unproven", "old-1.test", by["changed-1"].guid) in found
    # shop.c.test: conflict-root proved c.test first (its token proves everything under it)
    assert ("host-conflict", "shop.c.test", by["conflict-leaf"].guid) in found
    # reclaim.test: the listed reclaimer keeps it over retained-2, gone from the master
    assert ("host-conflict", "reclaim.test", by["retained-2"].guid) in found
    assert doc["summary"]["retained"] == 2 and doc["summary"]["conflicts"] >= 6

    records, hosts, challenges, _ = stored(config)
    tokens = legacy_tokens(ls)
    for c in ls.all():
        if c.title == "conflict-reclaimer" or c.guid not in records:
            continue
        assert records[c.guid].title == ls.technical_title(c)  # adopted, not recomputed
    for name in ("proven-apex", "proven-solo", "proven-www", "pending-1", "conflict-root", "changed-1"):
        c = by[name]
        assert challenges[c.guid].token == tokens[c.reference]  # the old token, no new challenge
    assert records[by["retained-1"].guid].phase is Phase.RETAINED
    assert hosts["example-1.test"].guid == by["proven-apex"].guid and "bob.github.io" not in hosts

    status = run("status", "-c", str(config), expect=1).stdout  # no daemon runs: exit 1
    assert "imported from the cron requester" in status and "psl-unconfirmed" in status and "bob.github.io" in status
    explain = run("explain", "-c", str(config), by["psl-github"].guid).stdout
    assert "psl-unconfirmed" in explain

    log = MasterLog(ls.site)
    for _ in range(2):
        log.mark()
        run("once", "-c", str(config))
        assert REQUEST not in log.calls()  # nothing requested, updated or destroyed
    assert entries(ls).keys() == tech_before.keys()
    records, hosts, challenges, events = stored(config)
    for name in ("proven-apex", "proven-solo", "proven-www", "pending-1", "changed-1"):
        c = by[name]
        assert challenges[c.guid].token == tokens[c.reference]
    # the clean live customers were told nothing new; their sites run as they did
    published = {e.instance_guid for e in events if e.action == "publish"}
    for name in ("proven-apex", "proven-solo", "plain-1", "plain-2"):
        assert by[name].guid not in published, name
        assert records[by[name].guid].phase is Phase.LIVE
    # the damaged ones are told (a refusal, a pending proof, a warning)
    for name in ("conflict-leaf", "changed-1", "psl-github", "proven-www"):
        assert by[name].guid in published, name
    # a live site with a finding keeps running: its entry is still there, unchanged
    for name in ("conflict-leaf", "psl-github", "changed-1", "retained-2"):
        title = ls.technical_title(by[name])
        assert entries(ls)[title]["parameters"] == tech_before[title]["parameters"]


def test_200_customers_switch_without_a_request_a_publication_or_a_challenge(
    legacy_population, tmp_path: Path, store_section: dict
):
    ls = legacy_population(200)
    database = tmp_path / "store" / "cdnreq.db"
    config = ls.write_config(tmp_path / "cdnreq.toml", database=database, store=store_section)
    tech_before = entries(ls)
    shown_before = {c.guid: ls.site.customer(c.guid)["connection_parameters"] for c in ls.all()}
    # an entry the old requester left behind for a customer nobody knows any more
    stray = ls.site.proxy.request(ls.prefix + "_gone-customer", ls.site.cdn_sr, parameters={"url": "http://x.test"},
                                  shared=True, partition=ls.site.requester_partition)
    doc = json.loads(run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), "--json").stdout)
    assert doc["summary"]["instances"] == doc["summary"]["live"] == 200 and doc["findings"] == []
    assert doc["summary"]["proven hosts"] == 2 * 50 and doc["summary"]["pending challenges"] == 0

    log = MasterLog(ls.site)
    for _ in range(2):
        log.mark()
        run("once", "-c", str(config))
        calls = log.calls()
        assert REQUEST not in calls and PUBLISH not in calls, calls
    after = entries(ls)
    assert after.keys() == tech_before.keys() | {stray["title"]}  # no second entry for anyone
    assert {c.guid: ls.site.customer(c.guid)["connection_parameters"] for c in ls.all()} == shown_before
    records, hosts, challenges, _ = stored(config)
    tokens = legacy_tokens(ls)
    assert {records[c.guid].title for c in ls.all()} == {ls.technical_title(c) for c in ls.all()}
    assert {g: ch.token for g, ch in challenges.items()} == {c.guid: tokens[c.reference] for c in ls.proven}
    assert len(hosts) == 100

    orphans = json.loads(run("orphans", "-c", str(config), "--json", expect=1).stdout)
    assert [o["title"] for o in orphans["orphans"]] == [stray["title"]]

    # the store is cdnreq's now: a second import is refused, or adds nothing it knows
    again = run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), expect=3)
    assert "already holds instances" in again.stderr and "--merge" in again.stderr
    merged = json.loads(run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), "--merge", "--json").stdout)
    assert merged["summary"]["instances"] == 0 and {f["kind"] for f in merged["findings"]} == {"already-known"}
    assert stored(config)[0] == records


def test_references_read_the_wrong_way_are_refused_before_anything_is_written(
    legacy_population, tmp_path: Path, store_section: dict
):
    ls = legacy_population(8, proven_every=2)
    database = tmp_path / "store" / "cdnreq.db"
    config = ls.write_config(tmp_path / "cdnreq.toml", database=database, legacy={"reference_style": "guid"},
                             store=store_section)
    refused = run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), expect=2)
    assert "none of the 8 live customers" in refused.stderr and "reference_style = 'guid'" in refused.stderr
    assert stored(config)[0] == {}  # the store holds nothing: the first tick would have taken them all for gone
    as_json = run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), "--json", expect=2)
    assert json.loads(as_json.stdout) == {"ok": False, "error": as_json.stderr.strip().removeprefix("cdnreq: ")}
    config = ls.write_config(tmp_path / "cdnreq.toml", database=database, legacy={"request_prefix": None},
                             store=store_section)
    assert "[legacy].request_prefix" in run("import-legacy", "-c", str(config), "--from", str(ls.db_dir), expect=2).stderr

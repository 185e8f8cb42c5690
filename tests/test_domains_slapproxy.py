"""End to end: proof of domain ownership, against a real slapproxy and a real DNS server.

Every test runs the real `cdnreq once` command in a subprocess against a real
slapproxy (`cdn_site`, devtools.devmaster) and a real authoritative DNS server on
loopback (`devdns`, devtools.devdns). Every configuration points
`[dns].nameservers` at that DevDns: the system resolver is never asked.

What the customer is shown comes from cdnreq.decide.gate: `txt_record`,
`txt_value` and a `message` while a host waits for its proof,
`pending-host-list`, `request-error-list` when refused. The technical CDN is
read back from slapproxy (`cdn_site.technical_entries()`), the calls cdnreq
made from slapproxy's own access log, and the audit trail from the store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, MasterLog, write_config
from cdnreq.model import Phase
from cdnreq.decide.transitions import IN_PROGRESS
from cdnreq.decide.titles import technical_title
from cdnreq.store import Store
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url
from tests.storeread import events_since

pytestmark = pytest.mark.slapproxy

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
LIST = "slapos.allDocs.v0.instance_node_instance_list"
REQUEST = "slapos.post.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"
LABEL = "_slapos-challenge"
PREFIX = "cdnreq-"
ALREADY_USED = "already used by another CDN entry"


# -- helpers -------------------------------------------------------------------


def once(config: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """One tick of the real command; it must succeed."""
    result = subprocess.run(
        [CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"cdnreq once exited {result.returncode}:\n{result.stderr}"
    return result


def tick_summary(stderr: str) -> dict[str, Any]:
    """The one `tick done` line of a tick (JSON logs)."""
    lines = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") in ("tick done", "tick failed"):
            lines.append(entry)
    assert len(lines) == 1, f"expected one tick summary in:\n{stderr}"
    return lines[0]


def load(database: Path):
    """(records, events, challenges, hosts) as stored."""

    async def go():
        if isinstance(database, str):  # a PostgreSQL store's URL: read as a standby reads
            store = await PgStore.open(parse_store_url(database), holder="test-reader")
        else:
            store = await Store.open(database, lock=False)
        try:
            return (
                await store.load(),
                [e for _, e in await events_since(store, 0, 100000)],
                await store.load_challenges(),
                await store.load_hosts(),
            )
        finally:
            await store.close()

    return asyncio.run(go())


def events_of(database: Path, guid: str, action: str | None = None) -> list[tuple[str, str]]:
    _, events, _, _ = load(database)
    return [
        (e.action, e.outcome)
        for e in events
        if e.instance_guid == guid and (action is None or e.action == action)
    ]


def shown(site: CdnSite, guid: str) -> dict[str, Any]:
    """What the customer sees: its connection parameters on the master."""
    return site.customer(guid)["connection_parameters"]


def entries(site: CdnSite) -> dict[str, dict]:
    """The technical CDN's shared instances, by title."""
    return {e["title"]: e for e in site.technical_entries()}


def title_of(guid: str) -> str:
    return technical_title(PREFIX, guid)


def token_of(site: CdnSite, guid: str) -> str:
    params = shown(site, guid)
    token = params.get("txt_value")
    assert isinstance(token, str) and token.startswith("cdnreq-"), params
    return token


def assert_pending(site: CdnSite, guid: str, hosts: list[str], txt_record: str) -> str:
    """The customer waits for proof of exactly `hosts`; returns the token shown."""
    params = shown(site, guid)
    token = token_of(site, guid)
    assert params["txt_record"] == txt_record, params
    assert json.loads(params["pending-host-list"]) == hosts, params
    for host in hosts:
        assert host in params["message"], params
    assert token in params["message"], params
    assert "request-error-list" not in params, params
    return token


def errors_shown(site: CdnSite, guid: str) -> list[str]:
    params = shown(site, guid)
    assert "request-error-list" in params, params
    errors = json.loads(params["request-error-list"])
    assert isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors), params
    return errors


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def make_config(request: pytest.FixtureRequest, cdn_site: CdnSite, devdns: DevDns, tmp_path: Path):
    """write_config against this test's slapproxy and DevDns (never the system resolver),
    on each engine: `make.database` is the SQLite file, or the PostgreSQL store's URL."""
    database: Path | str = tmp_path / "state" / "cdnreq.db"
    store: dict = {}
    if request.param == "postgresql":
        database = request.getfixturevalue("pg_url")
        store = {"url": database, "sslmode": "disable"}

    def make(name: str = "cdnreq.toml", *, dns: dict | None = None, **sections: dict) -> Path:
        dns_section = {"nameservers": [devdns.address], "timeout_s": 0.5, "tries": 1, **(dns or {})}
        return write_config(
            tmp_path / name, cdn_site, database=tmp_path / "state" / "cdnreq.db", request_prefix=PREFIX,
            dns=dns_section, **{"store": store, **sections},
        )

    make.database = database  # type: ignore[attr-defined]
    return make


# -- 1. the challenge flow -------------------------------------------------------


def test_challenge_flow_from_token_to_live(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    config = make_config()
    database = make_config.database
    log = MasterLog(site)
    params = {"url": "https://backend.example", "custom_domain": "Shop.EXAMPLE.com."}
    guid = site.add_customer("shop", params)

    # first tick: a challenge, nothing requested
    log.mark()
    once(config)
    assert site.technical_entries() == []
    assert REQUEST not in log.calls()
    token = assert_pending(site, guid, ["shop.example.com"], f"{LABEL}.shop.example.com")
    assert "message" in shown(site, guid) and shown(site, guid)["message"] != IN_PROGRESS["message"]
    assert events_of(database, guid, "challenge") == [("challenge", "issued")]
    publishes = events_of(database, guid, "publish")
    assert publishes == [("publish", "ok")]

    # second tick, still nothing in DNS: nothing new to say, nothing requested
    before = shown(site, guid)
    log.mark()
    once(config)
    assert log.calls() == [LIST]  # no publish, no request
    assert events_of(database, guid, "publish") == publishes
    assert events_of(database, guid, "challenge") == [("challenge", "issued")]
    assert site.technical_entries() == []
    assert shown(site, guid) == before
    assert devdns.queries_for(f"{LABEL}.shop.example.com") >= 2  # it did ask, both ticks

    # the customer publishes its token: requested, normalised, in progress
    devdns.set_txt(f"{LABEL}.shop.example.com", token)
    once(config)
    (entry,) = site.technical_entries()
    assert entry["title"] == title_of(guid)
    assert entry["parameters"] == {"url": "https://backend.example", "custom_domain": "shop.example.com"}
    assert shown(site, guid) == {
        **IN_PROGRESS,
        "txt_record": f"{LABEL}.shop.example.com",
        "txt_value": token,
    }
    assert events_of(database, guid, "claim") == [("claim", "ok")]
    assert events_of(database, guid, "request") == [("request", "ok")]

    # the technical CDN answers: relayed with the challenge still shown
    answer = {"domain": "shop.example.com", "replication-number": "1", "site_url": "https://shop.example.com"}
    site.publish_as_cdn(entry["instance_guid"], answer)
    once(config)
    assert shown(site, guid) == {**answer, "txt_record": f"{LABEL}.shop.example.com", "txt_value": token}
    records, _, _, hosts = load(database)
    assert records[guid].phase is Phase.LIVE
    assert set(hosts) == {"shop.example.com"} and hosts["shop.example.com"].guid == guid

    # and then it is idle
    log.mark()
    once(config)
    assert log.calls() == [LIST]
    assert events_of(database, guid, "request") == [("request", "ok")]


# -- 2. proof at the registrable domain --------------------------------------------


def test_proof_at_registrable_domain_proves_every_host(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    config = make_config()
    guid = site.add_customer(
        "shop", {"url": "https://backend.example", "custom_domain": "shop.example.com", "server-alias": "www.example.com"}
    )
    once(config)
    token = assert_pending(site, guid, ["shop.example.com", "www.example.com"], f"{LABEL}.shop.example.com")
    assert f"{LABEL}.example.com" in shown(site, guid)["message"]  # the once-for-all way is offered
    assert site.technical_entries() == []

    devdns.set_txt(f"{LABEL}.example.com", token)
    once(config)
    (entry,) = site.technical_entries()
    assert entry["title"] == title_of(guid)
    assert entry["parameters"] == {
        "url": "https://backend.example",
        "custom_domain": "shop.example.com",
        "server-alias": "www.example.com",
    }
    params = shown(site, guid)
    assert params["message"] == IN_PROGRESS["message"] and "pending-host-list" not in params
    _, _, _, hosts = load(make_config.database)
    assert {h: c.guid for h, c in hosts.items()} == {"shop.example.com": guid, "www.example.com": guid}


# -- 3. an unproven alias next to a proven custom_domain -----------------------------


def test_unproven_alias_keeps_the_entry_pending(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    config = make_config()
    guid = site.add_customer(
        "shop", {"url": "https://backend.example", "custom_domain": "shop.example.com", "server-alias": "blog.example.com"}
    )
    once(config)
    token = token_of(site, guid)
    devdns.set_txt(f"{LABEL}.shop.example.com", token)

    once(config)
    assert site.technical_entries() == []
    assert_pending(site, guid, ["blog.example.com"], f"{LABEL}.shop.example.com")
    assert f"{LABEL}.blog.example.com" in shown(site, guid)["message"]
    assert events_of(make_config.database, guid, "request") == []

    # proving the alias as well lets it through
    devdns.set_txt(f"{LABEL}.blog.example.com", token)
    once(config)
    (entry,) = site.technical_entries()
    assert entry["parameters"]["server-alias"] == "blog.example.com"


# -- 4. hijack ----------------------------------------------------------------------


def test_a_proven_host_cannot_be_taken_by_another_entry(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    config = make_config()
    database = make_config.database
    a = site.add_customer("a-shop", {"url": "https://a.example", "custom_domain": "shop.example.com"})
    once(config)
    token_a = token_of(site, a)
    # C orders its own domain, with shop.example.com as an alias, before A has proven anything
    c = site.add_customer(
        "c-other",
        {"url": "https://c.example", "custom_domain": "other.example.com", "server-alias": "shop.example.com"},
    )
    once(config)
    token_c = assert_pending(
        site, c, ["other.example.com", "shop.example.com"], f"{LABEL}.other.example.com"
    )
    assert token_c != token_a

    # A proves shop.example.com; C proves its own other.example.com
    devdns.set_txt(f"{LABEL}.shop.example.com", token_a)
    devdns.set_txt(f"{LABEL}.other.example.com", token_c)
    once(config)
    assert set(entries(site)) == {title_of(a)}

    # B asks for the same host, spelt differently, after A has it
    b = site.add_customer("b-thief", {"url": "https://b.example", "custom_domain": "SHOP.Example.com."})
    once(config)
    assert set(entries(site)) == {title_of(a)}, "only the owner may be on the technical CDN"

    b_errors = errors_shown(site, b)
    assert any(ALREADY_USED in e and "custom_domain" in e and "shop.example.com" in e for e in b_errors), b_errors
    c_errors = errors_shown(site, c)
    assert any(ALREADY_USED in e and "server-alias" in e and "shop.example.com" in e for e in c_errors), c_errors
    for loser in (b, c):
        text = json.dumps(shown(site, loser))
        assert a not in text and title_of(a) not in text and token_a not in text, text
        assert "txt_value" not in shown(site, loser)
        assert events_of(database, loser, "request") == []
        assert events_of(database, loser, "claim") == []
    _, _, _, hosts = load(database)
    assert hosts["shop.example.com"].guid == a
    assert shown(site, a)["message"] == IN_PROGRESS["message"]

    # copying A's public token to the registrable domain proves nothing for anyone else
    devdns.set_txt(f"{LABEL}.example.com", token_a)
    log = MasterLog(site)
    log.mark()
    once(config)
    assert log.calls() == [LIST, "slapos.get.v0.software_instance"]  # A's answer is polled; no publish
    assert errors_shown(site, b) == b_errors and errors_shown(site, c) == c_errors
    assert set(entries(site)) == {title_of(a)}


# -- 5. remove and return of a never-proven domain ---------------------------------------


def test_removed_and_returned_unproven_domain_gets_no_free_pass(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    # default retention (90 days); 1 of 2 gone reaches the default max_destroy_fraction (>=)
    config = make_config(daemon={"max_destroy_fraction": 0.75})
    database = make_config.database
    bystander = site.add_customer("bystander", {"url": "https://bystander.example"})
    x = site.add_customer("x", {"url": "https://x.example", "custom_domain": "never.example.com"})
    once(config)
    assert_pending(site, x, ["never.example.com"], f"{LABEL}.never.example.com")
    assert set(entries(site)) == {title_of(bystander)}

    site.remove_customer("x")
    once(config)
    once(config)  # a destroy by title is read back (by the guid its answer names) before x is forgotten
    records, _, challenges, _ = load(database)
    assert x not in records and x not in challenges  # nothing to retain: it had no entry, no host
    # no entry known: destroyed by title (issue 10, property 15), which slapproxy knows nothing of
    assert events_of(database, x, "destroy") in ([("destroy", "ok"), ("destroy", "confirmed")], [("destroy", "absent")])

    again = site.add_customer("x", {"url": "https://x.example", "custom_domain": "never.example.com"})
    assert again == x, "slapproxy gives the same guid to the same title"
    once(config)
    assert set(entries(site)) == {title_of(bystander)}
    token = assert_pending(site, x, ["never.example.com"], f"{LABEL}.never.example.com")
    _, _, challenges, hosts = load(database)
    assert challenges[x].token == token, "the customer is shown its current challenge, not a stale one"
    assert "never.example.com" not in hosts
    assert events_of(database, x, "request") == []
    assert events_of(database, x, "claim") == []
    assert events_of(database, x, "challenge") == [("challenge", "issued"), ("challenge", "issued")]


# -- 6. retention ----------------------------------------------------------------------


def _proven_and_requested(site: CdnSite, devdns: DevDns, config: Path, name: str, domain: str) -> str:
    guid = site.add_customer(name, {"url": f"https://{name}.example", "custom_domain": domain})
    once(config)
    devdns.set_txt(f"{LABEL}.{domain}", token_of(site, guid))
    once(config)
    assert title_of(guid) in entries(site)
    return guid


def test_retention_keeps_the_entry_and_the_proof(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    # 1 of 2 gone reaches the default max_destroy_fraction (>=)
    config = make_config(domain={"retention_s": 3600}, daemon={"max_destroy_fraction": 0.75})
    database = make_config.database
    site.add_customer("bystander", {"url": "https://bystander.example"})
    guid = _proven_and_requested(site, devdns, config, "shop", "shop.example.com")
    (entry,) = [e for e in site.technical_entries() if e["title"] == title_of(guid)]
    site.publish_as_cdn(entry["instance_guid"], {"domain": "shop.example.com"})
    once(config)
    assert shown(site, guid)["domain"] == "shop.example.com"

    site.remove_customer("shop")
    once(config)
    assert title_of(guid) in entries(site), "retained: the technical entry stays"
    records, _, _, hosts = load(database)
    assert records[guid].phase is Phase.RETAINED
    assert hosts["shop.example.com"].guid == guid
    assert events_of(database, guid, "destroy") == []

    back = site.add_customer("shop", {"url": "https://shop.example", "custom_domain": "shop.example.com"})
    assert back == guid
    log = MasterLog(site)
    log.mark()
    once(config)
    assert REQUEST not in log.calls(), log.calls()
    assert [e for e in events_of(database, guid) if e[0] in ("challenge", "request", "update", "destroy")] == [
        ("challenge", "issued"),
        ("request", "ok"),
    ]
    records, _, _, _ = load(database)
    assert records[guid].phase is Phase.LIVE
    assert title_of(guid) in entries(site)
    assert shown(site, guid)["domain"] == "shop.example.com"


def test_no_retention_destroys_at_once(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    # 1 of 2 gone reaches the default max_destroy_fraction (>=)
    config = make_config(domain={"retention_s": 0}, daemon={"max_destroy_fraction": 0.75})
    database = make_config.database
    site.add_customer("bystander", {"url": "https://bystander.example"})
    guid = _proven_and_requested(site, devdns, config, "shop", "shop.example.com")

    site.remove_customer("shop")
    once(config)
    assert title_of(guid) not in entries(site)
    assert events_of(database, guid, "destroy") == [("destroy", "ok")]
    once(config)  # the destroy is read back, then the instance is forgotten
    assert events_of(database, guid, "destroy") == [("destroy", "ok"), ("destroy", "confirmed")]
    records, _, challenges, hosts = load(database)
    assert guid not in records and guid not in challenges and "shop.example.com" not in hosts


# -- 7. DNS trouble in one tick ---------------------------------------------------------


def test_dns_timeouts_delay_only_their_own_entry(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    config = make_config()
    database = make_config.database
    slow = site.add_customer("slow", {"url": "https://slow.example", "custom_domain": "shop.slow.example"})
    fine = site.add_customer("fine", {"url": "https://fine.example", "custom_domain": "shop.fine.example"})
    slow_names = [f"{LABEL}.shop.slow.example", f"{LABEL}.slow.example"]
    for name in slow_names:
        devdns.behave(name, "timeout")
    once(config)
    slow_token = assert_pending(site, slow, ["shop.slow.example"], f"{LABEL}.shop.slow.example")
    fine_token = assert_pending(site, fine, ["shop.fine.example"], f"{LABEL}.shop.fine.example")

    # the slow one's record is in place too, but its server never answers
    for name in slow_names:
        devdns.set_txt(name, slow_token)
    devdns.set_txt(f"{LABEL}.shop.fine.example", fine_token)
    devdns.reset_counts()
    began = time.monotonic()
    result = once(config)
    elapsed = time.monotonic() - began
    assert set(entries(site)) == {title_of(fine)}
    assert_pending(site, slow, ["shop.slow.example"], f"{LABEL}.shop.slow.example")
    assert shown(site, fine)["message"] == IN_PROGRESS["message"]
    summary = tick_summary(result.stderr)
    assert summary["ok"] is True
    assert summary["planned"].get("dns_unknown") == len(slow_names), summary
    assert summary["planned"].get("dns_found") == 1, summary
    assert all(devdns.queries_for(n) >= 1 for n in slow_names)
    assert elapsed < 20, f"one tick took {elapsed:.1f} s with [dns] timeout_s = 0.5, tries = 1"
    assert events_of(database, slow, "claim") == []

    # the DNS recovers: the slow one goes through on the next tick
    for name in slow_names:
        devdns.behave(name, "normal")
    once(config)
    assert set(entries(site)) == {title_of(fine), title_of(slow)}


# -- 8. hostile parameters next to a good customer -----------------------------------------


def test_hostile_parameters_are_refused_one_by_one(cdn_site: CdnSite, devdns: DevDns, make_config):
    site = cdn_site
    config = make_config()
    database = make_config.database
    huge = site.add_customer("huge", {"url": "https://huge.example", "custom_domain": "a" * (1024 * 1024)})
    cache = site.add_customer("cache", {"url": "https://cache.example", "enable_cache": {"nested": "object"}})
    netloc = site.add_customer("netloc", {"url": "https://netloc.example", "url-netloc-list": "example.com:abc"})
    good = site.add_customer("good", {"url": "https://good.example", "enable_cache": "true"})

    result = once(config)
    assert tick_summary(result.stderr)["ok"] is True
    assert set(entries(site)) == {title_of(good)}
    assert entries(site)[title_of(good)]["parameters"] == {"url": "https://good.example", "enable_cache": "true"}
    assert shown(site, good) == IN_PROGRESS

    for guid, parameter in ((huge, "custom_domain"), (cache, "enable_cache"), (netloc, "url-netloc-list")):
        errors = errors_shown(site, guid)
        assert any(parameter in e for e in errors), (parameter, errors)
        params = shown(site, guid)
        assert len(json.dumps(params)) < 16 * 1024, f"{parameter}: {len(json.dumps(params))} bytes shown"
        assert "txt_value" not in params
        assert events_of(database, guid, "request") == []
    assert events_of(database, good, "request") == [("request", "ok")]

    # refused once, not every tick
    log = MasterLog(site)
    log.mark()
    once(config)
    assert PUBLISH not in log.calls() and REQUEST not in log.calls(), log.calls()

"""Attacks by a hostile customer's parameters, end to end against a real
slapproxy: what cdnreq sends to the technical CDN, what it publishes back,
and what the next tick (each `cdnreq once` is a restart) makes of it.

* A value XML cannot carry (U+FFFF, U+FFFE), smuggled through SlapOS's "_"
  as a JSON escape: slapproxy keeps parameters as XML and answered the
  request with a 500, retried with backoff for ever, the customer never
  told. Now refused at validation, naming the field and the value.
* 50 KB of parameter names that could name a host (3,000 keys): one error
  each, 320 KB of message published twice to the customer (and once more
  as its error) and kept twice in its record, twenty times the input. Now
  the first 20 errors and how many more, as for warnings.
* NaN replaced by null: orjson writes NaN as null, so both hashed alike and
  the customer who fixed its parameters kept the refusal for good (across
  restarts: the decision is stored under the parameter hash).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.devdns import DevDns
from cdnreq.validate.verdict import MAX_ERRORS, validate
from devtools.devmaster import CdnSite, MasterLog, write_config
from test_domains_slapproxy import PREFIX, REQUEST, entries, errors_shown, load, once, shown, title_of

pytestmark = pytest.mark.slapproxy


@pytest.fixture
def make_config(cdn_site: CdnSite, devdns: DevDns, tmp_path: Path):
    """write_config against this test's slapproxy and DevDns, on SQLite (engines play no part here)."""
    database = tmp_path / "state" / "cdnreq.db"

    def make() -> Path:
        dns = {"nameservers": [devdns.address], "timeout_s": 0.5, "tries": 1}
        return write_config(tmp_path / "cdnreq.toml", cdn_site, database=database, request_prefix=PREFIX, dns=dns)

    make.database = database  # type: ignore[attr-defined]
    return make

GOOD = {"url": "https://good.example"}


@pytest.mark.parametrize("char", ["\uffff", "\ufffe"], ids=["U+FFFF", "U+FFFE"])
def test_a_character_xml_cannot_carry_is_the_customer_s_error_not_a_master_failure(
    cdn_site: CdnSite, make_config, char: str
) -> None:
    config = make_config()
    good = cdn_site.add_customer("good", GOOD)
    # json.dumps escapes it: the customer's own master holds plain ASCII
    bad = cdn_site.add_customer("bad", {"_": json.dumps({"url": "https://b.example", "path": f"/a{char}"})})
    log = MasterLog(cdn_site)
    log.mark()
    once(config)
    code = f"U+{ord(char):04X}"
    assert errors_shown(cdn_site, bad) == [
        f'path: must not contain the non-character {code} at character 3 (got "/a\\u{ord(char):04x}")'
    ]
    assert list(entries(cdn_site)) == [title_of(good)]  # nothing requested for it
    assert log.calls().count(REQUEST) == 1
    records, _, _, _ = load(make_config.database)
    assert records[bad].failures == 0 and records[bad].last_action == "publish"
    assert "message" in shown(cdn_site, good)
    log.mark()
    once(config)  # told once: nothing new to say at the next tick
    assert REQUEST not in log.calls() and "slapos.put.v0.software_instance_error" not in log.calls()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")], ids=["NaN", "Infinity", "-Infinity"])
def test_a_customer_who_replaces_a_refused_nan_by_null_is_judged_again(
    cdn_site: CdnSite, make_config, bad_value: float
) -> None:
    config = make_config()
    guid = cdn_site.add_customer("c", {"url": "https://c.example", "foo": bad_value})
    once(config)
    (error,) = errors_shown(cdn_site, guid)
    assert error.startswith("foo: ") and "is not a JSON number" in error
    assert entries(cdn_site) == {}
    cdn_site.add_customer("c", {"url": "https://c.example", "foo": None})  # fixed: null, as orjson spells NaN
    once(config)
    assert "request-error-list" not in shown(cdn_site, guid), shown(cdn_site, guid)
    assert entries(cdn_site)[title_of(guid)]["parameters"] == {"url": "https://c.example"}
    assert json.loads(shown(cdn_site, guid)["warning-list"]) == ["foo: unknown parameter, not forwarded to the CDN"]


def host_named_keys(count: int) -> dict:
    return {"url": "https://h.example", **{f"domain{n:05}": "" for n in range(count)}}


def test_thousands_of_refused_keys_make_a_bounded_error() -> None:
    errors = validate(host_named_keys(3000)).errors
    assert len(errors) == MAX_ERRORS + 1 and errors[-1] == f"... and {3000 - MAX_ERRORS} more errors"
    assert errors[0] == "domain00000: unknown parameter that could name a host, refused (hosts go in custom_domain and server-alias)"
    assert sum(map(len, errors)) < 3000


def test_a_customer_s_thousands_of_errors_are_published_bounded(cdn_site: CdnSite, make_config) -> None:
    config = make_config()
    good = cdn_site.add_customer("good", GOOD)
    bad = cdn_site.add_customer("bad", host_named_keys(3000))
    once(config)
    published = shown(cdn_site, bad)
    assert len(json.dumps(published)) < 8000
    assert json.loads(published["request-error-list"])[0].startswith("domain00000: unknown parameter")
    records, _, _, _ = load(make_config.database)
    assert len(records[bad].published_error or "") < 4000 and len(records[bad].last_error or "") < 4000
    assert list(entries(cdn_site)) == [title_of(good)]

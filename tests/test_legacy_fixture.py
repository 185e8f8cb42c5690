"""The legacy fixtures (tests/legacy) built what they claim, read back independently.

The old cron requester (slapos.cookbook 1.0.514, run from .venv-legacy) wrote
the databases; these tests read them with sqlite3 read-only and read slapproxy
through devtools.devmaster (most tests share one module-scoped build,
``legacy_site_shared``; the first uses the per-test ``legacy_site``), so a
fixture that silently built less (a category missing, an entry never
requested, a proof never validated) fails here before an importer test
trusts it.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from cdnreq.configfile import load_config
from legacy.fixtures import CATEGORIES, Customer, LegacySite
from legacy.pipeline import DB_NAMES, connection_for, read_rows

pytestmark = pytest.mark.slapproxy

TOKEN = re.compile(r"[0-9a-f]{64}")


def row(ls: LegacySite, role: str, table: str, customer: Customer) -> dict | None:
    key = "instance_reference" if table == "domain_validation" else "reference"
    found = read_rows(ls.db(role), f"SELECT * FROM {table} WHERE {key} = ?", (customer.reference,))
    return dict(found[0]) if found else None


def used_hosts(ls: LegacySite, customer: Customer) -> set[str]:
    rows = read_rows(ls.db("domains"), "SELECT host FROM used_hosts WHERE instance_reference = ?",
                     (customer.reference,))
    return {r["host"] for r in rows}


def entries(ls: LegacySite) -> dict[str, dict]:
    """The technical CDN's hosted entries by title."""
    return {e["title"]: e for e in ls.site.technical_entries()}


def shown(ls: LegacySite, customer: Customer) -> dict:
    return ls.site.customer(customer.guid)["connection_parameters"]


def assert_live(ls: LegacySite, customer: Customer, tech: dict[str, dict]) -> None:
    entry = tech[ls.technical_title(customer)]
    assert entry["instance_guid"] == f"{ls.technical_title(customer)}___cdn-requester___1"
    assert entry["parameters"] == customer.parameters
    published = connection_for(entry)
    assert shown(ls, customer) == published
    requested = row(ls, "requested", "instance", customer)
    assert requested["valid_parameter"] == "valid"
    assert json.loads(requested["json_error"]) == published
    assert row(ls, "validated", "instance", customer)["valid_parameter"] == "valid"


def assert_proven(ls: LegacySite, customer: Customer) -> None:
    proof = row(ls, "domains", "domain_validation", customer)
    assert proof["domain"] == customer.parameters["custom_domain"]
    assert proof["validated"] == 1 and TOKEN.fullmatch(proof["token"])
    assert used_hosts(ls, customer) == set(customer.hosts)


def test_database_directory_and_identities(legacy_site: LegacySite):
    ls = legacy_site
    assert sorted(os.listdir(ls.db_dir)) == sorted(DB_NAMES.values())
    tables = {role: {r["name"] for r in read_rows(ls.db(role), "SELECT name FROM sqlite_master"
                                                  " WHERE type = 'table'")} for role in DB_NAMES}
    assert tables["domains"] == {"domain_validation", "used_hosts"}
    for role in ("source", "validated", "requested"):
        assert "instance" in tables[role]
    for category in CATEGORIES:
        assert getattr(ls, category), f"no {category} customer"
    for customer in ls.all():
        assert customer.reference == f"_{customer.title}"
        assert customer.guid == f"{customer.title}______1"
    assert ls.prefix == "_cdnreq_"


def test_write_config_names_the_legacy_requester(legacy_site_shared: LegacySite, tmp_path):
    ls = legacy_site_shared
    config = load_config(ls.write_config(tmp_path / "cdnreq.toml", database=tmp_path / "s.db"))
    assert config.legacy.request_prefix == "_cdnreq_"
    assert config.legacy.reference_style == "slapproxy"
    assert config.technical_cdn.host_instance_guid == ls.site.cdn_guid == "cdn-tech______0"
    assert config.master.partition_id == ls.site.requester_partition


def test_proven_plain_psl_and_conflicting_are_live(legacy_site_shared: LegacySite):
    ls, tech = legacy_site_shared, entries(legacy_site_shared)
    for customer in ls.proven + ls.psl + ls.conflicting:
        assert_proven(ls, customer)
        assert_live(ls, customer, tech)
    for customer in ls.plain:
        assert row(ls, "domains", "domain_validation", customer) is None
        assert used_hosts(ls, customer) == set()
        assert_live(ls, customer, tech)
    apex = next(c for c in ls.proven if c.title == "proven-apex")
    assert apex.hosts == ["example-1.test", "www.example-1.test"]
    www = next(c for c in ls.proven if c.title == "proven-www")
    assert "shop.x.test" in used_hosts(ls, www)  # held, never proven by DNS


def test_psl_hosts_pass_only_the_last_two_labels_rule(legacy_site_shared: LegacySite):
    ls = legacy_site_shared
    held = {host for c in ls.psl for host in used_hosts(ls, c)}
    assert held == {"alice.github.io", "bob.github.io", "www.alpha.co.uk", "www.beta.co.uk"}
    proofs = {row(ls, "domains", "domain_validation", c)["domain"] for c in ls.psl}
    assert proofs == {"alice.github.io", "www.alpha.co.uk"}  # the aliases were never proven


def test_conflicting_entries_serve_the_same_host(legacy_site_shared: LegacySite):
    ls = legacy_site_shared
    served: dict[str, set[str]] = {}
    for entry in ls.site.technical_entries():
        params = entry["parameters"]
        for host in [params.get("custom_domain"), *params.get("server-alias", "").split()]:
            if host:
                served.setdefault(host, set()).add(entry["title"][len(ls.prefix):])
    shared = {host: refs for host, refs in served.items() if len(refs) > 1}
    assert shared == {"shop.c.test": {"_conflict-root", "_conflict-leaf"},
                      "reclaim.test": {"_retained-2", "_conflict-reclaimer"}}
    # conflict-root's alias and conflict-leaf's custom_domain are both held in used_hosts;
    # retained-2 lost its hosts when it was stopped, its entry did not.
    holders = read_rows(ls.db("domains"), "SELECT instance_reference FROM used_hosts"
                        " WHERE host = 'shop.c.test'")
    assert {r["instance_reference"] for r in holders} == {"_conflict-root", "_conflict-leaf"}
    assert {c.reference for c in ls.conflicting} == {"_conflict-root", "_conflict-leaf",
                                                     "_conflict-reclaimer"}


def test_rejected_alias_clash_has_no_token_and_no_entry(legacy_site_shared: LegacySite):
    ls, tech = legacy_site_shared, entries(legacy_site_shared)
    for customer in ls.rejected:
        assert row(ls, "domains", "domain_validation", customer) is None
        assert ls.technical_title(customer) not in tech
        validated = row(ls, "validated", "instance", customer)
        assert validated["valid_parameter"] == "invalid"
        assert "clashes" in json.loads(validated["json_error"])["message"]
        assert "clashes" in shown(ls, customer)["message"]


def test_pending_has_a_token_and_no_entry(legacy_site_shared: LegacySite):
    ls, tech = legacy_site_shared, entries(legacy_site_shared)
    for customer in ls.pending:
        proof = row(ls, "domains", "domain_validation", customer)
        assert proof["validated"] == 0 and TOKEN.fullmatch(proof["token"])
        assert ls.technical_title(customer) not in tech
        assert row(ls, "validated", "instance", customer)["valid_parameter"] == "invalid"
        assert shown(ls, customer)["txt_value"] == proof["token"]
        assert shown(ls, customer)["txt_record"] == f"_slapos-challenge.{customer.parameters['custom_domain']}"
        assert row(ls, "requested", "instance", customer)["valid_parameter"] == "invalid"


def test_retained_is_stopped_and_its_entry_stays(legacy_site_shared: LegacySite):
    ls, tech = legacy_site_shared, entries(legacy_site_shared)
    listed = {c["title"] for c in ls.site.customers()}
    for customer in ls.retained:
        assert customer.title not in listed  # destroyed by its customer
        assert row(ls, "source", "instance", customer) is None
        assert row(ls, "validated", "instance", customer)["valid_parameter"] == "stopped"
        proof = row(ls, "domains", "domain_validation", customer)
        assert proof["validated"] == 0 and proof["domain"] == customer.parameters["custom_domain"]
        assert used_hosts(ls, customer) == set()
        assert tech[ls.technical_title(customer)]["parameters"] == customer.parameters
        assert row(ls, "requested", "instance", customer)["valid_parameter"] == "valid"


def test_changed_domain_entry_still_serves_the_old_domain(legacy_site_shared: LegacySite):
    ls, tech = legacy_site_shared, entries(legacy_site_shared)
    for customer in ls.changed_domain:
        new = customer.parameters["custom_domain"]
        proof = row(ls, "domains", "domain_validation", customer)
        assert proof["domain"] == new and proof["validated"] == 0
        entry = tech[ls.technical_title(customer)]
        assert entry["parameters"]["custom_domain"] == new.replace("new-", "old-")
        assert row(ls, "validated", "instance", customer)["valid_parameter"] == "invalid"
        assert shown(ls, customer)["txt_record"] == f"_slapos-challenge.{new}"


def test_population_is_live(legacy_population):
    ls = legacy_population(n=40)
    assert len(ls.all()) == 40 and len(ls.proven) == 10
    tech = entries(ls)
    assert len(tech) == 40
    requested = read_rows(ls.db("requested"), "SELECT valid_parameter, count(*) AS n"
                          " FROM instance GROUP BY valid_parameter")
    assert {r["valid_parameter"]: r["n"] for r in requested} == {"valid": 40}
    for customer in ls.proven[:3] + ls.plain[:3]:
        assert_live(ls, customer, tech)

"""pytest fixtures: real legacy state, built by running the old cron requester.

``legacy_site`` (per test) and ``legacy_site_shared`` (per module, read-only
users) give one customer set per category the issue-12 importer must handle;
``legacy_population(n=200, proven_every=4)`` (a builder) gives n customers
served by legacy titles. Each orders the customers' shared instances on a
slapproxy (``cdn_site``), then runs the old requester (tests/legacy/pipeline.py)
as often as its cron would, publishing its DNS tokens in DevDns and the
technical CDN's connection parameters in between. Names are .test, github.io
and co.uk names that only the fixture's DevDns serves.

A :class:`LegacySite` has ``db_dir`` (instance.db, validated.db, domains.db,
requested.db; ``db(role)`` with role source/validated/domains/requested),
``site`` (the CdnSite), ``dns`` (the DevDns), ``prefix`` ("_cdnreq_"),
``pipeline`` (``pipeline.run()`` is one more cron run), ``write_config(path,
database=...)`` (a cdnreq configuration with its [legacy] section) and one list of
:class:`Customer` (title, reference, guid, parameters, note) per category:
``proven``, ``plain``, ``pending``, ``retained``, ``conflicting``, ``psl``,
``changed_domain``, ``rejected``. On slapproxy a customer titled T has the legacy reference
``_T`` and the guid ``T______1``; its technical entry is titled
``_cdnreq__T`` with the guid ``_cdnreq__T___cdn-requester___1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, Slapproxy, setup_cdn, write_config

from .pipeline import DB_NAMES, LegacyPipeline, legacy_reference

CATEGORIES = ("proven", "plain", "pending", "retained", "conflicting", "psl", "changed_domain",
              "rejected")


@dataclass(frozen=True)
class Customer:
    """One customer's shared instance: its slapproxy title and guid, its legacy reference."""

    title: str
    reference: str  # the old requester's name for it: slave_reference, "_<title>" here
    guid: str  # JSON-API instance_guid, "<title>______1" here
    parameters: dict  # what the customer ordered last
    note: str = ""  # what is special about it (e.g. "alias never proven by DNS")

    @property
    def hosts(self) -> list[str]:
        """custom_domain then server-alias, as ordered."""
        domain = self.parameters.get("custom_domain")
        aliases = self.parameters.get("server-alias", "").split()
        return ([domain] if domain else []) + aliases


@dataclass
class LegacySite:
    """What the old requester left, and the parties around it (still running)."""

    db_dir: Path  # instance.db, validated.db, domains.db, requested.db and nothing else
    site: CdnSite
    dns: DevDns
    prefix: str
    pipeline: LegacyPipeline
    customers: dict[str, list[Customer]] = field(default_factory=dict)  # category -> list
    build_s: float = 0.0

    def __getattr__(self, name: str) -> list[Customer]:
        if name in CATEGORIES:
            return self.customers.get(name, [])
        raise AttributeError(name)

    def db(self, role: str) -> Path:
        """role: source, validated, domains or requested."""
        return self.db_dir / DB_NAMES[role]

    def technical_title(self, customer: Customer) -> str:
        return self.prefix + customer.reference

    def all(self) -> list[Customer]:
        return [c for category in CATEGORIES for c in self.customers.get(category, [])]

    def write_config(self, path: Path, *, database: Path, **sections: dict) -> Path:
        """A cdnreq configuration for this site: its DevDns, its CDN host, its [legacy]."""
        dns = {"nameservers": [self.dns.address], "timeout_s": 0.5, "tries": 1}
        tables = {"dns": dns, "technical_cdn": {"host_instance_guid": self.site.cdn_guid},
                  "legacy": {"request_prefix": self.prefix, "reference_style": "slapproxy"}}
        for name, overrides in sections.items():
            tables[name] = {**tables.get(name, {}), **overrides}
        return write_config(path, self.site, database=database, **tables)


class _Orders:
    """The customers' side: order on slapproxy, remember each Customer by category."""

    def __init__(self, site: CdnSite):
        self.site = site
        self.by_category: dict[str, list[Customer]] = {c: [] for c in CATEGORIES}

    def order(self, category: str, title: str, parameters: dict, note: str = "") -> Customer:
        guid = self.site.add_customer(title, parameters)
        customer = Customer(title, legacy_reference(guid), guid, parameters, note)
        self.by_category[category].append(customer)
        return customer

    def reorder(self, category: str, customer: Customer, parameters: dict, note: str) -> Customer:
        """The customer changes its parameters (same title: same instance)."""
        self.site.add_customer(customer.title, parameters)
        changed = Customer(customer.title, customer.reference, customer.guid, parameters, note)
        self.by_category[category] = [changed if c is customer else c
                                      for c in self.by_category[category]]
        return changed


def _order_first_wave(orders: _Orders) -> None:
    web = "http://backend.test"
    o = orders.order
    o("proven", "proven-apex", {"url": web, "custom_domain": "example-1.test",
                                "server-alias": "www.example-1.test"}, "apex + www alias")
    o("proven", "proven-solo", {"url": web, "custom_domain": "example-2.test"}, "no alias")
    o("proven", "proven-www", {"url": web, "custom_domain": "www.x.test",
                               "server-alias": "shop.x.test"},
      "alias shop.x.test never proven by DNS (same last-two-labels root)")
    o("plain", "plain-1", {"url": "http://plain-1.backend.test"})
    o("plain", "plain-2", {"url": "http://plain-2.backend.test", "https-only": "false"})
    o("pending", "pending-1", {"url": web, "custom_domain": "pending-1.test"},
      "TXT never published")
    o("retained", "retained-1", {"url": web, "custom_domain": "retained-1.test"},
      "proven and live, then destroyed by its customer")
    o("retained", "retained-2", {"url": web, "custom_domain": "reclaim.test"},
      "proven and live, then destroyed; conflict-reclaimer then proved reclaim.test")
    o("conflicting", "conflict-root", {"url": web, "custom_domain": "c.test",
                                       "server-alias": "shop.c.test"},
      "proven first: holds shop.c.test as an alias")
    o("psl", "psl-github", {"url": web, "custom_domain": "alice.github.io",
                            "server-alias": "bob.github.io"},
      "bob.github.io accepted by the last-two-labels rule, not by the PSL")
    o("psl", "psl-couk", {"url": web, "custom_domain": "www.alpha.co.uk",
                          "server-alias": "www.beta.co.uk"},
      "www.beta.co.uk accepted by the last-two-labels rule (co.uk), not by the PSL")
    o("changed_domain", "changed-1", {"url": web, "custom_domain": "old-1.test"},
      "proven for old-1.test")


def _prove(pipeline: LegacyPipeline, customers: list[Customer]) -> None:
    for customer in customers:
        if customer.parameters.get("custom_domain"):
            pipeline.publish_token(customer.reference)


def _go_live(pipeline: LegacyPipeline) -> None:
    """Run until every requested entry has its connection parameters published back."""
    pipeline.run()  # proofs validated, entries requested
    pipeline.publish_cdn()
    pipeline.run(("B",))  # connection parameters published to the customers


def build_legacy_site(site: CdnSite, dns: DevDns, workdir: Path) -> LegacySite:
    """Every category of legacy state (see the module and Customer.note)."""
    began = time.monotonic()
    pipeline = LegacyPipeline(site, dns, workdir)
    orders = _Orders(site)
    _order_first_wave(orders)
    pipeline.run()  # tokens issued, plain entries requested
    cats = orders.by_category
    _prove(pipeline, [c for k in CATEGORIES if k != "pending" for c in cats[k]])
    _go_live(pipeline)

    # Second wave: what happens to a live legacy site.
    conflict = orders.order("conflicting", "conflict-leaf", {
        "url": "http://backend.test", "custom_domain": "shop.c.test"},
        "custom_domain equal to conflict-root's alias: the old code checks custom_domain"
        " only against other custom_domains, so both hold shop.c.test")
    for retained in cats["retained"]:
        site.remove_customer(retained.title)
    for changed in list(cats["changed_domain"]):
        params = {**changed.parameters, "custom_domain": changed.parameters["custom_domain"]
                  .replace("old-", "new-")}
        orders.reorder("changed_domain", changed, params,
                       f"was proven for {changed.parameters['custom_domain']};"
                       " the new domain is not proven, its entry still serves the old one")
    pipeline.run()  # retained -> stopped, new tokens for conflict-leaf and the changed ones

    # Third wave: orders that need the retention to have happened, or a held alias.
    reclaimer = orders.order("conflicting", "conflict-reclaimer", {
        "url": "http://backend.test", "custom_domain": "reclaim.test"},
        "proved reclaim.test while retained-2 (stopped) kept its entry serving it:"
        " retention frees the domain, not the entry")
    orders.order("rejected", "rejected-clash", {
        "url": "http://backend.test", "custom_domain": "blog.example-1.test",
        "server-alias": "www.example-1.test"},
        "refused by the old code: its alias is held by proven-apex (no token, no entry)")
    pipeline.run()  # tokens for the reclaimer; rejected-clash refused
    _prove(pipeline, [conflict, reclaimer])
    _go_live(pipeline)
    return LegacySite(pipeline.db_dir, site, dns, pipeline.prefix, pipeline,
                      {k: list(v) for k, v in cats.items()},
                      round(time.monotonic() - began, 3))


def build_legacy_population(site: CdnSite, dns: DevDns, workdir: Path, n: int = 200,
                            proven_every: int = 4) -> LegacySite:
    """``n`` customers live through the old requester: every ``proven_every``-th proven
    with a custom_domain (pop-<i>.test, alias www.pop-<i>.test), the others plain."""
    began = time.monotonic()
    pipeline = LegacyPipeline(site, dns, workdir)
    orders = _Orders(site)
    for i in range(n):
        if proven_every and i % proven_every == 0:
            orders.order("proven", f"pop-{i}", {
                "url": f"http://pop-{i}.backend.test", "custom_domain": f"pop-{i}.test",
                "server-alias": f"www.pop-{i}.test"})
        else:
            orders.order("plain", f"pop-{i}", {"url": f"http://pop-{i}.backend.test"})
    pipeline.run(("source", "A"))  # tokens issued
    _prove(pipeline, orders.by_category["proven"])
    _go_live(pipeline)
    return LegacySite(pipeline.db_dir, site, dns, pipeline.prefix, pipeline,
                      {k: list(v) for k, v in orders.by_category.items() if v},
                      round(time.monotonic() - began, 3))


@pytest.fixture
def legacy_site(cdn_site: CdnSite, devdns: DevDns, tmp_path: Path) -> LegacySite:
    """Every category of legacy state on a fresh slapproxy + DevDns (both still running)."""
    return build_legacy_site(cdn_site, devdns, tmp_path / "legacy")


@pytest.fixture(scope="module")
def legacy_site_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LegacySite]:
    """The same as ``legacy_site``, built once per module, for tests that only read it."""
    workdir = tmp_path_factory.mktemp("legacy-site")
    proxy, dns = Slapproxy(workdir / "slapproxy"), DevDns()
    try:
        proxy.start()
        dns.start()
        yield build_legacy_site(setup_cdn(proxy), dns, workdir / "legacy")
    finally:
        dns.stop()
        proxy.stop()


@pytest.fixture
def legacy_population(cdn_site: CdnSite, devdns: DevDns,
                      tmp_path: Path) -> Iterator[Callable[..., LegacySite]]:
    """Builder: ``legacy_population(n=200, proven_every=4)``, once per test."""
    def build(n: int = 200, proven_every: int = 4) -> LegacySite:
        return build_legacy_population(cdn_site, devdns, tmp_path / "legacy-pop", n, proven_every)
    yield build

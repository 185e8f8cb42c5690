"""/changes end to end (issue 16): a real `cdnreq run` against slapproxy,
on each engine. A customer's life (refused, live, destroyed) shows
as changes in id order; a long poll wakes when the change it waits for is
written; filters and cursors hold; a cursor past the feed answers 410."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from hanodes import Node, http, until, write_token
from test_ha_slapproxy import Cdn

from cdnreq.decide.titles import technical_title
from devtools.devmaster import CdnSite, write_config

pytestmark = pytest.mark.slapproxy


RESELLER_TOKEN = "r" * 24
BILLING_TOKEN = "b" * 24
SHOP_TOKEN = "s" * 24


def secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def node(request: pytest.FixtureRequest, cdn_site: CdnSite, tmp_path: Path):
    """A daemon with three consumers: a reseller that sees the instances whose
    guid starts with "c", billing that sees only live and destroyed, and a
    shop that sees the instances whose customer's title starts with "shop-"."""
    store = {} if request.param == "sqlite" else {
        "url": request.getfixturevalue("pg_url"), "sslmode": "disable", "lease_s": 3.0, "renew_s": 0.5}
    consumers = [
        {"name": "reseller", "token_file": secret_file(tmp_path / "reseller.token", RESELLER_TOKEN),
         "instance_prefixes": ["c"]},
        {"name": "billing", "token_file": secret_file(tmp_path / "billing.token", BILLING_TOKEN),
         "kinds": ["live", "destroyed"]},
        {"name": "shop", "token_file": secret_file(tmp_path / "shop.token", SHOP_TOKEN), "title_prefixes": ["shop-"]},
    ]
    config = write_config(
        tmp_path / "n" / "cdnreq.toml", cdn_site, database=tmp_path / "n" / "cdnreq.db",
        daemon={"tick_interval_s": 0.3, "retry_base_s": 0.2, "retry_max_s": 1.0,
                "token_file": str(write_token(tmp_path))},
        store=store, domain={"retention_s": 0}, consumer=consumers,
    )
    started = Node("n", FaultProxy(cdn_site.proxy.url).start(), config)
    until(lambda: started.get("/healthz") is not None or not started.alive(), "the endpoint answering")
    yield started
    started.remove()


def changes(node: Node, query: str = "") -> tuple[int, dict]:
    answer = http(f"{node.base}/changes?{query}")
    assert answer is not None, node.tail()
    return answer


def kinds_of(node: Node, guid: str) -> list[str]:
    """The instance's changes' kinds ([] while the feed cannot be read: 503 before a PostgreSQL node led)."""
    status, page = changes(node, f"instance={guid}&limit=1000")
    return [c["kind"] for c in page["changes"]] if status == 200 else []


def test_a_customers_life_in_the_feed(cdn_site: CdnSite, node: Node):
    cdn = Cdn(cdn_site)
    good = {"c0": cdn_site.add_customer("c0", {"url": "https://backend-0.example"})}
    bad = cdn_site.add_customer("bad", {"url": "gopher://backend.example"})
    until(lambda: "refused" in kinds_of(node, bad), "the refusal in the feed")
    (refused,) = [c for c in changes(node, "kind=refused")[1]["changes"]]
    assert refused["instance_guid"] == bad and any("gopher://backend.example" in e for e in refused["payload"]["errors"])

    # a long poll from the last id wakes when the answer makes c0 live
    _, page = changes(node)
    cursor = page["next"]
    assert cursor == page["last"] >= 1
    woken: dict = {}

    def wait() -> None:
        began = time.monotonic()
        woken["answer"] = http(f"{node.base}/changes?after={cursor}&wait=30&kind=live", timeout=40)
        woken["took"] = time.monotonic() - began

    waiter = threading.Thread(target=wait)
    waiter.start()
    until(lambda: cdn.converged(good), "c0 served")
    waiter.join(timeout=40)
    status, page = woken["answer"]
    assert status == 200 and woken["took"] < 25, woken
    assert [(c["instance_guid"], c["kind"]) for c in page["changes"]] == [(good["c0"], "live")]
    title = technical_title("cdnreq-", good["c0"])
    assert page["changes"][0]["payload"]["domain"] == f"{title}.cdn.example"

    # (slapproxy keeps a shared instance "started" whatever it is asked: stop and start are
    # tested on the master double)
    cdn_site.remove_customer("c0")  # half the fleet: the removal guard holds it, and says so
    until(lambda: "held" in kinds_of(node, good["c0"]), "held in the feed")
    approved = node.get("/actions/approve", method="POST")
    assert approved is not None and approved[0] == 200, approved
    until(lambda: "destroyed" in kinds_of(node, good["c0"]), "destroyed in the feed")
    assert kinds_of(node, good["c0"]) == ["live", "held", "destroyed"]

    # paging by cursor gives every change once, in id order
    seen, after = [], 0
    while True:
        status, page = changes(node, f"after={after}&limit=1")
        assert status == 200
        if not page["changes"]:
            break
        seen.extend(c["id"] for c in page["changes"])
        after = page["next"]
    assert seen == sorted(seen) == list(range(1, len(seen) + 1))

    status, gone = changes(node, f"after={page['last'] + 5}")
    assert status == 410 and "past the last change" in gone["reason"], gone
    status, refused_query = changes(node, "kind=nosuch")
    assert status == 400 and "kind: unknown 'nosuch'" in refused_query["error"]


def test_a_consumer_sees_its_scope_and_nothing_else(cdn_site: CdnSite, node: Node):
    mine = cdn_site.add_customer("c1", {"url": "https://backend-1.example"})
    other = cdn_site.add_customer("x1", {"url": "https://backend-2.example"})
    for guid in (mine, other):
        cdn_site.add_customer("bad-" + guid[:2], {"url": "gopher://x.example"})
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged({"c1": mine, "x1": other}), "both served")
    until(lambda: len(changes(node, "kind=live")[1]["changes"]) == 2, "both live in the operator's feed")

    reseller = http(f"{node.base}/changes?limit=1000", token=RESELLER_TOKEN)
    assert reseller is not None and reseller[0] == 200, reseller
    assert {c["instance_guid"] for c in reseller[1]["changes"]} == {mine}  # "bad-..." and "x1" are not its
    refused = http(f"{node.base}/changes?instance={other}", token=RESELLER_TOKEN)
    assert refused is not None and refused[0] == 403 and "outside consumer 'reseller'" in refused[1]["error"]

    billing = http(f"{node.base}/changes?limit=1000", token=BILLING_TOKEN)
    assert billing is not None and {c["kind"] for c in billing[1]["changes"]} == {"live"}
    assert {c["instance_guid"] for c in billing[1]["changes"]} == {mine, other}
    assert http(f"{node.base}/changes?kind=refused", token=BILLING_TOKEN)[0] == 403
    # a consumer's token opens the feed, nothing else
    assert http(f"{node.base}/status", token=BILLING_TOKEN)[0] == 401
    assert http(f"{node.base}/actions/retry?guid={mine}", method="POST", token=BILLING_TOKEN)[0] == 401
    assert http(f"{node.base}/changes", token="n" * 24)[0] == 401


def test_a_consumer_scoped_by_title_sees_its_customers_changes_with_their_titles(cdn_site: CdnSite, node: Node):
    mine = cdn_site.add_customer("shop-1", {"url": "https://backend-1.example"})
    other = cdn_site.add_customer("shopper", {"url": "https://backend-2.example"})
    refused = cdn_site.add_customer("shop-bad", {"url": "gopher://x.example"})
    cdn = Cdn(cdn_site)
    until(lambda: cdn.converged({"shop-1": mine, "shopper": other}), "both served")
    until(lambda: "refused" in kinds_of(node, refused), "the refusal in the feed")

    status, page = http(f"{node.base}/changes?limit=1000", token=SHOP_TOKEN)
    assert status == 200, page
    assert {(c["instance_guid"], c["customer_title"], c["kind"]) for c in page["changes"]} == {
        (mine, "shop-1", "live"), (refused, "shop-bad", "refused")}
    # an instance outside its titles, asked for by guid: nothing, the same as one with no change
    status, page = http(f"{node.base}/changes?instance={other}", token=SHOP_TOKEN)
    assert status == 200 and page["changes"] == [], page
    _, everything = changes(node, "limit=1000")
    assert {c["customer_title"] for c in everything["changes"] if c["instance_guid"] == other} == {"shopper"}

    # its customer's removal reaches it too, with the title, after the instance is forgotten
    cdn_site.remove_customer("shop-1")
    until(lambda: "held" in kinds_of(node, mine) or "destroyed" in kinds_of(node, mine), "the removal decided")
    if "destroyed" not in kinds_of(node, mine):
        assert node.get("/actions/approve", method="POST")[0] == 200
    until(lambda: "destroyed" in kinds_of(node, mine), "destroyed in the feed")
    status, page = http(f"{node.base}/changes?instance={mine}&kind=destroyed", token=SHOP_TOKEN)
    assert status == 200 and [c["customer_title"] for c in page["changes"]] == ["shop-1"], page

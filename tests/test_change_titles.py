"""Customers' titles in the change feed (issue 16: a consumer scoped by title
prefix): stored once per instance, copied onto each change, kept onto a
forgotten instance's last change, then dropped; titles from a hostile
listing are cut or refused, never a failed tick."""

from __future__ import annotations

import orjson
import pytest
from test_store import store  # noqa: F401  (the fixture: both engines)

from cdnreq.decide.changes import ChangeEvent, ChangeKind
from cdnreq.decide.names import MAX_TITLE, to_keep
from cdnreq.listing import read_listing
from cdnreq.model import InstanceGuid, Listing, Phase, Record, SharedInstance, Title
from cdnreq.reconcile.names import Names

NOW = 1_800_000_000.0


def rec(guid: str) -> Record:
    return Record(guid=InstanceGuid(guid), title=Title(f"cdn-{guid}"), phase=Phase.NEW, created_at=NOW,
                  updated_at=NOW)


def change(guid: str, kind: ChangeKind = ChangeKind.LIVE) -> ChangeEvent:
    return ChangeEvent(guid, kind, NOW, {})


async def test_a_scope_by_title_reads_its_customers_changes_with_their_titles(store):  # noqa: F811
    await store.commit(upserts=[rec("G1"), rec("G2"), rec("G3")],
                       names=[("G1", "reseller-a/shop"), ("G2", "reseller-b/shop"), ("G3", "reseller-a")])
    await store.commit(changes=[change("G1"), change("G2"), change("G3"), change("G4")])
    rows = await store.changes_after(0, 10, titles=["reseller-a/"])
    assert [(r[2], r[5]) for r in rows] == [("G1", "reseller-a/shop")]  # "reseller-a" has not the prefix
    assert [r[2] for r in await store.changes_after(0, 10, titles=["reseller-a/"], guids=["G4"])] == ["G1", "G4"]
    assert [r[2] for r in await store.changes_after(0, 10, titles=["reseller-"], only=["G2", "G4"])] == ["G2"]
    assert [r[5] for r in await store.changes_after(0, 10)] == [
        "reseller-a/shop", "reseller-b/shop", "reseller-a", None]


async def test_a_title_is_kept_as_first_stored(store):  # noqa: F811
    await store.commit(upserts=[rec("G1")], names=[("G1", "reseller-a/shop")])
    await store.commit(names=[("G1", "reseller-b/taken")])  # a master that lies once, later
    await store.commit(changes=[change("G1")])
    assert [r[5] for r in await store.changes_after(0, 10)] == ["reseller-a/shop"]


async def test_a_forgotten_instances_last_change_keeps_its_title_then_the_title_goes(store):  # noqa: F811
    await store.commit(upserts=[rec("G1")], names=[("G1", "reseller-a/shop")])
    await store.commit(forgets=["G1"], changes=[change("G1", ChangeKind.DESTROYED)])
    assert [(r[3], r[5]) for r in await store.changes_after(0, 10, titles=["reseller-a/"])] == [
        ("destroyed", "reseller-a/shop")]
    assert await store._all("SELECT guid FROM names") == []


async def test_instances_stored_before_titles_get_theirs_at_the_next_tick(store):  # noqa: F811
    await store.commit(upserts=[rec("G1"), rec("G2")])  # no title: as stored by schema 8
    names = Names()
    listed = Listing((SharedInstance.of("G1", {}, title="reseller-a/one"), SharedInstance.of("G2", {}, title=None),
                      SharedInstance.of("G3", {}, title="reseller-a/new")))
    known = {"G1", "G2"}
    await names.keep(listed, known, set(), store)
    assert sorted(await store._all("SELECT guid, name FROM names")) == [("G1", "reseller-a/one"),
                                                                         ("G3", "reseller-a/new")]
    assert names.unnamed == {"G2"}  # listed without a title: tried again while it stays unnamed
    assert to_keep(listed, known | {"G3"}, set(), {"G2"}) == ([], ["G2"])  # the next tick writes nothing


@pytest.mark.parametrize("title, kept", [
    ("shop", "shop"),
    ("s" * 5000, "s" * MAX_TITLE),
    (7, None), (None, None), ("", None), (["a"], None), ({"a": 1}, None),
    ("nul\x00in", None),
])
def test_titles_from_the_listing_are_cut_or_refused(title, kept):
    entry = {"instance_guid": "G1", "state": "started", "parameters": {}, "title": title}
    listing = read_listing(orjson.dumps({"result_list": [entry]}))
    assert to_keep(listing, set(), set(), set()) == (([], ["G1"]) if kept is None else ([("G1", kept)], []))


def test_a_lone_surrogate_in_a_title_is_refused_and_the_instance_kept():
    body = (b'{"result_list": [{"instance_guid": "G1", "state": "started", "parameters": {"a": NaN},'
            b' "title": "bad"}, {"instance_guid": "G2", "state": "started", "parameters": {},'
            b' "title": "ok\\ud800"}]}')
    listing = read_listing(body)  # NaN: read entry by entry, where a lone surrogate can be read
    assert [i.guid for i in listing.instances] == ["G1", "G2"] and listing.instances[1].title == "ok\ud800"
    assert to_keep(listing, set(), set(), set()) == ([("G1", "bad")], ["G2"])

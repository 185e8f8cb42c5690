"""The change feed (issue 16): which transitions make which change, what a
payload may carry, the store's gap-free ids on both engines, and /changes'
query and cursor rules."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from multidict import MultiDict
from test_store import store  # noqa: F401  (the fixture: both engines)

from cdnreq.decide import changes
from cdnreq.decide.actions import Kind
from cdnreq.decide.changes import ChangeEvent, ChangeKind
from cdnreq.model import Event, HostClaim, Phase, Record
from cdnreq.service.feed import MAX_LIMIT, gone, parse_query
from cdnreq.store.migrations import LATEST

NOW = 1_800_000_000.0


def record(**fields) -> Record:
    base = Record(guid="SOFTINST-1", title="cdnreq-SOFTINST-1", phase=Phase.REQUESTED, created_at=1.0,
                  updated_at=1.0, param_hash="p1", requested_state="started", tech_guid="T-1")
    return replace(base, **fields)


def kinds(found: list[ChangeEvent]) -> list[str]:
    return [c.kind.value for c in found]


def test_live_is_once_when_the_customer_first_holds_the_answer():
    from cdnreq.decide import transitions

    requested = record(connection={"domain": "x.cdn.example"})
    polled = replace(requested, phase=Phase.LIVE)
    failed_publish = polled  # a publication that failed: the record is LIVE, the customer holds nothing new
    assert changes.of_outcome(requested, failed_publish, Kind.POLL, False, None, NOW) == []
    told = transitions.published(polled, {"domain": "x.cdn.example"}, None, NOW)
    assert kinds(changes.of_outcome(polled, told, Kind.PUBLISH, True, {"domain": "x"}, NOW)) == ["live"]
    held = transitions.settled(polled, NOW)  # already shown (an answer given at the request)
    assert kinds(changes.of_outcome(requested, held, Kind.POLL, True, None, NOW)) == ["live"]
    # an update: requested again, then live again; told once already, so no second `live`
    updated = replace(told, phase=Phase.REQUESTED, param_hash="p2")
    again = transitions.published(replace(updated, phase=Phase.LIVE), {"domain": "y"}, None, NOW + 1)
    assert again.live_at == told.live_at
    assert changes.of_outcome(updated, again, Kind.POLL, True, {"domain": "y"}, NOW + 1) == []
    assert transitions.settled(record(), NOW).live_at is None  # not live: nothing held yet


def test_a_poll_that_brings_the_answer_is_live_with_where_the_site_is():
    before = record()
    after = record(phase=Phase.LIVE, connection={"domain": "x.cdn.example", "ssl_key": "SECRET", "url": "https://x"},
                   published=b"d2", live_at=NOW)  # transitions.published: the customer holds the answer
    found = changes.of_outcome(before, after, Kind.POLL, True, {"domain": "x.cdn.example"}, NOW)
    assert kinds(found) == ["live"]
    payload = found[0].payload
    assert payload["domain"] == "x.cdn.example" and payload["url"] == "https://x"
    assert "SECRET" not in json.dumps(payload)  # only the keys of the answer, never other values
    assert "ssl_key" in payload["answer_keys"]
    assert changes.of_outcome(after, replace(after, updated_at=2.0), Kind.POLL, True, None, NOW) == []  # once


def test_updates_say_stopped_started_or_updated_and_never_the_parameters():
    live = record(phase=Phase.LIVE)
    stopped = changes.of_outcome(live, replace(live, requested_state="stopped"), Kind.UPDATE, True, None, NOW)
    started = changes.of_outcome(replace(live, requested_state="stopped"), live, Kind.UPDATE, True, None, NOW)
    updated = changes.of_outcome(live, replace(live, param_hash="p2"), Kind.UPDATE, True, None, NOW)
    failed = changes.of_outcome(live, replace(live, failures=1), Kind.UPDATE, False, None, NOW)
    assert (kinds(stopped), kinds(started), kinds(updated), failed) == (["stopped"], ["started"], ["updated"], [])
    assert updated[0].payload == {"title": live.title}


def test_refused_and_pending_dns_are_what_the_customer_was_newly_told():
    before = record(phase=Phase.NEW, tech_guid=None, param_hash=None)
    refused = changes.of_outcome(
        before, replace(before, published=b"a", published_error="bad"), Kind.PUBLISH, True,
        {"request-error-list": json.dumps(["url: 'ftp://x' is not http(s)"]), "message": "bad"}, NOW)
    assert kinds(refused) == ["refused"] and refused[0].payload == {"errors": ["url: 'ftp://x' is not http(s)"]}
    shown = {"txt_record": "_cdnreq.shop.example", "txt_value": "tok", "pending-host-list": '["shop.example"]',
             "message": "publish the TXT record"}
    pending = changes.of_outcome(before, replace(before, published=b"b"), Kind.PUBLISH, True, shown, NOW)
    assert kinds(pending) == ["pending_dns"]
    assert pending[0].payload == {"txt_record": "_cdnreq.shop.example", "txt_value": "tok", "hosts": ["shop.example"]}
    same = replace(before, published=b"b")
    assert changes.of_outcome(same, same, Kind.PUBLISH, True, shown, NOW) == []  # told already


def test_destroyed_retained_and_held():
    gone_record = record(phase=Phase.REMOVING)
    assert kinds(changes.of_outcome(gone_record, None, Kind.DESTROY, True, None, NOW)) == ["destroyed"]
    assert changes.of_outcome(gone_record, None, Kind.DESTROY, False, None, NOW) == []
    # sent, then read back gone: destroyed once, when it is proven
    sent = record(phase=Phase.REMOVING, last_action="destroy")
    assert changes.of_outcome(record(phase=Phase.REMOVING), sent, Kind.DESTROY, True, None, NOW) == []
    assert kinds(changes.of_outcome(sent, None, Kind.POLL, True, None, NOW)) == ["destroyed"]
    assert changes.of_outcome(record(tech_guid=None), None, Kind.DESTROY, True, None, NOW) == []  # no entry
    retained = changes.of_record(record(phase=Phase.LIVE), record(phase=Phase.RETAINED, gone_at=NOW), NOW)
    assert kinds(retained) == ["retained"] and retained[0].payload["gone_at"] == NOW
    holds = changes.held([Event("G", "hold", "held", NOW, "half the fleet left"), Event("H", "poll", "ok", NOW)],
                         "removal")
    assert [(c.instance_guid, c.kind, c.payload["held"]) for c in holds] == [("G", ChangeKind.HELD, "removal")]


def test_hosts_proven_failing_and_released_against_the_claims_before():
    a = HostClaim("shop.example", "A", "shop.example", NOW, NOW)
    b = HostClaim("shop.example", "B", "shop.example", NOW, NOW)
    failing = replace(a, failing_since=NOW)
    assert kinds(changes.of_hosts({"shop.example": None}, [a], [], NOW)) == ["host_proven"]
    taken = changes.of_hosts({"shop.example": a}, [b], [], NOW)
    assert [(c.instance_guid, c.kind.value) for c in taken] == [("A", "host_released"), ("B", "host_proven")]
    assert kinds(changes.of_hosts({"shop.example": a}, [failing], [], NOW)) == ["host_failing"]
    assert changes.of_hosts({"shop.example": failing}, [failing], [], NOW) == []  # the streak is told once
    assert [(c.instance_guid, c.kind.value) for c in changes.of_hosts({"shop.example": a}, [], ["shop.example"], NOW)
            ] == [("A", "host_released")]


def test_the_watched_index_remembers_the_claim_before_the_first_change():
    a = HostClaim("shop.example", "A", "shop.example", NOW, NOW)
    index = changes.WatchedIndex([a])
    assert index.take_was() == {}  # the claims it starts with are not changes
    index.put(replace(a, guid="B"))
    index.put(replace(a, guid="C"))
    assert index.take_was() == {"shop.example": a} and index.take_was() == {}


def test_query_errors_name_the_parameter_and_the_value():
    for query, named in (({"after": "-1"}, "after: '-1'"), ({"limit": str(MAX_LIMIT + 1)}, "limit: '1001'"),
                         ({"kind": "live,nope"}, "kind: unknown 'nope'"), ({"wait": "61"}, "wait: '61'"),
                         ({"wait": "nan"}, "wait: 'nan'"), ({"after": "１"}, "after: '１'")):
        with pytest.raises(ValueError) as refused:
            parse_query(MultiDict(query))
        assert named in str(refused.value), (query, refused.value)
    got = parse_query(MultiDict([("kind", "live"), ("kind", "refused,destroyed"), ("instance", "G1"), ("wait", "2.5")]))
    assert got.kinds == ("live", "refused", "destroyed") and got.guids == ("G1",) and got.wait_s == 2.5


def test_a_cursor_is_gone_when_pruned_past_or_beyond_the_last_change():
    assert gone(0, None, 0) is None and gone(5, 6, 9) is None and gone(9, 6, 9) is None
    assert "pruned" in gone(4, 6, 9)
    assert "pruned" in gone(3, None, 9)  # everything pruned
    assert "past the last change" in gone(10, 6, 9)  # a restored or replaced store


async def test_ids_have_no_gap_and_survive_pruning(store):  # noqa: F811
    first = [ChangeEvent(f"G{i}", ChangeKind.LIVE, NOW + i, {"n": i}) for i in range(3)]
    await store.commit(changes=first)
    await store.commit(changes=[ChangeEvent("G1", ChangeKind.DESTROYED, NOW + 9, {"title": "t\u00e9"})])
    rows = await store.changes_after(0, 10)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [json.loads(r[4]) for r in rows][3] == {"title": "t\u00e9"}
    assert [r[0] for r in await store.changes_after(1, 10, kinds=["destroyed"])] == [4]
    assert [r[0] for r in await store.changes_after(0, 10, guids=["G1"])] == [2, 4]
    assert [r[0] for r in await store.changes_after(2, 1)] == [3]
    assert await store.feed_bounds() == (1, 4)
    await store.commit(also=[("DELETE FROM changes WHERE id <= ?", [(4,)])])  # as a pruning pass would
    assert await store.feed_bounds() == (None, 4)
    await store.commit(changes=[ChangeEvent("G9", ChangeKind.LIVE, NOW, {})])
    assert [r[0] for r in await store.changes_after(0, 10)] == [5]  # never an id given before


async def test_a_store_of_schema_7_gains_an_empty_feed(tmp_path):
    """Schema 8 adds the feed: a store written by the previous version keeps
    its instances and events, and its feed starts at id 1."""
    import sqlite3

    from cdnreq.store import Store

    path = tmp_path / "v7.db"
    async with await Store.open(path) as s:
        await s.commit(upserts=[record()], events=[Event("SOFTINST-1", "request", "ok", NOW)])
    with sqlite3.connect(path) as raw:  # back to what schema 7 wrote
        raw.executescript("DROP TABLE changes; DROP TABLE feed_state; DROP TABLE deliveries;"
                          "DROP TABLE consumer_cursors; ALTER TABLE instances DROP COLUMN live_at;"
                          "DROP TABLE names; DELETE FROM migrations WHERE version >= 8;"
                          "UPDATE schema_version SET version = 7;")
    raw.close()
    async with await Store.open(path) as s:
        assert s.schema_version == LATEST
        assert set(await s.load()) == {"SOFTINST-1"} and len(await s.events_for("SOFTINST-1")) == 1
        assert (await s.get("SOFTINST-1")).live_at is None  # requested, never live: not marked
        assert await s.feed_bounds() == (None, 0)
        await s.commit(changes=[ChangeEvent("SOFTINST-1", ChangeKind.LIVE, NOW, {})])
        assert [r[0] for r in await s.changes_after(0, 10)] == [1]


def consumer(**fields):
    from cdnreq.config import ConsumerConfig

    return ConsumerConfig.model_validate({"name": "r", "token_file": "/x", **fields})


def test_a_consumer_query_is_narrowed_to_its_scope_or_refused():
    from cdnreq.service.feed import FeedQuery, scoped

    everything = FeedQuery(after=3)
    assert scoped(everything, None) == everything  # the operator
    reseller = consumer(instance_prefixes=["RES-"], instances=["SOFTINST-7"], kinds=["live", "destroyed"])
    narrowed = scoped(everything, reseller)
    assert (narrowed.kinds, narrowed.guids, narrowed.prefixes) == (("live", "destroyed"), ("SOFTINST-7",), ("RES-",))
    asked = scoped(FeedQuery(guids=("RES-1",), kinds=("live",)), reseller)
    assert (asked.only, asked.guids, asked.prefixes) == (("RES-1",), ("SOFTINST-7",), ("RES-",))
    with pytest.raises(PermissionError, match="'SOFTINST-8' is outside consumer 'r'"):
        scoped(FeedQuery(guids=("SOFTINST-8",)), reseller)
    with pytest.raises(PermissionError, match="'refused' is not among consumer 'r'"):
        scoped(FeedQuery(kinds=("refused",)), reseller)
    assert reseller.covers("RES-9") and not reseller.covers("SOFTINST-70")  # an exact guid is not a prefix
    # a scope by title: the store matches the titles, so a guid asked for is narrowed, not refused
    by_title = consumer(title_prefixes=["reseller-a/"])
    asked = scoped(FeedQuery(guids=("SOFTINST-8",)), by_title)
    assert (asked.only, asked.guids, asked.titles) == (("SOFTINST-8",), (), ("reseller-a/",))


def test_consumer_files_are_checked_naming_the_consumer_and_the_file(tmp_path):
    import base64

    from cdnreq.config import Config
    from cdnreq.consumers import read_consumers

    def file(name: str, text: str, mode: int = 0o600) -> str:
        path = tmp_path / name
        path.write_text(text)
        path.chmod(mode)
        return str(path)

    good_secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    config = Config.model_validate({
        "master": {"url": "http://127.0.0.1:1", "instance_guid": "R"},
        "technical_cdn": {"software_release_uri": "http://sr"},
        "consumer": [
            {"name": "short", "token_file": file("short", "abc")},
            {"name": "same", "token_file": file("same", "o" * 20)},
            {"name": "open", "token_file": file("open", "p" * 20, 0o644)},
            {"name": "hook", "url": "https://h.example/x", "secret_file": file("bad", "not-a-secret")},
            {"name": "fine", "token_file": file("fine", "f" * 20), "url": "https://h.example/y",
             "secret_file": file("good", good_secret)},
        ],
    })
    consumers, problems = read_consumers(config, "o" * 20)
    text = "\n".join(problems)
    assert "'short' token_file: the token in" in text and "shorter than 16" in text
    assert "'same' token_file:" in text and "already given to the operator" in text
    assert "'open' token_file:" in text and "chmod 600" in text
    assert "'hook' secret_file:" in text and "Standard Webhooks secret" in text
    assert len(problems) == 4
    assert consumers.of_token(b"f" * 20).name == "fine" and consumers.of_token(b"o" * 20) is None
    assert consumers.keys == {"fine": b"k" * 32}


def test_consumer_configuration_errors_name_the_key():
    from pydantic import ValidationError

    for fields, named in (({"url": "ftp://x"}, "url"), ({"url": "https://u:p@x/"}, "credentials"),
                          ({"url": "https://x/"}, "secret_file"), ({"token_file": None}, "neither url nor token_file"),
                          ({"instance_prefixes": [""]}, "empty guid or prefix"), ({"name": "Bad Name"}, "name")):
        with pytest.raises(ValidationError) as refused:
            consumer(**fields)
        assert named in str(refused.value), (fields, refused.value)


async def test_a_scope_by_prefix_reads_only_its_instances(store):  # noqa: F811
    await store.commit(changes=[ChangeEvent(g, ChangeKind.LIVE, NOW, {}) for g in ("RES-1", "RES-2", "X-1", "RES")])
    assert [r[2] for r in await store.changes_after(0, 10, prefixes=["RES-"])] == ["RES-1", "RES-2"]
    assert [r[2] for r in await store.changes_after(0, 10, guids=["X-1"], prefixes=["RES-"])] == [
        "RES-1", "RES-2", "X-1"]
    assert await store.changes_after(0, 10, prefixes=["%"]) == []  # a prefix is text, not a pattern


async def test_a_cursor_older_than_the_retention_is_gone_after_a_pruning_pass(store):  # noqa: F811
    """Changes are pruned with the history; a consumer whose cursor points
    before the oldest kept change gets 410 with the bounds, not a page that
    silently skips what it missed; one at the edge gets the rest."""
    import asyncio

    from cdnreq.service.feed import Feed, FeedQuery
    from cdnreq.store.retention import Retention

    await store.commit(changes=[ChangeEvent(f"G{i}", ChangeKind.LIVE, NOW - 40 * 86400 + i, {}) for i in range(3)])
    await store.commit(changes=[ChangeEvent("G9", ChangeKind.DESTROYED, NOW, {})])
    if hasattr(store, "in_turn"):
        from cdnreq.store.prune import prune
    else:
        from cdnreq.store.pgprune import prune
    report = await prune(store, Retention(30), now=NOW)
    assert report.deleted["changes"] == 3
    feed = Feed(lambda: store, asyncio.Event())
    status, body = await feed.page(FeedQuery(after=1))
    assert status == 410 and body["oldest"] == 4 and body["last"] == 4 and "pruned" in body["reason"], body
    status, body = await feed.page(FeedQuery(after=3))
    assert status == 200 and [c["id"] for c in body["changes"]] == [4] and body["next"] == 4

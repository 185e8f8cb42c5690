"""Attacks on the feed's reads on both engines: values a query string can
carry (a NUL, long and non-BMP text, LIKE metacharacters) reach the store
as bound parameters and answer a page, never an internal error."""

from __future__ import annotations

import asyncio

from multidict import MultiDict
from test_store import store  # noqa: F401  (the fixture: both engines)

from cdnreq.decide.changes import ChangeEvent
from cdnreq.model import ChangeKind
from cdnreq.service.feed import Feed, parse_query, scoped

NOW = 1_800_000_000.0


async def test_odd_instance_values_answer_a_page(store):  # noqa: F811
    """GET /changes?instance=a%00b (aiohttp decodes %00 to a NUL): on
    PostgreSQL a NUL cannot be in a text parameter, so the page raises and
    the endpoint answers 500 "internal error" (README: 400 names the
    parameter and the value refused)."""
    await store.commit(changes=[ChangeEvent(g, ChangeKind.LIVE, NOW, {}) for g in ("A_1", "A%1", "AB1", "\U0001F600")])
    feed = Feed(lambda: store, asyncio.Event())
    for values in ([("instance", "A_1")], [("instance", "\U0001F600")], [("instance", "x" * 1000)] * 100):
        status, body = await feed.page(parse_query(MultiDict(values)))
        assert status == 200, (values[:1], body)
    for values in ([("instance", "a\x00b")], [("kind", "live"), ("instance", "\x00")]):
        try:
            status, body = await feed.page(parse_query(MultiDict(values)))
        except ValueError as refused:  # a 400 from the endpoint
            assert "instance" in str(refused)
            continue
        assert status == 200 and body["changes"] == [], (values, body)


async def test_a_prefix_scope_is_text_not_a_pattern(store):  # noqa: F811
    from cdnreq.config import ConsumerConfig

    await store.commit(changes=[ChangeEvent(g, ChangeKind.LIVE, NOW, {}) for g in ("A_1", "AB1", "A%1", "a_1")])
    feed = Feed(lambda: store, asyncio.Event())
    reseller = ConsumerConfig.model_validate({"name": "r", "token_file": "/x", "instance_prefixes": ["A_", "A%"]})
    status, body = await feed.page(scoped(parse_query(MultiDict()), reseller))
    assert status == 200 and [c["instance_guid"] for c in body["changes"]] == ["A_1", "A%1"], body

"""The webhook outbox's filling, against a real store (no receiver needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cdnreq.config import ConsumerConfig
from cdnreq.decide.changes import ChangeEvent, ChangeKind
from cdnreq.metrics import Metrics
from cdnreq.service.webhooks import Deliverer
from cdnreq.store import Store

NOW = 1_767_225_600.0


def deliverer(store: Store, **scope: list[str]) -> Deliverer:
    consumer = ConsumerConfig.model_construct(
        name="billing", url="https://billing.example.net/hooks", kinds=scope.get("kinds", []),
        instances=scope.get("instances", []), instance_prefixes=[], title_prefixes=[],
    )
    return Deliverer(store, consumer, b"k" * 24, [], Metrics(), lambda: True, asyncio.Event())


async def test_a_consumer_none_of_whose_changes_are_new_moves_its_cursor_past_the_others(tmp_path: Path) -> None:
    """A consumer scoped to some kinds or instances, while the changes after
    its cursor are all out of its scope: the fill found no row and crashed
    (max() of one integer), so every round failed before sending what was
    due ('webhook round failed' each POLL_S, retries stalled) until a change
    of its scope came."""
    async with await Store.open(tmp_path / "cdnreq.db") as store:
        one = deliverer(store, instances=["A"])
        await one.outbox.start_at(0)
        await store.commit(changes=[ChangeEvent("B", ChangeKind.LIVE, NOW, {"g": "B"})])
        await one._fill()
        _, last = await store.feed_bounds()
        assert await one.outbox.cursor() == last
        assert await one.outbox.due(NOW + 10**6, 10) == []

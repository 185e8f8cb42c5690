"""Attacks on the store's life: a restore, a copy between engines, an
import, and the first tick after each (the cut-over attack round)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cdnreq.decide.changes import ChangeEvent, ChangeKind
from cdnreq.service.feed import Feed, FeedQuery
from cdnreq.store import Store, restore

NOW = 1_767_225_600.0


async def _changes(store: Store, *guids: str) -> list[int]:
    await store.commit(changes=[ChangeEvent(g, ChangeKind.LIVE, NOW, {"g": g}) for g in guids])
    return [row[0] for row in await store.changes_after(0, 1000, guids=guids)]


async def test_a_restored_store_never_gives_a_change_id_the_lost_one_gave(tmp_path: Path) -> None:
    """Restoring a backup older than the feed a consumer followed: the
    changes written after the backup are gone, and the restored feed counted
    from the backup's last id again, so the first tick's new changes took
    the very ids the consumers had already seen (a webhook's `webhook-id`
    `cdnreq_<id>`, by which a receiver drops a repeat): a cursor from the
    lost store got 410 only until the new ids overtook it, then it silently
    skipped every new change up to it."""
    db, backups = tmp_path / "state" / "cdnreq.db", tmp_path / "backups"
    async with await Store.open(db) as store:
        await _changes(store, "A", "B")
        backup = await store.backup(backups, now=NOW)
        lost = await _changes(store, "C", "D", "E")  # after the backup: 3, 4, 5
    restore(backup, db, now=NOW + 60)
    async with await Store.open(db) as store:
        new = await _changes(store, "F", "G", "H", "I")
        feed = Feed(lambda: store, asyncio.Event())
        stale = await feed.page(FeedQuery(after=max(lost)))  # a consumer that had seen them
        kept = await feed.page(FeedQuery(after=2))  # one that had seen only the backup's
    assert not set(new) & set(lost), (new, lost)
    assert min(new) > max(lost)
    assert stale[0] == 410 and "restored" in stale[1]["reason"], stale
    assert kept[0] == 200 and [c["id"] for c in kept[1]["changes"]] == new

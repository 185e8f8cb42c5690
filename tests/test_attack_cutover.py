"""Attacks on the store's life: a restore, a copy between engines, an
import, and the first tick after each (the cut-over attack round)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cdnreq.decide.changes import ChangeEvent, ChangeKind
from cdnreq.legacy.adopt import LEGACY_SALT
from cdnreq.model import Challenge, InstanceGuid
from cdnreq.service.feed import Feed, FeedQuery
from cdnreq.store import Store, restore
from tests.test_attack_master_lies import (
    a_recheck_passes_and_nothing_breaks, fleet, full, lied, ok_tick, restarted, settle_back,
)
from tests.test_tick_stages import L, opened  # noqa: F401

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


async def test_an_imported_customer_named_with_another_domain_once_keeps_its_old_token(
    tmp_path: Path, opened: list[Store]  # noqa: F811
) -> None:
    """A customer imported from the cron requester keeps the token the old
    requester gave it (salt LEGACY_SALT: no HMAC of cdnreq's gives it back).
    One listing naming another custom_domain replaced its challenge, and
    coming back to its domain computed cdnreq's token for it: the customer
    was shown a token its DNS does not hold, the next re-check failed and,
    with release_on_recheck_failure, its live entry was taken down: one lie
    of the master, a site broken, for imported customers only."""
    domain = {"release_on_recheck_failure": True, "grace_s": 0}
    r, master, clock = await fleet(tmp_path, opened, domain)
    old = Challenge(InstanceGuid("A"), "www.a.example", LEGACY_SALT, "old-requester-token-of-a", clock.now)
    await r.store.commit(challenge_upserts=[old])  # as import-legacy writes it
    r.resolver.txt[f"{L}.www.a.example"] = old.token  # type: ignore[attr-defined]
    r = await restarted(r, master)
    master.entries = lied("A names another domain")
    await ok_tick(r, clock)
    master.entries = full()
    await settle_back(r, clock)
    assert (await r.store.challenge_of("A")).token == old.token  # type: ignore[union-attr]
    await a_recheck_passes_and_nothing_breaks(r, master, clock)


async def test_a_consumer_at_the_backup_s_last_change_is_not_told_the_restore_s_gap_was_pruned(tmp_path: Path) -> None:
    """A backup whose feed kept no change (a quiet fleet: every change
    older than the feed's retention was pruned) is restored: the feed moves
    past the lost store's ids (store/feedgaps.py), and the gap it leaves
    was taken for changes pruned by retention. A consumer that had read up
    to the backup's last id got 410 ("the changes after 2 up to
    1767225660000 were pruned") though it missed nothing the restored store
    holds, and a webhook consumer at that id was given a dead letter for
    1.7 trillion changes "lost to pruning", counted in its dead deliveries."""
    from cdnreq.config import ConsumerConfig
    from cdnreq.metrics import Metrics
    from cdnreq.service.webhooks import Deliverer

    db, backups = tmp_path / "state" / "cdnreq.db", tmp_path / "backups"
    async with await Store.open(db) as store:
        seen = await _changes(store, "A", "B")
        await store.prune_if_due(1, NOW + 3 * 86400)  # the feed's retention: both pruned
        assert await store.changes_after(0, 10) == []
        backup = await store.backup(backups, now=NOW + 3 * 86400)
    restore(backup, db, now=NOW + 3 * 86400 + 60)
    async with await Store.open(db) as store:
        feed = Feed(lambda: store, asyncio.Event())
        before = await feed.page(FeedQuery(after=max(seen)))
        consumer = ConsumerConfig.model_construct(name="billing", url="https://billing.example.net/hooks",
                                                  kinds=[], instances=[], instance_prefixes=[], title_prefixes=[])
        metrics = Metrics()
        deliverer = Deliverer(store, consumer, b"k" * 24, [], metrics, lambda: True, asyncio.Event())
        await deliverer.outbox.start_at(max(seen))  # its cursor, as the backup holds it
        await deliverer._fill()
        dead = [d for d in await deliverer.outbox.due(NOW + 10**6, 100)]
        new = await _changes(store, "F")
        after = await feed.page(FeedQuery(after=max(seen)))
    assert before[0] == 200, before
    assert after[0] == 200 and [c["id"] for c in after[1]["changes"]] == new, after
    assert dead == [], dead
    assert metrics.deliveries.labels(consumer="billing", result="dead")._value.get() == 0


async def test_events_tail_after_a_cursor_the_feed_no_longer_serves_says_so(tmp_path: Path) -> None:
    """`cdnreq events tail --after N` for a cursor GET /changes answers 410
    (given by a store since restored over) printed the restored store's
    changes after it as if they were all the cursor missed, with no word."""
    from tests.test_backup import cdnreq, offline_config

    config = offline_config(tmp_path)
    db, backups = tmp_path / "state" / "cdnreq.db", tmp_path / "backups"
    async with await Store.open(db) as store:
        seen = await _changes(store, "A", "B")
        backup = await store.backup(backups, now=NOW)
        lost = await _changes(store, "C", "D", "E")
    restore(backup, db, now=NOW + 60)
    async with await Store.open(db) as store:
        new = await _changes(store, "F")
    stale = cdnreq("events", "tail", "--after", max(lost), "--config", config)
    kept = cdnreq("events", "tail", "--after", max(seen), "--config", config)
    assert stale.returncode == 0 and "warning" in stale.stderr and f"cursor {max(lost)}" in stale.stderr, stale
    assert "restored" in stale.stderr and "resynchronise" in stale.stderr, stale.stderr
    assert kept.returncode == 0 and kept.stderr == "", kept.stderr
    assert [int(line.split()[0]) for line in kept.stdout.splitlines()] == new, kept.stdout


async def test_a_backup_from_before_the_feed_restored_never_gives_an_id_the_lost_store_gave(tmp_path: Path) -> None:
    """A backup of schema 7 (before the change feed: no feed_state), restored
    over a store whose feed consumers had followed: the migration that
    creates the feed started it at 0, so the first changes took ids the
    consumers had seen (webhooks dropped as repeats, cursors past them
    skipping the new changes), with no gap recorded (no 410)."""
    from tests.test_decisions import make_schema_5

    db, old = tmp_path / "state" / "cdnreq.db", tmp_path / "old.db"
    make_schema_5(old, version=7)
    async with await Store.open(db) as store:
        lost = await _changes(store, "A", "B", "C")
    restore(old, db, now=NOW + 60)
    async with await Store.open(db) as store:
        new = await _changes(store, "F", "G")
        feed = Feed(lambda: store, asyncio.Event())
        stale = await feed.page(FeedQuery(after=max(lost)))
        fresh = await feed.page(FeedQuery(after=0))
    assert min(new) > max(lost), (new, lost)
    assert stale[0] == 410 and "restored" in stale[1]["reason"], stale
    assert fresh[0] == 200 and [c["id"] for c in fresh[1]["changes"]] == new, fresh  # one that had read nothing

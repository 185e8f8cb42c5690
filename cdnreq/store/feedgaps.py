"""The change feed across a restore: ids the restored store must never give
again, and the cursors that point into what was lost.

A backup holds the feed up to its last id; the store it replaces may have
given more ids (changes the consumers saw, webhooks they took, each with
its `webhook-id cdnreq_<id>`). Counting on from the backup's last id would
give those ids to other changes: a receiver drops them as repeats, and a
cursor from the lost store skips them silently once the new ids pass it.
So `cdnreq restore` moves the restored feed past every id the replaced
store gave (when it can be read) and past the time of the restore in
milliseconds (when it cannot: a lost disk; the ids of a feed are far
fewer than the milliseconds between two restores), and records the ids
skipped as a gap: a cursor in a gap answers 410 (resynchronise).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

FEED_RESTORED = "feed-restored"  # guards row: {"gaps": [[after, through], ...]}, ids a restore skipped


def gaps_of(value: Any) -> tuple[tuple[int, int], ...]:
    """The gaps a guards row holds (a hand-edited one: those that can be read)."""
    gaps = value.get("gaps") if isinstance(value, dict) else None
    if not isinstance(gaps, list):
        return ()
    return tuple((g[0], g[1]) for g in gaps
                 if isinstance(g, list) and len(g) == 2 and all(type(v) is int for v in g))


def in_gap(after: int, gaps: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    return next(((a, t) for a, t in gaps if a < after <= t), None)


def past_gaps(cursor: int, gaps: tuple[tuple[int, int], ...]) -> int:
    """A cursor as far as it has read: one at a gap's start (the backup's
    last change) has missed nothing of the ids the gap skipped, which this
    store never gave. Pruning is judged from here, or the gap reads as
    changes pruned (retention) once the backup's own are gone."""
    for after, through in sorted(gaps):
        if after <= cursor < through:
            cursor = through
    return cursor


def _last_given(database: Path) -> int | None:
    """The last id the database's feed gave, or None when it cannot be read."""
    if not database.is_file():
        return None
    # without a -wal, everything is in the file: read it as it is, creating no -wal or -shm beside it
    mode = "mode=ro" if Path(f"{database}-wal").exists() else "mode=ro&immutable=1"
    try:
        with closing(sqlite3.connect(f"file:{quote(str(database.absolute()))}?{mode}", uri=True)) as conn:
            row = conn.execute("SELECT last_id FROM feed_state WHERE id = 1").fetchone()
    except (sqlite3.Error, OSError):
        return None
    return row[0] if row is not None and type(row[0]) is int else None


def skip_lost_ids(copy: str | Path, replaced: Path, now: float) -> None:
    """Move the feed of `copy` (the backup about to be put in place) past
    every id `replaced` may have given, and record the gap. A backup from
    before the feed (no feed_state) gets the gap only: the migration that
    creates its feed starts it at the gap's end (migrations._feed_past_restored_gaps)."""
    floor = max(_last_given(replaced) or 0, int(now * 1000))
    with closing(sqlite3.connect(copy, isolation_level=None)) as conn:
        has = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('feed_state', 'guards')")}
        if "guards" not in has:
            return  # older still than guard state: nothing to record the gap in
        row = conn.execute("SELECT last_id FROM feed_state WHERE id = 1").fetchone() if "feed_state" in has else None
        last = row[0] if row is not None else 0
        if floor <= last:
            return
        old = conn.execute("SELECT value FROM guards WHERE name = ?", (FEED_RESTORED,)).fetchone()
        try:
            kept = gaps_of(json.loads(old[0])) if old is not None else ()
        except ValueError:
            kept = ()
        value = json.dumps({"gaps": [list(g) for g in (*kept, (last, floor))]})
        conn.execute("BEGIN IMMEDIATE")
        if "feed_state" in has:
            conn.execute("INSERT INTO feed_state (id, last_id) VALUES (1, ?) "
                         "ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id", (floor,))
        conn.execute("INSERT INTO guards (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                     "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                     (FEED_RESTORED, value, now))
        conn.execute("COMMIT")

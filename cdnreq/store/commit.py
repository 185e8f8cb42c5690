"""What one commit writes, and in which order: the (sql, rows) steps of the
transaction Store.commit runs. Pure: models in, rows out; nothing touches
the database here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from cdnreq.decide.changes import ChangeEvent
from cdnreq.model import Challenge, Decision, Event, HostClaim, Record
from cdnreq.store.errors import StoreError
from cdnreq.store.rows import (
    ADVANCE_FEED,
    DELETE,
    DELETE_CHALLENGE,
    DELETE_DECISION,
    DELETE_HOST,
    DELETE_HOSTS_OF,
    INSERT_CHANGE,
    INSERT_EVENT,
    INSERT_NAME,
    DELETE_NAME,
    SET_PUBLISHED,
    SET_SLEEP,
    UPSERT,
    UPSERT_CHALLENGE,
    UPSERT_DECISION,
    UPSERT_HOST,
    challenge_row,
    dump,
    host_row,
    to_row,
)

Step = tuple[str, list[Any]]  # one statement, run for each of its rows


def commit_steps(
    path: Path,
    *,
    upserts: Iterable[Record] = (),
    forgets: Iterable[str] = (),
    events: Iterable[Event] = (),
    host_upserts: Iterable[HostClaim] = (),
    host_deletes: Iterable[str] = (),
    challenge_upserts: Iterable[Challenge] = (),
    challenge_deletes: Iterable[str] = (),
    decisions: Iterable[Decision] = (),
    shown: Mapping[str, Mapping[str, Any] | None] | None = None,
    asleep: Iterable[tuple[str, str]] = (),
    changes: Iterable[ChangeEvent] = (),
    names: Iterable[tuple[str, str]] = (),
    also: Iterable[Step] = (),
) -> list[Step]:
    """The steps of one commit with rows; `path` names the database in errors.
    In order: forgets (each with its hosts, challenge and kept decision: a
    forgotten instance owns nothing), host and challenge deletes, upserts, what
    was shown (by guid), host and challenge upserts, decisions, sleep marks,
    events, the change feed with the customers' titles (feed_steps), `also`.
    So a title or a host freed by one instance can be taken by another in the
    same commit (a host upsert transfers it)."""
    try:
        upsert_rows = [to_row(r) for r in upserts]
        forget_rows = [(g,) for g in forgets]
        event_rows = [(e.at, e.tick, e.instance_guid, e.action, e.outcome, e.detail)
                      for e in events]  # fmt: skip
        host_rows = [host_row(h) for h in host_upserts]
        host_delete_rows = [(h,) for h in host_deletes]
        challenge_rows = [challenge_row(c) for c in challenge_upserts]
        challenge_delete_rows = [(g,) for g in challenge_deletes]
        decision_rows = [(d.guid, d.param_hash, d.stamp, d.verdict, d.gate, d.claims, d.next_lookup)
                         for d in decisions]  # fmt: skip
        shown_rows = [(None if v is None else dump(v), g) for g, v in (shown or {}).items()]
        sleep_rows = [(str(mark), str(g)) for g, mark in asleep]
        feed = feed_steps(changes, names, forget_rows)
    except (ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"{path}: cannot encode commit: {exc}") from exc
    _refuse_writes_to_forgotten(path, {g for (g,) in forget_rows}, {
        "upserts": {r[0] for r in upsert_rows},
        "host_upserts": {r[1] for r in host_rows},
        "challenge_upserts": {r[0] for r in challenge_rows},
        "decisions": {r[0] for r in decision_rows},
        "shown": {r[1] for r in shown_rows}, "asleep": {r[1] for r in sleep_rows},
    })
    steps = [
        (DELETE, forget_rows),
        (DELETE_HOSTS_OF, forget_rows),
        (DELETE_CHALLENGE, forget_rows),
        (DELETE_DECISION, forget_rows),
        (DELETE_HOST, host_delete_rows),
        (DELETE_CHALLENGE, challenge_delete_rows),
        (UPSERT, upsert_rows),
        (SET_PUBLISHED, shown_rows),
        (UPSERT_HOST, host_rows),
        (UPSERT_CHALLENGE, challenge_rows),
        (UPSERT_DECISION, decision_rows),
        (SET_SLEEP, sleep_rows),
        (INSERT_EVENT, event_rows),
        *feed,
        *also,
    ]
    return [(sql, rows) for sql, rows in steps if rows]


def feed_steps(changes: Iterable[ChangeEvent], names: Iterable[tuple[str, str]] = (),
               forgotten: list[tuple[str]] | None = None) -> list[Step]:
    """The customers' titles new to the store, then the change feed's rows
    (numbered after the last one given, each with its instance's title),
    the count moved on, and last the titles of the instances forgotten, once
    copied onto their last change."""
    rows = [(n, c.at, c.instance_guid, c.kind.value, c.payload_json(), c.instance_guid)
            for n, c in enumerate(changes, start=1)]
    return [(INSERT_NAME, [(str(g), str(n)) for g, n in names]),
            *([(INSERT_CHANGE, rows), (ADVANCE_FEED, [(len(rows),)])] if rows else []),
            (DELETE_NAME, forgotten or [])]


def _refuse_writes_to_forgotten(path: Path, forgotten: set[str], written: dict[str, set[str]]) -> None:
    """An instance forgotten and written in one commit is a caller's mistake:
    which write wins would depend on the steps' order."""
    for what, guids in written.items():
        both = guids & forgotten
        if both:
            raise StoreError(f"{path}: commit both {what} and forgets {sorted(both)}")

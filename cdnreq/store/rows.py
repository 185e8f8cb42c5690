"""Rows and models: the SQL that reads and writes each table, and the
conversions between a row and a Record, HostClaim, Challenge or Event.

Column lists follow the models' field order, so a row maps onto a model
positionally (tests/test_store.py checks that they still do).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Mapping

import structlog

from cdnreq.model import (
    Challenge,
    Event,
    FrozenJson,
    HostClaim,
    InstanceGuid,
    Phase,
    Record,
    RequestedState,
    fast_maker,
    shown_digest,
)
from cdnreq.store.errors import StoreError

log = structlog.get_logger("cdnreq.store")

COLUMNS = (
    "guid, title, phase, created_at, updated_at, param_hash, requested_state, "
    "spec_hash, tech_guid, connection, published, published_error, last_action, "
    "last_error, failures, retry_at, served, gone_at, live_at"
)  # Record's field order, so rows map onto it positionally
SELECT = f"SELECT {COLUMNS} FROM instances"
# `published` holds what the customer was shown; a Record keeps only its
# digest, so the text is written apart, when a publication changes it.
_WRITTEN = [c for c in COLUMNS.split(", ") if c != "published"]
UPSERT = (
    f"INSERT INTO instances ({', '.join(_WRITTEN)}) VALUES ({', '.join('?' * len(_WRITTEN))}) "
    "ON CONFLICT (guid) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _WRITTEN[1:] if c != "created_at")
    + ", sleep = NULL"  # a record changed: the mark it fell asleep with no longer holds
)
SET_PUBLISHED = "UPDATE instances SET published = ? WHERE guid = ?"
SET_SLEEP = "UPDATE instances SET sleep = ? WHERE guid = ?"
SELECT_AWAKE = SELECT + " WHERE sleep IS NULL"
# a sleeper as a restart needs it (decide/dormancy.from_store), with its kept decision
SELECT_ASLEEP = (
    "SELECT i.guid, i.sleep, i.phase, i.requested_state, i.tech_guid IS NOT NULL, i.served, "
    "d.param_hash, d.stamp, d.claims, d.gate IS NOT NULL "
    "FROM instances i LEFT JOIN decisions d ON d.guid = i.guid WHERE i.sleep IS NOT NULL"
)
INSERT_EVENT = (
    "INSERT INTO events (at, tick, instance_guid, action, outcome, detail) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
DELETE = "DELETE FROM instances WHERE guid = ?"



def _upsert(table: str, columns: str) -> str:
    """Insert a row, or replace every column of the one with its key (the first column)."""
    names = columns.split(", ")
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT ({names[0]}) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in names[1:])
    )


HOST_COLUMNS = "host, guid, registrable, proven_at, checked_at, failing_since"  # HostClaim's order
SELECT_HOSTS = f"SELECT {HOST_COLUMNS} FROM hosts"
UPSERT_HOST = _upsert("hosts", HOST_COLUMNS)
DELETE_HOST = "DELETE FROM hosts WHERE host = ?"
DELETE_HOSTS_OF = "DELETE FROM hosts WHERE guid = ?"

CHALLENGE_COLUMNS = "guid, domain, salt, token, created_at"  # Challenge's order
SELECT_CHALLENGES = f"SELECT {CHALLENGE_COLUMNS} FROM challenges"
UPSERT_CHALLENGE = _upsert("challenges", CHALLENGE_COLUMNS)
DELETE_CHALLENGE = "DELETE FROM challenges WHERE guid = ?"
EVENT_COLUMNS = "id, instance_guid, action, outcome, at, detail, tick"

# The change feed's ids are counted in feed_state, in the writing transaction
# (its row is locked until the commit): no gap, no reuse after pruning, and
# on PostgreSQL committed in id order, so a reader paging by id misses none.
CHANGE_COLUMNS = "id, at, instance_guid, kind, payload, name"
INSERT_CHANGE = (  # with the instance's title as stored (names: kept after the instance is forgotten)
    "INSERT INTO changes (id, at, instance_guid, kind, payload, name) "
    "VALUES ((SELECT last_id FROM feed_state WHERE id = 1) + ?, ?, ?, ?, ?, "
    "(SELECT name FROM names WHERE guid = ?))"
)
# a customer's title, stored the first time it is listed (cdnreq.decide.names)
INSERT_NAME = "INSERT INTO names (guid, name) VALUES (?, ?) ON CONFLICT (guid) DO NOTHING"
DELETE_NAME = "DELETE FROM names WHERE guid = ?"  # once the instance is forgotten (after its last change)
SELECT_UNNAMED = "SELECT guid FROM instances i WHERE NOT EXISTS (SELECT 1 FROM names n WHERE n.guid = i.guid)"
ADVANCE_FEED = "UPDATE feed_state SET last_id = last_id + ? WHERE id = 1"

DECISION_COLUMNS = "guid, param_hash, stamp, verdict, gate, claims, next_lookup"  # Decision's order
SELECT_DECISIONS = f"SELECT {DECISION_COLUMNS} FROM decisions"
UPSERT_DECISION = _upsert("decisions", DECISION_COLUMNS)
DELETE_DECISION = "DELETE FROM decisions WHERE guid = ?"

UPSERT_GUARD = (
    "INSERT INTO guards (name, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
DELETE_GUARD = "DELETE FROM guards WHERE name = ?"

_PHASES = {p.value: p for p in Phase}
_STATES = {s.value: s for s in RequestedState}


def dump(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(value if isinstance(value, dict) else dict(value.items()), sort_keys=True)


def dump_hosts(hosts: Iterable[str] | None) -> str | None:
    """A JSON array, in the given order; None stays NULL (unknown), () is `[]`."""
    if hosts is None:
        return None
    if isinstance(hosts, (str, bytes)):
        raise TypeError(f"served must be a sequence of hosts, not {type(hosts).__name__}")
    hosts = list(hosts)
    for host in hosts:
        if not isinstance(host, str):
            raise TypeError(f"served hosts must be strings, not {type(host).__name__}")
    return json.dumps(hosts)


def to_row(r: Record) -> tuple[Any, ...]:
    return (
        r.guid, r.title, Phase(r.phase).value, r.created_at, r.updated_at, r.param_hash,
        None if r.requested_state is None else RequestedState(r.requested_state).value,
        r.spec_hash, r.tech_guid, dump(r.connection),
        r.published_error, r.last_action, r.last_error, r.failures, r.retry_at,
        dump_hosts(r.served), r.gone_at, r.live_at,
    )  # fmt: skip


def host_row(h: HostClaim) -> tuple[Any, ...]:
    return (h.host, h.guid, h.registrable, h.proven_at, h.checked_at, h.failing_since)


def challenge_row(c: Challenge) -> tuple[Any, ...]:
    return (c.guid, c.domain, c.salt, c.token, c.created_at)


_raw_decode = json.JSONDecoder().raw_decode


def load_json(text: str) -> Any:
    # raw_decode skips json.loads' whitespace regexes: twice as fast, and the
    # text is ours (json.dumps output). Anything odd goes the strict way.
    value, end = _raw_decode(text)
    return value if end == len(text) else json.loads(text)


_make_record = fast_maker(Record)


# Loaded strings are interned where many rows hold the same value (the CDN
# spec hash, last actions) or other tables hold it too (guids, hosts): one
# object instead of one per row and table, about 300 bytes an instance.
_i = sys.intern


def _connection(text: str | None) -> FrozenJson | None:
    if text is not None and not isinstance(text, str):  # a blob in a hand-edited file
        raise TypeError(f"connection is {type(text).__name__}, not text")
    return None if text is None else FrozenJson(text.encode("utf-8", "surrogatepass"))


def _published(text: str | None) -> str | None:
    return None if text is None else shown_digest(load_json(text))


def _served(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(_i(h) for h in load_json(text))


def to_record(row: tuple[Any, ...]) -> Record:
    (guid, title, phase, created, updated, param_hash, state, spec_hash, tech_guid,
     connection, published, published_error, last_action, last_error, failures,
     retry_at, served, gone_at, live_at) = row  # fmt: skip
    return _make_record(
        _i(guid), title, _PHASES[phase], created, updated, param_hash,
        None if state is None else _STATES[state], None if spec_hash is None else _i(spec_hash), tech_guid,
        _connection(connection), _published(published),
        published_error, None if last_action is None else _i(last_action), last_error, failures, retry_at,
        _served(served), gone_at, live_at,
    )  # fmt: skip


UNREADABLE = (ValueError, TypeError, KeyError, RecursionError, UnicodeError, AttributeError)
_JSON_COLUMNS = {"connection": (9, _connection), "published": (10, _published), "served": (16, _served)}


def to_records(rows: list[tuple[Any, ...]], unserved: list[InstanceGuid] | None = None) -> dict[InstanceGuid, Record]:
    """`unserved` collects the guids whose served hosts could not be read
    (the reader then reads them from the instance's claims, see reads.py)."""
    records: dict[InstanceGuid, Record] = {}
    for row in rows:
        try:
            record = to_record(row)
        except UNREADABLE:
            record = _salvaged(row, unserved)
        records[record.guid] = record
    return records


def _salvaged(row: tuple[Any, ...], unserved: list[InstanceGuid] | None) -> Record:
    """A row to_record refuses (a hand-edited file): a JSON column it cannot
    read is logged and read as unknown, so the other instances' load goes on
    and this one is planned from what is left: the customer's last
    publication and the entry's answer as none (at worst told or read back
    again); the hosts its entry serves as every host it claims (never as
    none: that would release a host a live entry serves). A row whose guid,
    phase or state is unreadable cannot be planned: StoreError names it."""
    fixed = list(row)
    for column, (at, read) in _JSON_COLUMNS.items():
        try:
            read(row[at])
        except UNREADABLE as error:
            log.error("a stored column cannot be read; read as unknown", instance_guid=str(row[0])[:200],
                      column=column, error=f"{type(error).__name__}: {str(error)[:200]}")
            fixed[at] = None
            if column == "served" and unserved is not None and isinstance(row[0], str):
                unserved.append(InstanceGuid(row[0]))
    try:
        return to_record(tuple(fixed))
    except UNREADABLE as error:
        raise StoreError(f"instances row {str(row[0])[:200]!r} cannot be read: {type(error).__name__}: "
                           f"{str(error)[:200]}") from None


def to_hosts(rows: list[tuple[Any, ...]]) -> dict[str, HostClaim]:
    claims = (HostClaim(_i(host), _i(guid), _i(registrable), *rest) for host, guid, registrable, *rest in rows)
    return {c.host: c for c in claims}


def to_challenges(rows: list[tuple[Any, ...]]) -> dict[InstanceGuid, Challenge]:
    challenges = (Challenge(_i(guid), _i(domain), *rest) for guid, domain, *rest in rows)
    return {c.guid: c for c in challenges}


def to_event(row: tuple[Any, ...]) -> tuple[int, Event]:
    return row[0], Event(*row[1:])

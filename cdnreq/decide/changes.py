"""The change feed's events: one per transition a customer can see (issue 16).

Billing, the customer panel, a certificate issuer or a purge service want
to know when an entry goes live, waits for DNS, is refused, is updated,
stopped or started, retained or destroyed, and when a host is proven,
fails its re-check or is released. Each such transition becomes one
`ChangeEvent`, derived here from what the store is about to hold (the record
before and after, what the customer was just shown), so the feed says
exactly what the store says and is written in the same transaction.

Payloads are small and carry no secret: no parameter values (an `ssl_key`
or a backend's credentials may be among them), only what the customer was
told about its own instance (its connection answer's keys and the
`domain`/`url` it was given, its own DNS challenge, its errors). Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cdnreq.decide.actions import Kind
from cdnreq.decide.domainstep import DomainStep
from cdnreq.decide.gate import HostIndex
from cdnreq.decide.reservation import Reservation
from cdnreq.decide.transitions import destroy_pending
from cdnreq.model import ChangeKind, Event, HostClaim, Phase, Record
from cdnreq.validate.quoting import without_userinfo_in_text


KINDS: frozenset[str] = frozenset(k.value for k in ChangeKind)

# what a connection answer may show in a payload besides its keys: where the site is
_SHOWN_VALUES = ("domain", "url", "site_url", "secure_access")
_MAX_TEXT = 2000


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    instance_guid: str
    kind: ChangeKind
    at: float
    payload: Mapping[str, Any] = field(default_factory=dict)

    def payload_json(self) -> str:
        return json.dumps(self.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def of_outcome(
    before: Record, after: Record | None, kind: Kind, ok: bool, shown: Mapping[str, Any] | None, at: float
) -> list[ChangeEvent]:
    """The changes one action's outcome makes visible (none for a failed call
    that changed nothing the customer sees)."""
    if ok and _entry_destroyed(before, after, kind):
        destroyed = ChangeEvent(before.guid, ChangeKind.DESTROYED, at, {"title": before.title})
        return [destroyed, *(of_record(before, after, at) if after is not None else ())]
    if after is None:
        return []
    changes = list(of_record(before, after, at))
    if ok and kind is Kind.UPDATE:
        changes.extend(_update(before, after, at))
    if shown is not None:
        changes.extend(_told(before, after, shown, at))
    return changes


def _entry_destroyed(before: Record, after: Record | None, kind: Kind) -> bool:
    """The technical entry is proven gone: destroyed and read back (or found
    absent), after a destroy that was sent or is being confirmed."""
    if kind is not Kind.DESTROY and not destroy_pending(before):
        return False
    had = before.tech_guid is not None
    return had and (after is None or after.tech_guid is None)


def of_record(before: Record | None, after: Record, at: float) -> list[ChangeEvent]:
    """Transitions visible from the records alone: retained (plan-time
    updates store it without a call), and live once, when the customer first
    holds the technical CDN's answer (transitions._told_live)."""
    was = before.phase if before is not None else None
    if after.phase is Phase.RETAINED and was is not Phase.RETAINED:
        return [ChangeEvent(after.guid, ChangeKind.RETAINED, at, {"title": after.title, "gone_at": after.gone_at})]
    if after.live_at is not None and (before is None or before.live_at is None):
        return [ChangeEvent(after.guid, ChangeKind.LIVE, at, {"title": after.title, **_answer(after.connection)})]
    return []


def _update(before: Record, after: Record, at: float) -> list[ChangeEvent]:
    if before.requested_state != after.requested_state and after.requested_state in ("stopped", "started"):
        kind = ChangeKind.STOPPED if after.requested_state == "stopped" else ChangeKind.STARTED
        return [ChangeEvent(after.guid, kind, at, {"title": after.title})]
    if before.param_hash != after.param_hash or before.served != after.served:
        return [ChangeEvent(after.guid, ChangeKind.UPDATED, at, {"title": after.title})]
    return []


def _told(before: Record, after: Record, shown: Mapping[str, Any], at: float) -> list[ChangeEvent]:
    """What a publication told the customer, when it is news to it."""
    if after.published == before.published and after.published_error == before.published_error:
        return []
    errors = _json_list(shown.get("request-error-list"))
    if errors:
        return [ChangeEvent(after.guid, ChangeKind.REFUSED, at, {"errors": errors})]
    if "txt_record" in shown and "txt_value" in shown and "pending-host-list" in shown:
        return [ChangeEvent(after.guid, ChangeKind.PENDING_DNS, at, {
            "txt_record": _text(shown["txt_record"]), "txt_value": _text(shown["txt_value"]),
            "hosts": _json_list(shown.get("pending-host-list")),
        })]
    return []


def of_hosts(before: Mapping[str, HostClaim | None], upserts: list[HostClaim], deletes: list[str],
             at: float) -> list[ChangeEvent]:
    """Host claims proven, failing their re-check, or released, against the
    claims held before the write."""
    changes: list[ChangeEvent] = []
    for claim in upserts:
        held = before.get(claim.host)
        if held is None or held.guid != claim.guid:
            if held is not None:
                changes.append(ChangeEvent(held.guid, ChangeKind.HOST_RELEASED, at, {"host": claim.host}))
            changes.append(ChangeEvent(claim.guid, ChangeKind.HOST_PROVEN, at, {"host": claim.host}))
        elif claim.failing_since is not None and held.failing_since is None:
            changes.append(ChangeEvent(claim.guid, ChangeKind.HOST_FAILING, at,
                                  {"host": claim.host, "failing_since": claim.failing_since}))
    for host in deletes:
        held = before.get(host)
        if held is not None:
            changes.append(ChangeEvent(held.guid, ChangeKind.HOST_RELEASED, at, {"host": host}))
    return changes


def of_reservation(known: Mapping[str, Record], reserved: Reservation, was: Mapping[str, HostClaim | None],
                   step: DomainStep, now: float) -> list[ChangeEvent]:
    """What a tick's first write (cdnreq.decide.reservation, and the domain
    step's claims) changes: retained and returning instances, hosts, holds."""
    newly_held = [e for e in reserved.events if not _was_held(known.get(e.instance_guid))]
    return [
        *(c for r in reserved.upserts for c in of_record(known.get(r.guid), r, now)),
        *of_hosts(was, list(step.host_upserts.values()), sorted(step.host_deletes), now),
        *held(newly_held, "removal"),
    ]


def _was_held(record: Record | None) -> bool:
    """Held already (its hold's reason may change as more customers leave: still one hold)."""
    return record is not None and record.phase is Phase.REMOVING and record.last_action == "hold"


class WatchedIndex(HostIndex):
    """The host index, noting each changed host's claim as it was before its
    first change since last taken: of_hosts' `before`, without a read."""

    def __init__(self, claims: Iterable[HostClaim] = ()):
        self.was: dict[str, HostClaim | None] = {}
        super().__init__(claims)
        self.was.clear()

    def drop(self, host: str) -> None:
        self.was.setdefault(host, self.by_host.get(host))
        super().drop(host)

    def take_was(self) -> dict[str, HostClaim | None]:
        was, self.was = self.was, {}
        return was


def held(events: Iterable[Event], what: str) -> list[ChangeEvent]:
    """The instances a guard newly holds back (`what`: their removal or
    update), from the audit events that record each hold once."""
    return [ChangeEvent(e.instance_guid, ChangeKind.HELD, e.at, {"held": what, "reason": _text(e.detail or "")})
            for e in events if e.action == "hold" and e.outcome == "held"]


def _answer(connection: Mapping[str, Any] | None) -> dict[str, Any]:
    """Where the site is, from the CDN's answer: its keys, and the few values that locate it."""
    if not connection:
        return {}
    return {"answer_keys": sorted(str(k)[:200] for k in connection)[:50],
            **{k: _text(connection[k]) for k in _SHOWN_VALUES if k in connection}}


def _json_list(value: Any) -> list[str]:
    try:
        items = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return [_text(value)]
    return [_text(v) for v in items][:50] if isinstance(items, list) else []


def _text(value: Any) -> str:
    """Bounded, and without the credentials a URL may carry (an error quoting a backend's URL)."""
    text = str(value)
    return without_userinfo_in_text(text[:_MAX_TEXT], cut=len(text) > _MAX_TEXT)

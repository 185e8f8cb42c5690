"""How a Record changes after each call, and what the customer is shown.

Pure transitions, kept apart from the executor so the rules (what counts as
live, how long to back off, what the customer sees) are tested without a
master.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from cdnreq.model import (
    InstanceAnswer, Phase, Record, RequestedState, SharedInstance, canonical_json, frozen_json, shown_digest,
)

if TYPE_CHECKING:
    from cdnreq.decide.gate import Gate

IN_PROGRESS = {
    "message": (
        "The CDN has accepted this entry and is deploying it; its connection"
        " parameters will appear here once it is ready."
    )
}


def compose(connection: Mapping[str, Any] | None, gate: "Gate | None", requested: bool) -> dict[str, Any]:
    """What the customer should see: the CDN's answer (or that it is coming),
    plus what the gate has to say (challenge, errors, warnings)."""
    shown: dict[str, Any] = dict(connection.items()) if connection else {}
    if gate is not None:
        shown.update(gate.extras)
    if requested and not connection and "message" not in shown:
        shown.update(IN_PROGRESS)
    return shown


class Publication(NamedTuple):
    """What to publish to the customer, and which of its two calls are due."""

    shown: dict[str, Any]
    error: str | None
    send_connection: bool  # what it is shown changed
    send_error: bool  # a new error to tell

    @property
    def due(self) -> bool:
        return self.send_connection or self.send_error


def publication(record: Record, gate: "Gate | None") -> Publication:
    """The one publish rule: the planner asks it whether to publish, the
    executor what to send after each call."""
    shown, error = _told(record, gate)
    return Publication(shown, error, shown_digest(shown) != record.published, _new_error(record, error))


def needs_publish(record: Record, gate: "Gate") -> bool:
    """`publication(record, gate).due`, without building the answer: the
    planner asks it of every instance the idle cache does not skip."""
    shown, error = _told(record, gate)
    return shown_digest(shown) != record.published or _new_error(record, error)


def _told(record: Record, gate: "Gate | None") -> tuple[dict[str, Any], str | None]:
    requested = record.param_hash is not None or record.tech_guid is not None
    return compose(record.connection, gate, requested), gate.error if gate is not None else None


def _new_error(record: Record, error: str | None) -> bool:
    return error is not None and error != record.published_error


def still_shown(held: Mapping[str, Any], shown: Mapping[str, Any]) -> bool:
    """Whether the customer's instance holds what it was shown. A master may
    acknowledge a publication and drop it, and the customer would be left
    with nothing for ever; masters may stringify values, so they are
    compared as text too."""
    if set(held) != set(shown):
        return False
    return all(_same(held[k], v) for k, v in shown.items())


def customer_read(record: Record, gate: "Gate | None") -> Record:
    """The customer's instance was read: a failed read's streak is over (its
    error gives way to what the customer is told), so the next read-back
    falls a period later, not at each tick."""
    if not record.failures:
        return record
    why = gate.why if gate is not None and not gate.ok else None
    return replace(record, failures=0, retry_at=None, last_error=why)


def unshown(record: Record) -> Record:
    """What the customer was shown is gone from the master: publish it again."""
    return replace(record, published=None)


def rejection(reason: str, record: Record | None = None, gate: "Gate | None" = None) -> tuple[str, dict[str, Any]]:
    """The customer-facing error for a request the master refused. A live
    entry's update refused leaves the entry running as it was: the customer
    keeps the answer it was shown, the refusal beside it."""
    message = f"The CDN could not accept this entry: {reason}"
    kept = compose(record.connection, gate, True) if record is not None and record.connection else {}
    return message, {**kept, "request-error-list": json.dumps([message]), "message": message}


REJECTED = "rejected"  # the last action of a record whose request the master refused (4xx): not applied


def backoff_s(guid: str, failures: int, base_s: float, max_s: float) -> float:
    """Exponential backoff, spread by up to 25% per instance so retries of a
    burst of failures do not all land on the same tick."""
    delay = min(max_s, base_s * 2 ** max(0, failures - 1))
    spread = int.from_bytes(hashlib.sha256(guid.encode("utf-8", "surrogatepass")).digest()[:2])
    return delay * (1 + _BACKOFF_SPREAD * spread / 0xFFFF)


_BACKOFF_SPREAD = 0.25


def longest_backoff_s(max_s: float) -> float:
    """The furthest from now backoff_s() ever sets a retry."""
    return max_s * (1 + _BACKOFF_SPREAD)


def requesting(record: Record, gate: "Gate") -> Record:
    """Before a request goes out: the master may apply it and lose the
    answer, so its hosts count as served from now on, on top of those the
    entry served before, until a read-back shows the entry holds the
    request (`polled`) or it reads back gone (`cleared`)."""
    hosts = tuple(dict.fromkeys((*(record.served or ()), *gate.hosts)))
    if hosts == (record.served or ()):
        return record
    return replace(record, served=hosts)


def may_serve(record: Record) -> bool:
    """Whether the record's entry may name its `served` hosts: they are
    cleared only once the entry is known gone."""
    return bool(record.served)


def requested(
    record: Record,
    instance: SharedInstance,
    gate: "Gate",
    answer: InstanceAnswer,
    spec_hash: str,
    action: str,
    now: float,
) -> Record:
    return replace(
        record,
        phase=Phase.REQUESTED,
        param_hash=gate.forward_hash,
        requested_state=instance.state,
        spec_hash=spec_hash,
        tech_guid=answer.guid,
        # an update answered before the CDN redeploys: keep showing the last answer
        connection=frozen_json(answer.connection_parameters or record.connection or {}),
        # an acknowledgement is no proof the entry dropped the hosts it served
        # before (a master may answer 200 and not keep an update): they count
        # until the read-back that finds the request kept (`polled`)
        served=requesting(record, gate).served,
        last_action=action,
        last_error=None,
        failures=0,
        retry_at=None,
        updated_at=now,
    )


# keys that name hosts: an entry holding one that was not sent (an update
# removing a custom_domain, acknowledged and not kept) still serves its hosts
HOST_KEYS = ("custom_domain", "server-alias")


def kept(answer: InstanceAnswer, requested: Mapping[str, Any]) -> bool:
    """Whether the technical entry holds what was last requested (a master
    may answer 200 and not keep a request). Extra keys are the master's
    business, but for HOST_KEYS. Values are compared on their canonical
    JSON, so a value that a master spells differently (key order, 1 and
    1.0, a stringified number or boolean, a large integer read back as a
    float) never looks lost, which would request it again every tick. An entry read back `destroyed` holds
    nothing (destroyed on the master by someone else, or a dropped request):
    taken for live, its customer's site stayed down."""
    if answer.state == RequestedState.DESTROYED.value:
        return False
    if answer.parameters is None:
        return True
    held = answer.parameters
    if any(held.get(k) not in (None, "") and k not in requested for k in HOST_KEYS):
        return False
    return all(k in held and _same(held[k], v) for k, v in requested.items())


def _same(held: Any, sent: Any) -> bool:
    if held == sent or (held is None and sent == ""):  # slapproxy reads an empty value back as null
        return True
    if isinstance(held, float) and isinstance(sent, int) and not isinstance(sent, bool):
        return held == float(sent)  # a master that reads numbers as doubles
    try:
        text = canonical_json(sent)
        if isinstance(held, str):  # masters stringify values
            return held.encode("utf-8", "surrogatepass") == text or held == str(sent)
        return canonical_json(held) == text
    except (TypeError, ValueError, RecursionError):
        return False


def polled(record: Record, answer: InstanceAnswer, now: float, hosts: tuple[str, ...] | None = None) -> Record:
    """Read back and verified (it holds the last request, whose `hosts` are
    now all it serves): live once the CDN has answered. An entry read
    back without an answer is no news: the last answer is kept (as after an
    update), so one empty read-back never takes a live customer's answer
    away for "in progress". It is no answer either: a record waiting for
    one (after a request or an update) stays requested, read again at the
    next tick, never taken for live with the answer it had before."""
    connection = answer.connection_parameters or record.connection or {}
    live = bool(answer.connection_parameters) or (record.phase is Phase.LIVE and bool(connection))
    return replace(
        record,
        phase=Phase.LIVE if live else Phase.REQUESTED,
        connection=frozen_json(connection),
        served=record.served if hosts is None else hosts,
        last_action="poll",
        last_error=None,
        failures=0,
        retry_at=None,
        updated_at=now,
    )


def lost(record: Record, reason: str, now: float) -> Record:
    """The master no longer knows the technical entry: request it again.
    One 404 is no proof the entry is gone (a master may lie once), and a
    customer is never left with less than it was told: the last answer
    stays what it is shown (`connection` kept, stored with the record, so
    a restarted daemon shows the same) until a request succeeds and the
    technical CDN answers anew (`requested`, `polled`); a refusal is shown
    beside it (`rejection`), a failure changes nothing it is shown."""
    return replace(
        record,
        phase=Phase.NEW,
        param_hash=None,
        tech_guid=None,
        last_action="poll",
        last_error=f"technical entry not found, requesting it again ({reason})",
        updated_at=now,
    )


def cleared(record: Record, now: float) -> Record:
    """The technical entry is gone (read back) but the instance is kept."""
    phase = Phase.RETAINED if record.phase is Phase.RETAINED else Phase.NEW
    return replace(_destroyed(record, now), phase=phase, tech_guid=None, served=None)


def destroy_pending(record: Record) -> bool:
    """A destroy was sent (acknowledged, failed or timed out) for a known
    entry: it counts as done only once read back destroyed or absent. Until
    then `tech_guid` and `served` are kept, so its hosts count as served.
    A read-back that failed ("confirm") leaves it pending, to read again."""
    return record.last_action in ("destroy", "confirm") and record.tech_guid is not None


def destroy_sent(record: Record, now: float, *, keep: bool = False) -> Record:
    """Destroy acknowledged; the entry (tech_guid and served kept) is read
    back before the instance is forgotten, or cleared when `keep`."""
    return replace(_destroyed(record, now), phase=record.phase if keep else Phase.REMOVING)


def destroy_failing(record: Record, *, leaving: bool) -> Record:
    """A destroy that failed for an instance that leaves is retried as a
    removal (a retained one stays retained until its retention ends)."""
    if leaving and record.phase is not Phase.RETAINED:
        return replace(record, phase=Phase.REMOVING)
    return record


def confirmed(record: Record, now: float) -> Record | None:
    """The entry read back gone: forgotten when it was removing, else kept without entry."""
    return None if record.phase is Phase.REMOVING else cleared(record, now)


def _destroyed(record: Record, now: float) -> Record:
    return replace(
        record,
        param_hash=None,
        connection=None,
        last_action="destroy",
        last_error=None,
        failures=0,
        retry_at=None,
        updated_at=now,
    )


def resumed(record: Record, now: float) -> Record:
    """Back on the master after a hold or during retention. One back while
    its destroy awaits confirmation left for real: it starts as new (its
    claims were dropped when the destroy was decided) once the destroy is
    read back."""
    if destroy_pending(record):
        return replace(record, phase=Phase.NEW, gone_at=None, updated_at=now)
    if record.param_hash is None and record.tech_guid is None:
        phase = Phase.NEW
    elif record.connection:
        phase = Phase.LIVE
    else:
        phase = Phase.REQUESTED
    return replace(record, phase=phase, gone_at=None, last_action="back", last_error=None, updated_at=now)


def published(record: Record, shown: Mapping[str, Any], error: str | None, now: float) -> Record:
    """Published: the call that led here succeeded, so any failure streak is over."""
    return replace(
        record,
        live_at=_told_live(record, now),
        published=shown_digest(shown),
        published_error=error if error is not None else record.published_error,
        last_action=_told_after(record, "publish"),
        last_error=None,
        failures=0,
        retry_at=None,
        updated_at=now,
    )


def settled(record: Record, now: float) -> Record:
    """Nothing new to publish: the customer holds what it should."""
    return replace(record, updated_at=now, live_at=_told_live(record, now))  # also when it was last read back


def _told_after(record: Record, action: str) -> str:
    """The last action of a record its customer is told about: a destroy
    still to be read back stays the last action (destroy_pending), or the
    next tick would destroy the entry again instead of reading it back."""
    if destroy_pending(record):
        return record.last_action or action
    return action


def _told_live(record: Record, now: float) -> float | None:
    """When the customer first held the technical CDN's answer: now, once
    it holds what a live record shows (the change feed's `live`, once)."""
    if record.live_at is None and record.phase is Phase.LIVE and record.connection:
        return now
    return record.live_at


def failed(
    record: Record, action: str, error: str, now: float, *, base_s: float, max_s: float
) -> Record:
    failures = record.failures + 1
    return replace(
        record,
        last_action=_told_after(record, action) if action == "publish" else action,
        last_error=error,
        failures=failures,
        retry_at=now + backoff_s(record.guid, failures, base_s, max_s),
        updated_at=now,
    )

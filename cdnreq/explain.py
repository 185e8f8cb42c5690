"""Why one instance is in its state, in words and data, for the people on call.

Read from the store only, so the answer is the same from the running
daemon's endpoint and from `cdnreq explain` on a stopped one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from cdnreq.decide.guards import HeldRemovals, HeldUpdates, held_for
from cdnreq.decide.transitions import destroy_pending
from cdnreq.model import Challenge, Phase, Record
from cdnreq.reconcile.guardrun import HELD_REMOVALS, UPDATES
from cdnreq.store import Engine


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def why(record: Record, *, retention_s: float, now: float) -> str:
    """One sentence on the instance's state."""
    if record.phase is Phase.LIVE and destroy_pending(record):  # still listed: a host it served was lost
        text = "its technical entry was destroyed and is read back at the next tick; it is requested again once proven"
    elif record.phase is Phase.LIVE:
        text = "live: the technical CDN's answer was relayed to the customer"
    elif record.phase is Phase.REQUESTED:
        text = "requested on the technical CDN; waiting for its answer"
    elif record.phase is Phase.REMOVING:
        text = f"gone from the master; {record.last_error or 'destroy pending'}"
    elif record.phase is Phase.RETAINED:
        gone = record.gone_at if record.gone_at is not None else record.updated_at
        entry = "its technical entry is kept" if record.tech_guid or record.param_hash else "it has no technical entry"
        text = f"gone from the master since {iso(gone)}; {entry} and its hosts are kept until {iso(gone + retention_s)}"
    elif record.last_error:
        text = f"not requested: {record.last_error}"
    else:
        text = "not requested yet"
    if record.failures:
        text += (
            f"; the last call failed {record.failures} time(s) in a row ({record.last_error});"
            f" next try after {iso(record.retry_at)}"
        )
    return text


async def explain(
    store: Engine, guid: str, *, label: str, retention_s: float, now: float, events: int = 20,
    admission: tuple[float, int] | None = None,
) -> dict[str, Any] | None:
    """`admission`: the instance's place if it waits to be taken on
    (decide/admission.place): listed, but nothing stored for it yet."""
    record = await store.get(guid)
    challenge = await store.challenge_of(guid)
    if record is None and admission is not None:
        listed_at, ahead = admission
        return {"instance_guid": guid, "state": "waiting",
                "why": f"new, waiting to be taken on (first listed at {iso(listed_at)}; {ahead} new instances"
                       " listed before it wait too): a tick takes on [daemon].admit_per_tick new instances,"
                       " the first listed first, and the next one starts at once",
                "events": []}
    if record is None:
        return await _unrecorded(store, guid, challenge, label=label, events=events)
    held = await _held(store, guid)
    return {
        "instance_guid": record.guid,
        "state": record.phase.value,
        "why": why(record, retention_s=retention_s, now=now) + _held_words(held),
        "held": held,
        "title": record.title,
        "technical_instance_guid": record.tech_guid,
        "requested_state": record.requested_state.value if record.requested_state else None,
        "last_action": record.last_action,
        "last_error": record.last_error,
        "failures": record.failures,
        "retry_at": iso(record.retry_at),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "served_hosts": list(record.served) if record.served is not None else None,
        "published": await store.published_of(guid),
        "hosts": [
            {
                "host": claim.host,
                "proven_at": iso(claim.proven_at),
                "checked_at": iso(claim.checked_at),
                "failing_since": iso(claim.failing_since),
            }
            for claim in await store.hosts_of(guid)
        ],
        "challenge": _challenge(challenge, label),
        "events": await _events(store, guid, events),
        "import_findings": await store.import_findings(guid),
    }


async def _held(store: Engine, guid: str) -> dict[str, Any] | None:
    """Its removal or update, if a guard holds it (the state the last tick saved)."""
    guards = await store.load_guards()
    return held_for(guid, HeldRemovals.from_json(guards.get(HELD_REMOVALS)), HeldUpdates.from_json(guards.get(UPDATES)))


def _held_words(held: dict[str, Any] | None) -> str:
    if held is None:
        return ""
    approve = f"cdnreq approve --fingerprint {held['fingerprint']}" if held.get("fingerprint") else "cdnreq approve"
    return f"; its {held['kind']} is held by a guard ({held['reason']}): `{approve}` lets it through at the next tick"


async def _events(store: Engine, guid: str, limit: int) -> list[dict[str, Any]]:
    return [
        {
            "id": event_id,
            "at": iso(event.at),
            "tick": event.tick,
            "action": event.action,
            "outcome": event.outcome,
            "detail": event.detail,
        }
        for event_id, event in await store.events_for(guid, limit=limit)
    ]


def _challenge(challenge: Challenge | None, label: str) -> dict[str, Any] | None:
    if challenge is None:
        return None
    return {
        "domain": challenge.domain,
        "txt_record": f"{label}.{challenge.domain}",
        "txt_value": challenge.token,
        "issued_at": iso(challenge.created_at),
    }


async def _unrecorded(
    store: Engine, guid: str, challenge: Challenge | None, *, label: str, events: int
) -> dict[str, Any] | None:
    """No record. A new instance waiting for its DNS proof has a challenge
    (and an event) before its first record is written: it is waiting, not
    forgotten. Without a challenge, events mean its record was dropped (gone
    from the master, or `cdnreq forget`); with neither it is unknown."""
    history = await _events(store, guid, events)
    if challenge is not None:
        return {
            "instance_guid": guid,
            "state": "waiting",
            "why": f"waiting for the DNS proof of {challenge.domain}; nothing requested yet",
            "challenge": _challenge(challenge, label),
            "events": history,
        }
    if not history:
        return None
    return {"instance_guid": guid, "state": "forgotten", "why": "no longer known: its record was dropped", "events": history}

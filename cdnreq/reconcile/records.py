"""How a Record changes after each call: pure transitions, no I/O.

Kept apart from the executor so the rules (what counts as live, how long to
back off, what the customer is shown) are tested without a master.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Mapping

from cdnreq.model import InstanceAnswer, Phase, Record, SharedInstance

IN_PROGRESS = {
    "message": (
        "The CDN has accepted this entry and is deploying it; its connection"
        " parameters will appear here once it is ready."
    )
}


def publication(connection: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the customer should see: the CDN's answer, or that it is coming."""
    return dict(connection) if connection else dict(IN_PROGRESS)


def rejection(reason: str) -> tuple[str, dict[str, Any]]:
    """The customer-facing error for a request the master refused."""
    message = f"The CDN could not accept this entry: {reason}"
    return message, {"request-error-list": json.dumps([message])}


def backoff_s(guid: str, failures: int, base_s: float, max_s: float) -> float:
    """Exponential backoff, spread by up to 25% per instance so retries of a
    burst of failures do not all land on the same tick."""
    delay = min(max_s, base_s * 2 ** max(0, failures - 1))
    spread = int.from_bytes(hashlib.sha256(guid.encode("utf-8", "surrogatepass")).digest()[:2])
    return delay * (1 + 0.25 * spread / 0xFFFF)


def requested(
    record: Record, instance: SharedInstance, answer: InstanceAnswer, spec_hash: str, action: str, now: float
) -> Record:
    return replace(
        record,
        phase=Phase.REQUESTED,
        param_hash=instance.param_hash,
        requested_state=instance.state,
        spec_hash=spec_hash,
        tech_guid=answer.guid,
        connection=dict(answer.connection_parameters),
        last_action=action,
        last_error=None,
        failures=0,
        retry_at=None,
        updated_at=now,
    )


def polled(record: Record, answer: InstanceAnswer, now: float) -> Record:
    return replace(
        record,
        connection=dict(answer.connection_parameters),
        last_action="poll",
        last_error=None,
        failures=0,
        retry_at=None,
        updated_at=now,
    )


def lost(record: Record, reason: str, now: float) -> Record:
    """The master no longer knows the technical entry: request it again."""
    return replace(
        record,
        phase=Phase.NEW,
        param_hash=None,
        tech_guid=None,
        connection=None,
        last_action="poll",
        last_error=f"technical entry not found, requesting it again ({reason})",
        updated_at=now,
    )


def published(record: Record, shown: Mapping[str, Any], now: float) -> Record:
    live = bool(record.connection) and dict(shown) == dict(record.connection)
    return replace(
        record,
        phase=Phase.LIVE if live else Phase.REQUESTED,
        published=dict(shown),
        published_error=None,
        last_action="publish",
        updated_at=now,
    )


def settled(record: Record, now: float) -> Record:
    """Nothing new to publish: the phase follows from what was published."""
    live = bool(record.connection) and record.published == record.connection
    return replace(record, phase=Phase.LIVE if live else Phase.REQUESTED, updated_at=now)


def rejected_shown(record: Record, message: str, shown: Mapping[str, Any], now: float) -> Record:
    return replace(record, published=dict(shown), published_error=message, updated_at=now)


def failed(
    record: Record, action: str, error: str, now: float, *, base_s: float, max_s: float
) -> Record:
    failures = record.failures + 1
    return replace(
        record,
        last_action=action,
        last_error=error,
        failures=failures,
        retry_at=now + backoff_s(record.guid, failures, base_s, max_s),
        updated_at=now,
    )

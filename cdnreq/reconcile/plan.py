"""The planner: what one tick must do, decided from data alone.

`plan()` is a pure function of the master's listing, the stored records, the
clock and the policy. It never calls anything: every rule (hash diff, the
guards against mass destroys, backoff, poll-instead-of-request) is a case in
a unit test. What it must never do: destroy on a doubtful listing.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from cdnreq.master import Listing
from cdnreq.model import (
    InstanceGuid,
    Phase,
    Record,
    RequestedState,
    SharedInstance,
    Title,
    digest,
)
from cdnreq.reconcile.titles import technical_title


class Kind(str, enum.Enum):
    REQUEST = "request"  # first request of a new instance on the technical CDN
    UPDATE = "update"  # request again: parameters, state or CDN settings changed
    POLL = "poll"  # read the technical entry's answer, which is still pending
    PUBLISH = "publish"  # relay a known answer the customer has not received
    DESTROY = "destroy"  # the customer's instance is gone: destroy, then forget


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    record: Record
    reason: str
    instance: SharedInstance | None = None  # as listed; None when gone (DESTROY)

    @property
    def guid(self) -> InstanceGuid:
        return self.record.guid


@dataclass(frozen=True, slots=True)
class Policy:
    """The configuration the planner depends on, and nothing else."""

    request_prefix: str
    spec_hash: str  # digest of the technical CDN's release, type and SLA
    allow_empty: bool = False
    max_destroy_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    reserved: tuple[Record, ...] = ()  # new records, stored before any call
    held: tuple[Record, ...] = ()  # gone from the master, destroy held back
    hold_reason: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)


def spec_hash(software_release_uri: str, software_type: str, sla: Mapping[str, str]) -> str:
    return digest({"sr": software_release_uri, "type": software_type, "sla": dict(sla)})


def plan(
    listing: Listing,
    known: Mapping[InstanceGuid, Record],
    now: float,
    policy: Policy,
) -> Plan:
    counts: Counter[str] = Counter()
    actions: list[Action] = []
    reserved: list[Record] = []
    seen: set[str] = set(listing.unusable)
    counts["unusable"] = len(listing.unusable)
    counts["anonymous"] = listing.anonymous
    gone: list[Record] = []

    for instance in listing.instances:
        if instance.guid in seen:
            counts["duplicate"] += 1
            continue
        seen.add(instance.guid)
        record = known.get(instance.guid)
        if instance.state is RequestedState.DESTROYED:
            if record is not None:
                gone.append(record)
            continue
        if record is None:
            record = new_record(instance.guid, policy.request_prefix, now)
            reserved.append(record)
            actions.append(Action(Kind.REQUEST, record, "added", instance))
            counts["added"] += 1
            continue
        action = _for_present(instance, record, now, policy)
        if action is None:
            counts["unchanged"] += 1
        elif action.kind is Kind.DESTROY:  # never returned by _for_present
            raise AssertionError(action)
        elif record.retry_at is not None and record.retry_at > now:
            counts["backoff"] += 1
        else:
            actions.append(action)

    gone.extend(r for guid, r in known.items() if guid not in seen)
    held: tuple[Record, ...] = ()
    hold_reason = _destroy_guard(listing, len(known), len(gone), policy)
    if hold_reason is not None:
        held = tuple(gone)
        counts["held"] = len(held)
    else:
        for record in gone:
            if record.retry_at is not None and record.retry_at > now:
                counts["backoff"] += 1
            else:
                actions.append(Action(Kind.DESTROY, record, "removed from the master"))
    counts["removed"] = len(gone)
    for action in actions:
        counts[action.kind.value] += 1
    return Plan(tuple(actions), tuple(reserved), held, hold_reason, dict(counts))


def new_record(guid: InstanceGuid, prefix: str, now: float) -> Record:
    return Record(
        guid=guid,
        title=technical_title(prefix, guid),
        phase=Phase.NEW,
        created_at=now,
        updated_at=now,
    )


def _for_present(
    instance: SharedInstance, record: Record, now: float, policy: Policy
) -> Action | None:
    if record.phase is Phase.REMOVING:
        return Action(Kind.UPDATE, record, "back on the master", instance)
    if record.param_hash is None:
        return Action(Kind.REQUEST, record, "not requested yet", instance)
    if record.param_hash != instance.param_hash:
        return Action(Kind.UPDATE, record, "parameters changed", instance)
    if record.requested_state is not instance.state:
        return Action(Kind.UPDATE, record, f"state changed to {instance.state.value}", instance)
    if record.spec_hash != policy.spec_hash:
        return Action(Kind.UPDATE, record, "technical CDN settings changed", instance)
    if record.phase is Phase.LIVE:
        return None
    if record.connection and record.published != record.connection:
        return Action(Kind.PUBLISH, record, "answer not relayed yet", instance)
    if record.tech_guid is None:
        return Action(Kind.REQUEST, record, "no technical entry known", instance)
    return Action(Kind.POLL, record, "waiting for the technical CDN's answer", instance)


def _destroy_guard(listing: Listing, known: int, gone: int, policy: Policy) -> str | None:
    """Why destroys must be held this tick, or None when they may go ahead."""
    if gone == 0:
        return None
    if listing.anonymous:
        return (
            f"the master listed {listing.anonymous} entries without an instance_guid;"
            " a missing instance may be one of them"
        )
    if not listing.instances and not listing.unusable:
        if policy.allow_empty:
            return None  # the operator said an empty list may be true
        return (
            f"the master listed no instance while {known} are known;"
            " set [daemon].allow_empty = true if that is really so"
        )
    if gone > policy.max_destroy_fraction * known:
        return (
            f"{gone} of {known} known instances are gone, more than"
            f" [daemon].max_destroy_fraction = {policy.max_destroy_fraction:g}"
        )
    return None


def held_records(plan_: Plan, now: float) -> Iterable[Record]:
    """Held records, marked REMOVING; unchanged ones already were."""
    error = f"destroy held: {plan_.hold_reason}"
    for record in plan_.held:
        if record.phase is not Phase.REMOVING or record.last_error != error:
            yield replace(
                record, phase=Phase.REMOVING, last_action="hold", last_error=error, updated_at=now
            )

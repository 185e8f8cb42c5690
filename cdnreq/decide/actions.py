"""The planner's values: what a tick may do (Action, Plan), the policy it
plans with, and the cache of instances that had nothing to do."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from cdnreq.decide.gate import Gate
from cdnreq.model import InstanceGuid, Record, SharedInstance


class Kind(str, enum.Enum):
    REQUEST = "request"  # first request of a new instance on the technical CDN
    UPDATE = "update"  # request again: parameters, state or CDN settings changed
    POLL = "poll"  # read the technical entry's answer, which is still pending
    PUBLISH = "publish"  # tell the customer something new, no request needed
    DESTROY = "destroy"  # destroy the technical entry


READ_BACK = "periodic read-back"  # also reads the customer's instance: see transitions.still_shown


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    record: Record
    reason: str
    instance: SharedInstance | None = None  # as listed; None when gone
    gate: Gate | None = None  # what to request (OK) or to show the customer
    forget: bool = True  # DESTROY: forget the instance after, or keep it without entry

    @property
    def guid(self) -> InstanceGuid:
        return self.record.guid

    @property
    def counted_as(self) -> str:
        """How it is counted and listed (the tick's `planned`, `cdnreq plan`):
        a told customer's periodic read-back, a PUBLISH that publishes only
        if the master lost what it was shown, is a read-back."""
        return Kind.POLL.value if self.kind is Kind.PUBLISH and self.reason == READ_BACK else self.kind.value


@dataclass(frozen=True, slots=True)
class Policy:
    """The configuration the planner depends on, and nothing else."""

    request_prefix: str
    spec_hash: str  # digest of the technical CDN's release, type and SLA
    allow_empty: bool = False
    max_destroy_fraction: float = 0.5
    retention_s: float = 0.0
    # explicit destroys of existing entries are held at the update guard's bar (guards.explicit_destroy_guard)
    max_update_fraction: float = 0.2
    min_update_hold: int = 2
    verify_interval_s: float = 0.0  # read live entries back this often (0: never)
    read_backs_per_tick: int = 2_000  # periodic read-backs planned per tick at most; the others wait
    retry_max_s: float = 0.0  # a failed call's backoff cap: a retried read-back lies up to a quarter more ahead


class Ownership(Protocol):
    def owns(self, guid: str, host: str) -> bool: ...

    def hosts_of(self, guid: str) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    updates: tuple[Record, ...] = ()  # stored before any call (new, held, retained, back)
    held: tuple[Record, ...] = ()  # gone from the master, removal held back
    hold_reason: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    fleet: int | None = None  # instances the removal guard judged against (None: no removal planned)
    withheld: tuple[InstanceGuid, ...] = ()  # every removal held (held, and retained entries listed destroyed)
    departed: tuple[InstanceGuid, ...] = ()  # the removals decided (counts["removed"]), for the guard's window
    idle: "IdleCache | None" = None  # the cache the next plan starts from (plan() only)


@dataclass(frozen=True, slots=True)
class IdleCache:
    """Instances the last plan found with nothing to do, with the record and
    the gate it saw, under the policy it planned with.

    Records are frozen and the domain step hands back the very same gate
    while nothing about an instance's hosts changed, so the same record
    object, gate object and requested state give the same answer again: an
    idle tick skips the publication digest and host checks for most
    instances. The read-back time, a function of the record and the policy,
    is kept beside them. Identity is only a cheap test of "the same value";
    a miss plans the instance in full. Each plan returns a new cache (Plan.idle),
    so it holds nothing of instances that left."""

    entries: Mapping[str, tuple[Record, Gate, float]] = field(default_factory=dict)  # and when to read back
    policy: Policy | None = None


class Draft:
    """The plan being written: actions in order, records to store first, counts."""

    def __init__(self, now: float, listed_at: Mapping[str, float] | None = None) -> None:
        self.now = now
        self.listed_at = listed_at or {}  # newcomers' first-listed times (decide/admission.py)
        self.counts: Counter[str] = Counter()
        self.read_backs = 0  # periodic read-backs planned (Policy.read_backs_per_tick)
        self.actions: list[Action] = []
        self.updates: list[Record] = []

    def add(self, action: Action | None, record: Record) -> None:
        if action is None:
            self.counts["unchanged"] += 1
        elif record.retry_at is not None and record.retry_at > self.now:
            self.counts["backoff"] += 1  # its record is backing off
        else:
            self.actions.append(action)

    def created_at(self, guid: str) -> float:
        """A new record's creation time: when its instance was first listed
        (its place in the order of claims), never after now."""
        return min(self.listed_at.get(guid, self.now), self.now)

    def counted(self) -> dict[str, int]:
        for action in self.actions:
            self.counts[action.counted_as] += 1
        return dict(self.counts)

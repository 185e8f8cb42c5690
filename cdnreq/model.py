"""The domain's nouns, shared by every module.

Plain frozen dataclasses: the planner is a pure function of these, the store
persists them, the master client produces them. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, NewType

import orjson

InstanceGuid = NewType("InstanceGuid", str)
"""The master's id of an instance (`SOFTINST-1234` in production)."""

Title = NewType("Title", str)
"""The title under which an entry is requested on the technical CDN."""

JsonDict = Mapping[str, Any]


def canonical_json(value: Any) -> bytes:
    """One spelling per value, so equal parameters always hash equal.

    orjson and the standard library spell JSON alike with these options;
    orjson is ten times faster, which matters when 100,000 instances are
    hashed every tick, and the standard library takes what orjson refuses
    (integers beyond 64 bits, lone surrogates).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


class RequestedState(str, enum.Enum):
    """What the customer asked for; carried over to the technical entry."""

    STARTED = "started"
    STOPPED = "stopped"
    DESTROYED = "destroyed"


class Phase(str, enum.Enum):
    """Where an instance stands on its way to the technical CDN and back."""

    NEW = "new"  # seen, never requested successfully on the technical CDN
    REQUESTED = "requested"  # requested; waiting for the technical CDN's answer
    LIVE = "live"  # the technical CDN's answer was relayed to the customer
    REMOVING = "removing"  # gone from the master; destroy pending or held
    RETAINED = "retained"  # gone from the master; kept (entry and hosts) until retention ends


@dataclass(frozen=True, slots=True)
class SharedInstance:
    """One customer's shared instance, as the master lists it."""

    guid: InstanceGuid
    title: str
    software_type: str
    state: RequestedState
    parameters: JsonDict
    param_hash: str

    @classmethod
    def of(
        cls,
        guid: str,
        parameters: JsonDict,
        *,
        title: str = "",
        software_type: str = "",
        state: RequestedState | str = RequestedState.STARTED,
    ) -> "SharedInstance":
        return cls(
            guid=InstanceGuid(guid),
            title=title,
            software_type=software_type,
            state=RequestedState(state),
            parameters=parameters,
            param_hash=digest(parameters),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """What cdnreq remembers of one customer instance between ticks.

    `param_hash`, `requested_state` and `spec_hash` describe what is in effect
    on the technical CDN (the last successful request), so a difference with
    the master's list is a change to carry over.
    """

    guid: InstanceGuid
    title: Title
    phase: Phase
    created_at: float
    updated_at: float
    param_hash: str | None = None
    requested_state: RequestedState | None = None
    spec_hash: str | None = None
    tech_guid: str | None = None
    connection: JsonDict | None = None  # the technical CDN's last answer
    published: JsonDict | None = None  # what the customer last received
    published_error: str | None = None  # the error the customer last received
    last_action: str | None = None
    last_error: str | None = None
    failures: int = 0
    retry_at: float | None = None
    served: tuple[str, ...] | None = None  # hosts in effect on the technical entry
    gone_at: float | None = None  # when it left the master (retention starts)


@dataclass(frozen=True, slots=True)
class HostClaim:
    """A host proven by DNS to belong to one instance: the first to prove it
    keeps it, until it is released."""

    host: str  # normalised; may be a wildcard `*.example.com`
    guid: InstanceGuid
    registrable: str
    proven_at: float
    checked_at: float  # last successful proof or re-check
    failing_since: float | None = None  # first failed re-check of a streak


@dataclass(frozen=True, slots=True)
class Challenge:
    """The token an instance must publish in DNS to prove its hosts."""

    guid: InstanceGuid
    domain: str  # the custom_domain it was issued for
    salt: str
    token: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the audit trail: an action taken and how it went."""

    instance_guid: str
    action: str
    outcome: str
    at: float
    detail: str | None = None
    tick: int | None = None


@dataclass(frozen=True, slots=True)
class InstanceAnswer:
    """The master's view of one instance after a request or a read."""

    guid: str
    connection_parameters: JsonDict = field(default_factory=dict)
    state: str | None = None
    title: str | None = None
    parameters: JsonDict | None = None  # as the master holds them, to check a request was kept

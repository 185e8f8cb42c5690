"""The domain's nouns, shared by every module.

Plain frozen dataclasses: the planner is a pure function of these, the store
persists them, the master client produces them. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from dataclasses import dataclass, field
from types import MemberDescriptorType
from typing import Any, Callable, ItemsView, Iterator, KeysView, Mapping, NewType, TypeVar

import orjson

InstanceGuid = NewType("InstanceGuid", str)
"""The master's id of an instance (`SOFTINST-1234` in production)."""

Title = NewType("Title", str)
"""The title under which an entry is requested on the technical CDN."""

JsonDict = Mapping[str, Any]


def canonical_json(value: Any) -> bytes:
    """One spelling per value, so equal parameters always hash equal, and
    different ones differ.

    orjson and the standard library spell JSON alike with these options;
    orjson is ten times faster, which matters when 100,000 instances are
    hashed every tick, and the standard library takes what orjson refuses
    (integers beyond 64 bits, lone surrogates) or would spell as another
    value: orjson writes NaN and Infinity as null, so a customer who
    replaced a refused NaN by null kept the hash, and the refusal, for good.
    """
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        pass
    else:
        if b"null" not in text or not _non_finite(value):
            return text
    spelled = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return spelled.encode("utf-8", "surrogatepass")


def _non_finite(value: Any) -> bool:
    """Whether a float NaN or Infinity is anywhere in `value` (as orjson read it: not nested past 1,024)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item.__class__ is float:
            if not math.isfinite(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def shown_digest(value: Any) -> bytes:
    """What a customer was shown, in 16 bytes: compared every tick, while the
    text itself stays in the store (100,000 dicts would cost 80 MB)."""
    return hashlib.blake2b(canonical_json(value), digest_size=16).digest()


T = TypeVar("T")


class FrozenJson(Mapping[str, Any]):
    """A JSON object kept as its compact text: read only when a publication
    is composed, held by every record between ticks.

    A technical CDN's answer as a dict costs three to four times its text;
    at 100,000 live instances that is the largest part of the daemon's memory.
    """

    __slots__ = ("raw",)

    def __init__(self, value: Mapping[str, Any] | bytes):
        # a copy: orjson hands back its whole working buffer (4 KB) for a short text
        self.raw = value if isinstance(value, bytes) else bytes(memoryview(canonical_json(dict(value))))

    def value(self) -> dict[str, Any]:
        """The object, parsed once: for a caller that reads many keys (each
        access through the Mapping interface parses the text again)."""
        return self._load()

    def _load(self) -> dict[str, Any]:
        try:
            return orjson.loads(self.raw)
        except orjson.JSONDecodeError:  # what canonical_json left to the standard library
            return json.loads(self.raw)

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __bool__(self) -> bool:
        return self.raw != b"{}"

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return self._load().items()

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        return self._load().keys()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenJson):
            return self.raw == other.raw or self._load() == other._load()
        return isinstance(other, Mapping) and self._load() == dict(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenJson({self._load()!r})"


def frozen_json(value: Mapping[str, Any] | None) -> FrozenJson | None:
    return None if value is None else value if isinstance(value, FrozenJson) else FrozenJson(value)


def fast_maker(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for a frozen slots dataclass that fills its
    slots directly.

    A frozen dataclass's __init__ goes through object.__setattr__ once per
    field; setting the slot descriptors from straight-line code builds the
    same object in half the time, which counts when 100,000 are built per
    tick (the listing) or at start-up (the store). Only when __init__ would
    do nothing more (no __post_init__, every field an init field, slots);
    otherwise the class itself.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    slots = [cls.__dict__.get(n) for n in names]
    if (
        hasattr(cls, "__post_init__")
        or not all(f.init for f in fields)
        or not all(isinstance(d, MemberDescriptorType) for d in slots)
    ):
        return cls
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{n}": d.__set__ for n, d in zip(names, slots)})  # type: ignore[union-attr]
    body = "".join(f"    _set_{n}(o, {n})\n" for n in names)
    exec(f"def make({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n", scope)
    return scope["make"]


class RequestedState(str, enum.Enum):
    """What the customer asked for; carried over to the technical entry."""

    STARTED = "started"
    STOPPED = "stopped"
    DESTROYED = "destroyed"


class ChangeKind(str, enum.Enum):
    """What a change of the change feed tells (cdnreq/decide/changes.py)."""

    LIVE = "live"  # the CDN's answer reached the customer for the first time
    PENDING_DNS = "pending_dns"  # the customer was shown the TXT record to publish
    REFUSED = "refused"  # the customer was shown why its entry is refused
    UPDATED = "updated"  # new parameters requested on the technical CDN
    STOPPED = "stopped"
    STARTED = "started"
    RETAINED = "retained"  # gone from the master; entry and hosts kept until retention ends
    DESTROYED = "destroyed"  # the technical entry was destroyed
    HOST_PROVEN = "host_proven"
    HOST_FAILING = "host_failing"  # a proven host failed its re-check (first failure of a streak)
    HOST_RELEASED = "host_released"
    HELD = "held"  # a guard holds this instance's removal or update


class Phase(str, enum.Enum):
    """Where an instance stands on its way to the technical CDN and back."""

    NEW = "new"  # seen, never requested successfully on the technical CDN
    REQUESTED = "requested"  # requested; waiting for the technical CDN's answer
    LIVE = "live"  # the technical CDN's answer was relayed to the customer
    REMOVING = "removing"  # gone from the master; destroy pending or held
    RETAINED = "retained"  # gone from the master; kept (entry and hosts) until retention ends


@dataclass(frozen=True, slots=True)
class SharedInstance:
    """One customer's shared instance, as the master lists it: only what
    the tick needs, since 100,000 of them are built each tick (the software
    type the master also lists is not kept; the title is kept for the
    listing's lifetime only, to be stored once per instance)."""

    guid: InstanceGuid
    state: RequestedState
    parameters: JsonDict
    param_hash: str
    title: str | None = None  # the customer's, as listed (listing.customer_title): only for the feed's scopes

    @classmethod
    def of(
        cls,
        guid: str,
        parameters: JsonDict,
        *,
        state: RequestedState | str = RequestedState.STARTED,
        title: str | None = None,
    ) -> "SharedInstance":
        return cls(
            guid=InstanceGuid(guid),
            state=RequestedState(state),
            parameters=parameters,
            param_hash=digest(parameters),
            title=title,
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
    connection: JsonDict | None = None  # the technical CDN's last answer (a FrozenJson)
    published: bytes | None = None  # shown_digest() of what the customer last received
    published_error: str | None = None  # the error the customer last received
    last_action: str | None = None
    last_error: str | None = None
    failures: int = 0
    retry_at: float | None = None
    served: tuple[str, ...] | None = None  # hosts in effect on the technical entry
    gone_at: float | None = None  # when it left the master (retention starts)
    live_at: float | None = None  # when the customer first held the technical CDN's answer (the feed's `live`)


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
class Decision:
    """The domain step's decision on one instance, kept for a restart: its
    verdict, or its settled gate (both as JSON text); trusted again only
    under the rules of cdnreq/decide/kept.py."""

    guid: str
    param_hash: str  # of the listed parameters it was made from
    stamp: str  # the rules and the domain policy it was made under (validate/version.py)
    verdict: str | None = None
    gate: str | None = None
    claims: str | None = None  # with a gate: digest of the claims it was settled with
    next_lookup: float | None = None  # with a pending verdict: when its proof is looked up again


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


@dataclass(frozen=True)
class Lookup:
    """What the DNS said about one name.

    outcome: ``"found"`` (values: one string per TXT record, its
    character-strings joined, UTF-8 with replacement; for
    the resolver's ``addresses``, the addresses and the CNAME targets),
    ``"absent"`` (NXDOMAIN or NODATA) or ``"unknown"`` (detail says why).
    """

    name: str
    outcome: str  # "found" | "absent" | "unknown"
    values: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Listing:
    """The shared instances hosted by the requester.

    `unusable` maps guids whose entry could not be used to the reason (they
    must be neither requested, updated nor destroyed; the customer is told
    the reason); `anonymous` counts entries without a usable guid, which
    means some known instance may be missing from `instances` for no reason
    of its own. `duplicates` counts identical repeated entries, kept once.
    `unusable_titles`: the customers' titles of unusable entries, where
    listed (the feed's title scopes see their refusal too).
    """

    instances: tuple[SharedInstance, ...]
    unusable: Mapping[str, str] = field(default_factory=dict)
    anonymous: int = 0
    duplicates: int = 0
    unusable_titles: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TechnicalEntry:
    """One entry hosted on the technical CDN."""

    title: str
    guid: str
    parameters: JsonDict = field(default_factory=dict)
    state: str | None = None


@dataclass(frozen=True, slots=True)
class Entries:
    entries: tuple[TechnicalEntry, ...]
    unreadable: int = 0  # entries without a string title and guid

    def by_title(self) -> dict[str, TechnicalEntry]:
        return {e.title: e for e in self.entries}

"""Operator actions, decided: approve, retry, release, forget, redeliver.

Each decision takes what the store holds (records, host claims, the held
sets) and the operator's request, and gives back either a `Change` to
commit in one transaction or a `Refusal` whose reason names the instance or
the host. Every change carries an `operator` event saying who asked, so
`cdnreq explain` shows it. Pure: the shell (cdnreq/operator.py) reads the
store and the master, and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from cdnreq.model import Event, HostClaim, InstanceGuid, Phase, Record
from cdnreq.decide.guards import HeldRemovals, HeldUpdates
from cdnreq.decide.removals import has_entry
from cdnreq.scrub import printable
from cdnreq.validate.hosts import HostError, normalise_host

APPROVE, RETRY, RELEASE, FORGET = "approve", "retry", "release", "forget"
REDELIVER = "redeliver"  # a consumer's dead-lettered webhooks, sent again (`cdnreq webhooks retry NAME`)
ACTIONS = (APPROVE, RETRY, RELEASE, FORGET, REDELIVER)
EVENT = "operator"  # the events' action: their outcome is the operator action's name
MAX_ARGUMENT = 1024  # characters of a guid, a host or a fingerprint


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """What an operator asked for, and who (for the audit trail)."""

    name: str
    guid: str | None = None
    host: str | None = None
    to: str | None = None
    fingerprints: tuple[str, ...] = ()
    by: str = "by an unnamed operator"
    consumer: str | None = None

    def query(self) -> list[tuple[str, str]]:
        """The request's arguments, as `POST /actions/NAME?...` carries them."""
        pairs = [(k, v) for k, v in (("guid", self.guid), ("host", self.host), ("to", self.to),
                                     ("consumer", self.consumer)) if v is not None]
        return pairs + [("fingerprint", f) for f in self.fingerprints]


def who(user: str, uid: int | str, via: str | None = None) -> str:
    """'by alice (uid 1000)'; over HTTP the user is the client's claim, so say
    so (escaped and cut short: it is the client's text)."""
    user, uid = printable(str(user))[:64], printable(str(uid))[:16]
    if via is None:
        return f"by {user} (uid {uid})"
    return f"by {user} (uid {uid}, as the client claims, via {via})"


def action_of(name: str, query: Mapping[str, Any], by: str) -> OperatorAction:
    """An action from its name and arguments (a multidict's `getall` for
    `fingerprint`, or lists); ValueError naming the argument when bad."""
    if name not in ACTIONS:
        raise ValueError(f"unknown operator action {name!r}: one of {', '.join(ACTIONS)}")

    def one(key: str) -> str | None:
        values = _all(query, key)
        if len(values) > 1:
            raise ValueError(f"{name}: `{key}` given {len(values)} times")
        value = values[0] if values else None
        if value is not None and not 0 < len(value) <= MAX_ARGUMENT:
            raise ValueError(f"{name}: `{key}` must be 1 to {MAX_ARGUMENT} characters, not {len(value)}")
        return value

    fingerprints = tuple(_all(query, "fingerprint"))
    needed = {RETRY: "guid", FORGET: "guid", RELEASE: "host", REDELIVER: "consumer"}.get(name)
    allowed = {APPROVE: {"fingerprint"}, RETRY: {"guid"}, FORGET: {"guid"}, RELEASE: {"host", "to"},
               REDELIVER: {"consumer"}}[name]
    extra = sorted(set(query) - allowed - {"user", "uid"})
    if extra:
        raise ValueError(f"{name}: unexpected argument(s) {', '.join(extra)}")
    if needed is not None and one(needed) is None:
        raise ValueError(f"{name}: `{needed}` is required")
    if any(not 0 < len(f) <= MAX_ARGUMENT for f in fingerprints):
        raise ValueError(f"{name}: `fingerprint` must be 1 to {MAX_ARGUMENT} characters")
    return OperatorAction(name, one("guid"), one("host"), one("to"), fingerprints, by, one("consumer"))


def _all(query: Mapping[str, Any], key: str) -> list[str]:
    if hasattr(query, "getall"):
        return [str(v) for v in query.getall(key, [])]
    value = query.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str


@dataclass(frozen=True)
class Change:
    """What an accepted action writes, in one transaction."""

    message: str
    upserts: tuple[Record, ...] = ()
    forgets: tuple[str, ...] = ()
    host_upserts: tuple[HostClaim, ...] = ()
    host_deletes: tuple[str, ...] = ()
    guards: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    approved_updates: HeldUpdates | None = None  # for the shell's listing of what was approved
    approved_removals: HeldRemovals | None = None


Decision = Change | Refusal


def _event(guid: str, action: OperatorAction, detail: str, now: float) -> Event:
    return Event(guid, EVENT, action.name, now, f"{detail}; {action.by}")


# -- approve ----------------------------------------------------------------


def approve(
    action: OperatorAction, updates: HeldUpdates, removals: HeldRemovals, now: float, approval_key: str
) -> Decision:
    """Approve the held sets (all of them, or those named by fingerprint) for
    the next tick only: it applies them if what it would hold is still in
    the approved set (cdnreq/decide/guards.py, plan's approved_removals)."""
    held: dict[str, str] = {}  # fingerprint: which held set
    if updates.count and updates.fingerprint:
        held[updates.fingerprint] = "updates"
    if removals.guids and removals.fingerprint:
        held[removals.fingerprint] = "removals"
    if not held:
        return Refusal("nothing is held: no update nor removal to approve")
    wanted = action.fingerprints or tuple(held)
    unknown = [f for f in wanted if f not in held]
    if unknown:
        now_held = ", ".join(f"{k} {f}" for f, k in held.items())
        return Refusal(
            f"--fingerprint {', '.join(unknown)} is not a held set (held now: {now_held}):"
            " look again with `cdnreq status`"
        )
    chosen = {held[f] for f in wanted}
    value: dict[str, Any] = {}
    events: list[Event] = []
    if "updates" in chosen:
        value["fingerprint"] = updates.fingerprint
        said = f"held updates {updates.fingerprint} approved"
        events += [_event(g, action, said, now) for g in sorted(updates.streaks)]
    if "removals" in chosen:
        value["removals"] = removals.fingerprint
        said = f"held removals {removals.fingerprint} approved"
        events += [_event(g, action, said, now) for g in removals.guids]
    parts = [f"{updates.count} update(s)"] if "updates" in chosen else []
    parts += [f"{len(removals.guids)} removal(s)"] if "removals" in chosen else []
    return Change(
        message=f"approved {' and '.join(parts)} for the next tick",
        guards={approval_key: value},
        events=tuple(events),
        approved_updates=updates if "updates" in chosen else None,
        approved_removals=removals if "removals" in chosen else None,
    )


# -- retry --------------------------------------------------------------------


def retry(action: OperatorAction, record: Record | None, now: float) -> Decision:
    """Make a backing-off instance due at the next tick; its failure count is
    kept, so a further failure backs off as long as it would have."""
    guid = action.guid or ""
    if record is None:
        return Refusal(f"no instance {guid!r} is known")
    if not record.failures or record.retry_at is None:
        return Refusal(f"{guid} is not backing off: no failed call of it waits for a retry")
    if record.retry_at <= now:
        return Refusal(f"{guid} is not backing off: its retry is already due, at the next tick")
    changed = replace(record, retry_at=now)
    detail = f"backoff skipped (was until {record.retry_at:.0f} after {record.failures} failure(s))"
    return Change(f"{guid}: retried at the next tick", upserts=(changed,), events=(_event(guid, action, detail, now),))


# -- release ------------------------------------------------------------------


def release(
    action: OperatorAction, claims: Mapping[str, HostClaim], records: Mapping[InstanceGuid, Record], now: float
) -> Decision:
    """Free a proven host, or hand it to another known instance (`--to`),
    which then holds it as if it had proven it now."""
    raw = action.host or ""
    try:
        host = normalise_host(raw, wildcard=True)
    except HostError as error:
        return Refusal(f"host {raw!r}: {error}")
    claim = claims.get(host)
    if claim is None:
        return Refusal(f"host {host} is not claimed by any instance: nothing to release")
    owner, to = claim.guid, action.to
    if to is None:
        events = (_event(owner, action, f"host {host} released", now),)
        return Change(f"host {host} released from {owner}", host_deletes=(host,), events=events)
    if to == owner:
        return Refusal(f"host {host} is already claimed by {to}")
    target = records.get(InstanceGuid(to))
    if target is None:
        return Refusal(f"no instance {to!r} is known: host {host} stays with {owner}")
    if target.phase in (Phase.REMOVING, Phase.RETAINED):
        return Refusal(f"{to} is gone from the master ({target.phase.value}): host {host} stays with {owner}")
    given = HostClaim(host, InstanceGuid(to), claim.registrable, proven_at=now, checked_at=now)
    events = (
        _event(owner, action, f"host {host} released and handed to {to}", now),
        _event(to, action, f"host {host} handed over from {owner}", now),
    )
    return Change(f"host {host} released from {owner} and handed to {to}", host_upserts=(given,), events=events)


# -- forget -------------------------------------------------------------------


def forget_check(action: OperatorAction, record: Record | None) -> Refusal | str | None:
    """Before any read: a refusal, the technical entry's guid to read back,
    or None when no technical entry can exist."""
    guid = action.guid or ""
    if record is None:
        return Refusal(f"no instance {guid!r} is known")
    if record.phase not in (Phase.REMOVING, Phase.RETAINED):
        return Refusal(
            f"{guid} is still listed by the master (state {record.phase.value}):"
            " only an instance gone from it is forgotten"
        )
    if not has_entry(record):
        return None
    if record.tech_guid is None:
        return Refusal(
            f"{guid}: a technical entry may exist (title {record.title}) but its guid is unknown;"
            " let cdnreq destroy it first"
        )
    return record.tech_guid


def forget(action: OperatorAction, record: Record, read_back: tuple[bool, str] | None, now: float) -> Decision:
    """Drop the record once its technical entry was read back destroyed or
    absent (`read_back`: (gone, what the master said); None: no entry)."""
    guid = record.guid
    if read_back is not None and not read_back[0]:
        return Refusal(
            f"{guid}: its technical entry {record.tech_guid} is still on the master ({read_back[1]});"
            " it must be destroyed before the record is forgotten"
        )
    if read_back is None:
        seen = "no technical entry"
    else:
        seen = f"technical entry {record.tech_guid} read back: {read_back[1]}"
    events = (_event(guid, action, f"forgotten, {seen}", now),)
    return Change(f"{guid} forgotten ({seen})", forgets=(guid,), events=events)


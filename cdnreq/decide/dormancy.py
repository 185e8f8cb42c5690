"""Which instances sleep between ticks, and which must wake.

At 100,000 instances nearly all are settled and idle: proven, live, told,
and listed tick after tick with the same parameters. Their Record, their
settled Gate, their Challenge and their idle-cache entry took about 2 KB
each in the daemon's memory for nothing an idle tick reads. Such an instance
sleeps: the daemon keeps a Dormant entry (the few values the idle check and
the fleet's counts read), and its record and challenge stay in the store
only (its gate is decided again when it wakes).

An instance sleeps when the last plan found nothing to do with the very
record and settled gate it still has (decide/actions.IdleCache: the same
objects, so nothing changed since), and this tick lists it unchanged. It
wakes before anything may read it: listed with other parameters or another
state, its read-back due, a claim of it due for a re-check, no longer
listed (or listed unusable), or the policy it slept under changed. Waking
reads its record and challenge back (a lost challenge would be issued
again, a new token: the shell must read it before the domain step runs),
and the domain step decides it again like any instance whose gate was
dropped.

A restart keeps them asleep: each fell asleep with a mark in the store (the
parameter hash, the read-back time, the rules), cleared by any write of its
record, and a restarted daemon trusts it while its rules are today's and its
kept settled decision still holds (decide/kept.py: same stamp, same
parameters, same claims): it loads neither the record nor the challenge.

Each sleeper is held packed in one bytes object (pack/unpack): a tuple of
six Python objects, a hash, a float and a tuple of hosts cost about 250
bytes a sleeper, the packed form under 100. An idle tick reads of it only
the fixed head (parameter hash, state, read-back time).

Pure: the shell (reconcile/sleepers.py) reads, writes and drops the objects.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections import Counter
from dataclasses import fields
from typing import Any, Iterable, Mapping, NamedTuple

import orjson

from cdnreq.decide.actions import IdleCache, Policy
from cdnreq.decide.gate import Gate, HostIndex
from cdnreq.decide.guards import serving
from cdnreq.decide.kept import claims_of
from cdnreq.model import Phase, Record, RequestedState, SharedInstance


class Dormant(NamedTuple):
    """A sleeping instance, as the idle check and the fleet's counts see it."""

    param_hash: bytes  # short() of the listed parameters' hash its settled gate was decided for
    state: RequestedState  # as listed, and as requested on its entry
    read_back_at: float  # when its entry is read back next (decide/plan._read_back_at)
    phase: Phase
    serving: bool  # decide/guards.serving() of its record
    served: tuple[str, ...] | None  # the hosts in effect on its entry (decide/served.ServedHosts)


class Rest(NamedTuple):
    """This tick's change: who falls asleep (packed, with the mark each leaves in the store), who wakes."""

    sleep: dict[str, bytes]
    marks: dict[str, str]
    wake: set[str]


def short(param_hash: str) -> bytes:
    """A parameter hash as a sleeper keeps it: 128 bits, the first of a
    listed hash (a sha256 in hex), a digest of anything else."""
    if len(param_hash) >= 32:
        try:
            head = bytes.fromhex(param_hash[:32])
        except ValueError:
            pass
        else:
            if len(head) == 16:  # fromhex skips whitespace: fewer bytes then
                return head
    return hashlib.blake2b(param_hash.encode("utf-8", "surrogatepass"), digest_size=16).digest()


_HEAD = struct.Struct("<16sdBBB")  # short(param_hash), read_back_at, phase, state, serving; then the served hosts
_PHASES, _STATES = tuple(Phase), tuple(RequestedState)
_PHASE_AT, _STATE_AT, _SERVING_AT = 24, 25, 26
_PHASE_INDEX = {p: i for i, p in enumerate(_PHASES)}
_STATE_INDEX = {s: i for i, s in enumerate(_STATES)}


def pack(dormant: Dormant) -> bytes:
    """A sleeper as held between ticks; its served hosts follow the head as JSON (null: none known)."""
    head = _HEAD.pack(dormant.param_hash, dormant.read_back_at, _PHASE_INDEX[dormant.phase],
                      _STATE_INDEX[dormant.state], dormant.serving)  # fmt: skip
    return head + orjson.dumps(None if dormant.served is None else list(dormant.served))


def unpack(packed: bytes) -> Dormant:
    param_hash, read_back_at, phase, state, serving = _HEAD.unpack_from(packed)
    served = orjson.loads(packed[_HEAD.size:])
    return Dormant(param_hash, _STATES[state], read_back_at, _PHASES[phase], bool(serving),
                   None if served is None else tuple(served))  # fmt: skip


def _asleep_as_listed(packed: bytes, instance: SharedInstance, now: float, horizon: float = float("inf")) -> bool:
    """Listed as it fell asleep (parameters and state), its read-back not
    due, nor further than `horizon` from now (planned under a clock since
    stepped back): it sleeps on."""
    return (
        packed[_STATE_AT] == _STATE_INDEX[instance.state] and packed.startswith(short(instance.param_hash))
        and now < _HEAD.unpack_from(packed)[1] <= now + horizon
    )


def rest(
    instances: Iterable[SharedInstance],
    sleepers: Mapping[str, bytes],
    idle: IdleCache,
    known: Mapping[str, Record],
    settled: Mapping[str, tuple[str, Gate]],
    due_owners: Iterable[str],
    now: float,
    *,
    rules: str,
    same_rules: bool,
    keep_absent: bool = False,
    unusable: Iterable[str] = (),
    horizon: float = float("inf"),
) -> Rest:
    """Who sleeps and who wakes this tick, from its listing (each guid once,
    as listing.read_listing gives them). `due_owners`: instances owning a
    claim whose re-check is due now; `rules`: rules_digest() of today's
    policies, and `same_rules` whether the sleepers fell asleep under them.
    `keep_absent`: the listing holds every removal (guards.listing_hold),
    so the sleepers it does not name sleep on: woken, they would only be
    marked held, then back (100,000 records read and written twice for
    one empty listing); those it names unusable (`unusable`) wake, to be
    told why; `horizon`: plan.read_back_horizon. Sleepers are packed."""
    if not same_rules:
        return Rest({}, {}, set(sleepers))
    wake = {g for g in unusable if g in sleepers} if keep_absent else set(sleepers)
    sleep: dict[str, bytes] = {}
    marks: dict[str, str] = {}
    entries = idle.entries
    named: set[str] = set()  # the sleepers listed, when the absent ones sleep on
    for instance in instances:
        guid = instance.guid
        packed = sleepers.get(guid)
        if packed is not None:
            if keep_absent:
                named.add(guid)
            if _asleep_as_listed(packed, instance, now, horizon):
                wake.discard(guid)  # listed as it fell asleep: sleeps on
            elif keep_absent:
                wake.add(guid)
            continue
        hit = entries.get(guid)
        if hit is None:
            continue
        record, gate, read_back_at = hit
        kept = settled.get(guid)
        if (
            kept is not None and kept[1] is gate and known.get(guid) is record
            and kept[0] == instance.param_hash and record.requested_state is instance.state
            and read_back_at > now
        ):
            dormant = Dormant(short(kept[0]), instance.state, read_back_at, record.phase, serving(record),
                              record.served)  # fmt: skip
            try:
                sleep[record.guid] = pack(dormant)  # the record's guid: the one string the claims hold too
            except (TypeError, ValueError):  # served hosts JSON cannot spell (a lone surrogate): it stays awake
                continue
            marks[record.guid] = mark(kept[0], read_back_at, rules)
    for guid in due_owners:  # an owner the listing does not name is not re-checked: it sleeps on
        if guid in sleepers and (not keep_absent or guid in named):
            wake.add(guid)
        sleep.pop(guid, None)
        marks.pop(guid, None)
    return Rest(sleep, marks, wake)


def phases(sleepers: Iterable[bytes]) -> Counter[str]:
    """The sleepers (packed) by phase (the status view's counts)."""
    counts = Counter(packed[_PHASE_AT] for packed in sleepers)
    return Counter({_PHASES[i].value: n for i, n in counts.items()})


def serving_count(sleepers: Iterable[bytes]) -> int:
    """How many sleepers' (packed) entries may be serving (decide/guards.live_count)."""
    return sum(packed[_SERVING_AT] for packed in sleepers)


#: the plan policy's guard bars: they judge departures and mass changes, and
#: a sleeper that departs or changes wakes anyway; an operator who moves one
#: (in an incident, say) must not wake the fleet
GUARD_BARS = frozenset({"allow_empty", "max_destroy_fraction", "max_update_fraction", "min_update_hold"})
#: how much work a tick takes on, and how soon a failed call is retried: it
#: paces, and judges nothing a sleeper fell asleep under
PACING = frozenset({"read_backs_per_tick", "retry_max_s"})
#: what is done with an instance gone from the master or listed destroyed: a
#: sleeper never is one (gone, or listed otherwise, it wakes first)
DEPARTURES = frozenset({"retention_s"})


def rules_digest(policy: Policy, domain_stamp: str) -> str:
    """The rules a sleeper fell asleep under: the plan's policy but its guard
    bars, its pacing and its departures, and the domain step's stamp (validate/version.stamp: its rules,
    libraries and policy). A field added to Policy counts unless named here."""
    kept = tuple((f.name, getattr(policy, f.name)) for f in fields(policy) if f.name not in GUARD_BARS | PACING | DEPARTURES)
    return hashlib.blake2b(repr((kept, domain_stamp)).encode(), digest_size=16).hexdigest()


def mark(param_hash: str, read_back_at: float, rules: str) -> str:
    """What the store keeps of a sleeper beyond its record (instances.sleep)."""
    return json.dumps([param_hash, None if read_back_at == float("inf") else read_back_at, rules])


def _hosts(value: Any) -> tuple[str, ...]:
    """Served hosts as stored: a list of strings, or the mark does not hold."""
    if value.__class__ is not list or any(h.__class__ is not str for h in value):
        raise ValueError("served hosts are not a list of names")
    return tuple(value)


def _read_back(value: Any) -> float:
    """A mark's read-back time: none (never), or a finite number."""
    if value is None:
        return float("inf")
    if value.__class__ not in (int, float) or not math.isfinite(value):
        raise ValueError("not a read-back time")
    return float(value)


class _Entry(NamedTuple):  # what guards.serving() reads of a record
    tech_guid: Any
    phase: Phase


def from_store(
    rows: Iterable[tuple[Any, ...]], stamp: str, rules: str, index: HostIndex
) -> tuple[dict[str, bytes], list[str]]:
    """The sleepers a restart keeps asleep, and the guids it must load awake:
    a mark under other rules, a kept decision that no longer holds (another
    stamp or parameters, other claims, none at all), or a row that cannot be
    read. Rows: (guid, mark, phase, requested state, has an entry, served,
    and the kept decision's parameter hash, stamp, claims, whether a gate)."""
    asleep: dict[str, bytes] = {}
    awake: list[str] = []
    phases, states = Phase._value2member_map_, RequestedState._value2member_map_  # 100,000 lookups, no call
    for guid, text, phase, state, entry, served, param_hash, kept_stamp, claims, gate in rows:
        try:  # orjson: a restart reads 100,000 marks; anything it cannot read wakes the instance
            listed, read_back, marked_rules = orjson.loads(text)
            if not (
                marked_rules == rules and gate and kept_stamp == stamp and param_hash == listed
                and claims == claims_of(index, guid)
            ):
                raise ValueError("no longer holds")
            hosts = None if served is None else _hosts(orjson.loads(served))
            current = phases[phase]
            asleep[sys.intern(guid)] = pack(Dormant(
                short(listed), states[state], _read_back(read_back), current,
                serving(_Entry(True if entry else None, current)), hosts,
            ))
        except (ValueError, TypeError, KeyError, RecursionError):
            awake.append(guid)
    return asleep, awake

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

Pure: the shell (reconcile/tick.py) reads and drops the objects.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, NamedTuple

from cdnreq.decide.actions import IdleCache
from cdnreq.decide.gate import Gate
from cdnreq.decide.guards import serving
from cdnreq.model import Phase, Record, RequestedState, SharedInstance


class Dormant(NamedTuple):
    """A sleeping instance, as the idle check and the fleet's counts see it."""

    param_hash: str  # of the listed parameters its settled gate was decided for
    state: RequestedState  # as listed, and as requested on its entry
    read_back_at: float  # when its entry is read back next (decide/plan._read_back_at)
    phase: Phase
    serving: bool  # decide/guards.serving() of its record
    served: tuple[str, ...] | None  # the hosts in effect on its entry (decide/served.ServedHosts)


class Rest(NamedTuple):
    """This tick's change: who falls asleep, who wakes."""

    sleep: dict[str, Dormant]
    wake: set[str]


def rest(
    instances: Iterable[SharedInstance],
    sleepers: Mapping[str, Dormant],
    idle: IdleCache,
    known: Mapping[str, Record],
    settled: Mapping[str, tuple[str, Gate]],
    due_owners: Iterable[str],
    now: float,
    *,
    same_rules: bool,
) -> Rest:
    """Who sleeps and who wakes this tick, from its listing (each guid once,
    as listing.read_listing gives them). `due_owners`: instances owning a
    claim whose re-check is due now; `same_rules`: the plan and domain
    policies are those the sleepers fell asleep under."""
    if not same_rules:
        return Rest({}, set(sleepers))
    wake = set(sleepers)
    sleep: dict[str, Dormant] = {}
    entries = idle.entries
    for instance in instances:
        guid = instance.guid
        dormant = sleepers.get(guid)
        if dormant is not None:
            if dormant.param_hash == instance.param_hash and dormant.state is instance.state and dormant.read_back_at > now:
                wake.discard(guid)  # listed as it fell asleep: sleeps on
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
            sleep[record.guid] = Dormant(  # the record's guid: the one string the claims hold too
                kept[0], instance.state, read_back_at, record.phase, serving(record), record.served
            )
    for guid in due_owners:
        if guid in sleepers:
            wake.add(guid)
        sleep.pop(guid, None)
    return Rest(sleep, wake)


def phases(sleepers: Mapping[str, Dormant]) -> Counter[str]:
    """The sleepers by phase (the status view's counts)."""
    return Counter(d.phase.value for d in sleepers.values())


def serving_count(sleepers: Mapping[str, Dormant]) -> int:
    """How many sleepers' entries may be serving (decide/guards.live_count)."""
    return sum(1 for d in sleepers.values() if d.serving)

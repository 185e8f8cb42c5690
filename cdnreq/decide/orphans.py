"""Which technical entries no known instance owns, and whether to destroy them.

`cdnreq orphans` lists the entries the technical CDN hosts under cdnreq's
title prefix and the legacy requester's. An entry is an orphan when neither
its title nor its guid belongs to a record of the store, whatever the
record's phase: a record retained or being removed still owns its entry.
Entries under any other prefix belong to someone else and are never touched.

Destroying orphans is a mass removal like any other: a lost or wrong store
would make every live entry look orphaned. So the tick's bar applies
(guards.mass_removal, against the entries under the prefixes), and a store
that knows no instance at all is always held. A held sweep goes ahead only
with the fingerprint of the exact set of orphans it would destroy.

Pure: the listing and the store's titles and guids come in as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from cdnreq.model import Entries, TechnicalEntry
from cdnreq.model import digest
from cdnreq.decide.guards import mass_removal


@dataclass(frozen=True, slots=True)
class Orphan:
    entry: TechnicalEntry
    prefix: str  # the configured prefix its title starts with


@dataclass(frozen=True, slots=True)
class Sweep:
    """One look at the CDN's entries, and the guard's verdict on destroying the orphans."""

    orphans: tuple[Orphan, ...]
    owned: int  # entries under the prefixes that a record owns
    ignored: tuple[TechnicalEntry, ...]  # under no configured prefix: never touched
    unreadable: int  # listed without a usable title or guid
    fingerprint: str | None  # of the orphans' set, for --approve
    hold: str | None  # why destroying them is held; None when it may go ahead

    @property
    def under(self) -> int:
        """The entries under the configured prefixes, owned or not."""
        return self.owned + len(self.orphans)


def prefix_of(title: str, prefixes: Iterable[str]) -> str | None:
    """The longest configured prefix the title starts with (one prefix may
    start another: the entry belongs to the more specific one)."""
    matching = [p for p in prefixes if title.startswith(p)]
    return max(matching, key=len) if matching else None


def fingerprint(orphans: Iterable[Orphan]) -> str | None:
    """The same set of orphans gives the same fingerprint, whatever the order;
    a set that gained or lost an entry gives another."""
    pairs = sorted([o.entry.title, o.entry.guid] for o in orphans)
    return digest(["orphans", pairs])[:16] if pairs else None


def orphan_guard(orphans: int, under: int, records: int, policy: Any) -> str | None:
    """Why destroying `orphans` of the `under` entries must be held, or None."""
    if orphans == 0:
        return None
    if records == 0:
        return (
            f"the store knows no instance while {under} entries are under the prefixes:"
            " a lost or wrong database would make every entry look orphaned"
        )
    if mass_removal(orphans, under, policy):
        return (
            f"{orphans} of the {under} entries under the prefixes are orphans, at least"
            f" [daemon].max_destroy_fraction = {policy.max_destroy_fraction:g}"
        )
    return None


def sweep(
    entries: Entries,
    prefixes: Sequence[str],
    titles: Iterable[str],
    guids: Iterable[str | None],
    records: int,
    policy: Any,
    approved: str | None = None,
) -> Sweep:
    """Sort the CDN's entries into orphans, owned and ignored, and judge the
    destroy. `titles` and `guids` are every record's title and tech_guid.
    `approved` releases a held sweep when it is this set's fingerprint; any
    other fingerprint holds even a sweep the bar lets through: the operator
    approved another set."""
    known_titles, known_guids = set(titles), {g for g in guids if g}
    orphans: list[Orphan] = []
    ignored: list[TechnicalEntry] = []
    owned = 0
    seen: set[str] = set()
    for entry in entries.entries:
        if entry.guid in seen:  # listed twice (a page repeated): counted once, destroyed once
            continue
        seen.add(entry.guid)
        prefix = prefix_of(entry.title, prefixes)
        if prefix is None:
            ignored.append(entry)
        elif entry.title in known_titles or entry.guid in known_guids:
            owned += 1
        else:
            orphans.append(Orphan(entry, prefix))
    orphans.sort(key=lambda o: (o.entry.title, o.entry.guid))
    mark = fingerprint(orphans)
    hold = orphan_guard(len(orphans), owned + len(orphans), records, policy)
    if approved is not None and orphans:  # an approval names one exact set, held or not
        hold = None if approved == mark else (
            f"--approve {approved} is not the fingerprint of these {len(orphans)} orphans ({mark}):"
            " they changed since it was printed"
        )
    return Sweep(tuple(orphans), owned, tuple(ignored), entries.unreadable, mark, hold)


def prefixes_of(config: Any) -> tuple[str, ...]:
    """cdnreq's own prefix, then the legacy requester's when configured."""
    own = config.technical_cdn.request_prefix
    legacy = config.legacy.request_prefix
    return (own,) if legacy is None or legacy == own else (own, legacy)

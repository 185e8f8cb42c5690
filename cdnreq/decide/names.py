"""Which customers' titles to store (the feed's title scopes, issue 16).

A title is stored once per instance, the first time the instance is listed
with one, and copied onto each of its changes by the store; it is never
held in memory per instance. So the tick stores the titles of instances it
has no record of yet (new: their first change may come in this tick) and
of those stored before titles were kept (`unnamed`, read once at a load).
A title the master changes later is not followed: in SlapOS a shared
instance's title is part of what identifies it.
"""

from __future__ import annotations

from typing import Collection, Iterable

from cdnreq.listing import addressable
from cdnreq.model import SharedInstance

MAX_TITLE = 256  # characters of a customer's title kept: scopes match prefixes (config: at most 200)


def to_keep(instances: Iterable[SharedInstance], known: Collection[str], asleep: Collection[str],
            unnamed: Collection[str]) -> list[tuple[str, str]]:
    """(guid, title) of the listed instances whose title is not stored yet."""
    found = ((i.guid, stored_title(i.title)) for i in instances
             if i.title is not None and (i.guid in unnamed or (i.guid not in known and i.guid not in asleep)))
    return [(guid, title) for guid, title in found if title is not None]


def stored_title(title: str | None) -> str | None:
    """The listed title as stored: a non-empty string of Unicode scalar values
    without NUL, cut to MAX_TITLE characters; None for anything else (it then
    matches no title scope)."""
    if not title:
        return None
    title = title[:MAX_TITLE]
    return title if addressable(title) else None

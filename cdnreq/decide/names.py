"""Which customers' titles to store (the feed's title scopes, issue 16).

A title is stored once per instance, the first time the instance is listed
with one (not destroyed: the master lists a destroyed instance long after
cdnreq forgot it), and copied onto each of its changes by the store; it is never
held in memory per instance. So the tick stores the titles of instances it
has no record of yet (new: their first change may come in this tick) and
of those stored before titles were kept (`unnamed`, read once at a load).
An instance listed without a title that can be stored is looked at again
at each tick until one is. A title the master changes later is not
followed: in SlapOS a shared instance's title is part of what identifies it.
"""

from __future__ import annotations

from typing import Collection

from cdnreq.listing import MAX_TITLE, addressable
from cdnreq.model import Listing, RequestedState


def to_keep(listing: Listing, known: Collection[str], asleep: Collection[str],
            unnamed: Collection[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(guid, title) of the listed instances whose title is not stored yet,
    usable or not (a refusal is a change too); and the guids among them
    listed without a title that can be stored: the next ticks look again."""
    destroyed = RequestedState.DESTROYED  # listed destroyed and not stored: never will be (nor forgotten again)
    candidates = [(i.guid, i.title) for i in listing.instances
                  if i.guid in unnamed or (i.state is not destroyed and i.guid not in known and i.guid not in asleep)]
    if listing.unusable:
        titles = listing.unusable_titles
        candidates += [(g, titles.get(g)) for g in listing.unusable
                       if g in unnamed or (g not in known and g not in asleep)]
    keep, untitled = [], []
    for guid, listed in candidates:
        title = stored_title(listed)
        if title is None:
            untitled.append(guid)
        else:
            keep.append((guid, title))
    return keep, untitled


def stored_title(title: str | None) -> str | None:
    """The listed title as stored: a non-empty string of Unicode scalar values
    without NUL, of at most MAX_TITLE characters; None for anything else
    (it then matches no title scope)."""
    if not title:
        return None
    title = title[:MAX_TITLE]
    return title if addressable(title) else None

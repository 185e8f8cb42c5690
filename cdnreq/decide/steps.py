"""What follows each outcome of a call: the executor reports what the
master answered and applies the step decided here, it decides nothing.

- a read-back of a live or requested entry: the master no longer knows the
  entry, or it does not hold the last request -> request again; an error
  otherwise -> fail (retried after the backoff); else publish what the
  customer should see;
- a destroy: by title, answered 'no such entry' -> gone; failed otherwise
  (retried after the backoff); sent by title and answered without a guid to
  read back by -> gone; else read back by that guid;
- a read-back of a destroyed entry: still there -> destroy again;
- once an entry is gone: forget the instance, keep it (retained, or listed
  without an entry), or publish to its customer when it is still listed.
"""

from __future__ import annotations

import enum

from cdnreq.decide.gate import Gate


class Next(str, enum.Enum):
    REQUEST = "request again"
    DESTROY = "destroy again"
    PUBLISH = "publish"
    FAIL = "fail"
    FORGET = "forget"
    KEEP = "keep"
    CONFIRMED = "confirmed"
    READ_BACK = "read back"


def after_read_back_error(*, not_found: bool, listed: bool) -> Next:
    """The entry could not be read: lost (the master knows no such entry)
    while its customer is listed -> request it again; anything else fails."""
    return Next.REQUEST if not_found and listed else Next.FAIL


def after_read_back(*, listed: bool, kept: bool) -> Next:
    """The entry was read: requested again when it does not hold what was
    last requested (a master may drop a request), else the customer is told."""
    return Next.REQUEST if listed and not kept else Next.PUBLISH


def after_destroy_error(*, by_title: bool, absent: bool) -> Next:
    """A destroy by title of an entry the master knows no such title for has
    nothing left to destroy; any other error fails and is retried."""
    return Next.CONFIRMED if by_title and absent else Next.FAIL


def after_destroy(*, by_title: bool, answered_guid: str | None) -> Next:
    """A destroy sent: read back by the entry's guid (the one stored, or the
    one a destroy by title answered); gone when there is none to read by."""
    return Next.CONFIRMED if by_title and not answered_guid else Next.READ_BACK


def after_destroy_read_back(*, destroyed: bool) -> Next:
    """A destroy counts once read back destroyed or absent; a master may drop one."""
    return Next.CONFIRMED if destroyed else Next.DESTROY


def once_gone(*, forget: bool, gate: Gate | None) -> Next:
    """The entry is gone: the instance is forgotten, or kept; a customer
    still listed is told what it is shown now."""
    if forget:
        return Next.FORGET
    return Next.KEEP if gate is None else Next.PUBLISH

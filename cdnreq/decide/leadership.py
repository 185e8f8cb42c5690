"""How long a leader may act on the lease it renewed: pure arithmetic.

The database extends the lease by `lease_s` from its own clock, some time
after the node asked. The node cannot read that clock, so it counts from
the moment it asked, on its own monotonic clock, which is earlier: the lease
the database granted outlives the node's count. A margin more covers a
clock that runs a little slow and a master call already on its way: a node
stops issuing master calls before any other node can take the lease.
"""

from __future__ import annotations

from dataclasses import dataclass

MARGIN_FRACTION = 0.2  # of the lease: stop this long before it can expire
MIN_MARGIN_S = 1.0


def margin_s(lease_s: float) -> float:
    return max(MIN_MARGIN_S, lease_s * MARGIN_FRACTION)


def acts_until(asked_at: float, lease_s: float) -> float:
    """Until when (monotonic) a node may act on a lease taken or renewed by a
    statement sent at `asked_at` (monotonic)."""
    return asked_at + lease_s - margin_s(lease_s)


def timing_error(lease_s: float, renew_s: float) -> str | None:
    """Why a lease time and renew interval cannot work together, or None:
    a renewal must come before the node stops acting, with room for one
    failed attempt."""
    if renew_s <= 0 or lease_s <= 0:
        return "lease_s and renew_s must be positive"
    if 2 * renew_s > lease_s - margin_s(lease_s):
        return (f"renew_s = {renew_s:g} is too long for lease_s = {lease_s:g}: two renewals must fit in "
                f"{lease_s - margin_s(lease_s):g} s (the lease less its margin)")
    return None


@dataclass(frozen=True, slots=True)
class Term:
    """A node's hold on the lease: its epoch (the fencing token its writes
    carry) and until when, on its monotonic clock, it may call the master."""

    holder: str
    epoch: int
    until: float

    def valid(self, now: float) -> bool:
        return now < self.until

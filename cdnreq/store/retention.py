"""How much history the store keeps: the rules pruning applies, without I/O.

Events and ticks are an audit trail; at 100,000 instances they grow by about
100,000 rows a day and every backup copies them. Past the retention they go,
except what still explains the present:

* each stored instance's newest event of every action (its last request,
  publication, poll, claim, ...): `cdnreq explain` shows why an instance is
  as it is, and what the customer was last shown dates from its last
  "publish";
* the last `KEEP_TICKS` ticks, whatever their age (`cdnreq status` shows the
  last one, and a requester stopped for months still has them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DAY_S: Final[float] = 86400.0
KEEP_TICKS: Final[int] = 10
BATCH_ROWS: Final[int] = 2000  # rows deleted per transaction: a few tens of ms
VACUUM_PAGES: Final[int] = 512  # pages given back per incremental_vacuum step (2 MiB at 4 KiB)
PASS_INTERVAL_S: Final[float] = 3600.0  # the daemon's pruning pass


@dataclass(frozen=True, slots=True)
class Retention:
    """`[store].events_retention_days` as pruning uses it (0: keep everything)."""

    days: int

    @property
    def keeps_everything(self) -> bool:
        return self.days <= 0

    def cutoff(self, now: float) -> float | None:
        """Rows older than this Unix time may go; None when none may."""
        return None if self.keeps_everything else now - self.days * DAY_S

"""The tick's admission state between ticks (the rule: cdnreq/decide/admission.py).

Keeps the queue of newcomers, whether the running tick was started at once
(no new sighting for the guards that count ticks), and who waited after the
last tick that succeeded (a failed tick must not stop a run of ticks
started at once: the queue shrinks from there).
"""

from __future__ import annotations

from typing import Container

from cdnreq.config import DaemonConfig
from cdnreq.decide.admission import Queue, admit
from cdnreq.model import Listing
from cdnreq.reconcile.report import TickReport


class Admission:
    def __init__(self) -> None:
        self.queue = Queue()
        self.sighting = True  # False while a tick started at once to take on newcomers runs
        self._left_ok: tuple[str, ...] = ()

    def begin(self, at_once: bool) -> None:
        self.sighting = not at_once

    def admit(self, listing: Listing, known: Container[str], asleep: Container[str], now: float,
              daemon: DaemonConfig, report: TickReport) -> Listing:
        """At most [daemon].admit_per_tick never-seen instances; the rest wait."""
        admitted = admit(listing, known, asleep, self.queue, now, daemon.admit_per_tick, daemon.confirm_ticks,
                         self.sighting, self._left_ok)
        self.queue = admitted.queue
        report.waiting_admission, report.admit_again = admitted.waiting, admitted.again
        return admitted.listing

    def end(self, report: TickReport) -> None:
        if report.ok:
            self._left_ok = self.queue.left

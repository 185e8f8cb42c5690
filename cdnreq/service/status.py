"""What the endpoint, `cdnreq status` and systemd are shown: read from the
daemon's record of its ticks and from the reconciler's snapshot, never from
the reconciler's live state."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdnreq import __version__
from cdnreq.explain import iso
from cdnreq.reconcile.guardrun import held_reason, held_removals
from cdnreq.reconcile.snapshot import Snapshot
from cdnreq.reconcile.tick import TickReport

# /status counts the instances by phase at most this often (a walk over the fleet)
STATUS_COUNT_S = 1.0


@dataclass
class TickHistory:
    """The last tick, the last success and the one count of failed ticks in
    a row (the metrics and /status both read it)."""

    last: TickReport | None = None
    last_success_at: float | None = None
    failed_in_a_row: int = 0

    def record(self, report: TickReport, now: float) -> None:
        self.last = report
        if report.ok:
            self.failed_in_a_row = 0
            self.last_success_at = now
        else:
            self.failed_in_a_row += 1


def readiness(history: TickHistory, tick_interval_s: float, now: float) -> tuple[bool, dict[str, Any]]:
    """Ready once a tick succeeded recently; a hold is shown, not a failure."""
    limit = 3 * tick_interval_s
    last = history.last
    if last is None:
        return False, {"ready": False, "reason": "the first tick has not finished"}
    if not last.ok:
        reason = f"the last {history.failed_in_a_row} tick(s) failed: {last.error}"
        return False, {"ready": False, "reason": reason, "last_success_at": iso(history.last_success_at)}
    assert history.last_success_at is not None
    if now - history.last_success_at > limit:
        return False, {
            "ready": False,
            "reason": f"no successful tick for more than {limit:g} s",
            "last_success_at": iso(history.last_success_at),
        }
    why: dict[str, Any] = {"ready": True, "last_success_at": iso(history.last_success_at)}
    held = held_reason(last)
    if held is not None:  # serving goes on: a hold is for an operator to see, not a failure
        why["reason"] = held
    return True, why


class PacedSnapshot:
    """The reconciler's snapshot taken at most once per STATUS_COUNT_S: it
    walks the whole fleet on the event loop, and a flood of /status must not
    stall the ticks."""

    def __init__(self, take: Callable[[], Snapshot]):
        self.take = take
        self._taken: tuple[float, Snapshot] | None = None

    def __call__(self) -> Snapshot:
        now = time.monotonic()
        if self._taken is None or not 0 <= now - self._taken[0] < STATUS_COUNT_S:
            self._taken = (now, self.take())
        return self._taken[1]


def status_view(
    history: TickHistory, snapshot: Snapshot, *, tick_interval_s: float, progress: dict, config: dict
) -> dict[str, Any]:
    ready, why = readiness(history, tick_interval_s, time.time())
    return {
        "version": __version__,
        "pid": os.getpid(),
        "ready": ready,
        "readiness": why,
        "instances": dict(snapshot.phases),
        "consecutive_failed_ticks": history.failed_in_a_row,
        "held_updates": history.last.held_updates if history.last else None,
        "held_removals": held_removals(history.last),
        "tick_interval_s": tick_interval_s,
        "progress": progress,
        "config": config,
    }


def status_line(report: TickReport) -> str:
    """One line for `systemctl status`."""
    done = ", ".join(f"{n} {k}" for k, n in sorted(report.results.items())) or "nothing to do"
    if report.ok:
        waiting = f"; {report.waiting_admission} new instances wait" if report.waiting_admission else ""
        return f"tick {report.id} ok in {report.duration_s:.2f} s: {done}{waiting}"
    if report.interrupted:
        return f"tick {report.id} interrupted after {report.duration_s:.2f} s: {done}"
    return f"tick {report.id} FAILED after {report.duration_s:.2f} s: {report.error}"

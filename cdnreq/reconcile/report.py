"""What one tick did, as the log, the ticks table, /status and systemd see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INTERRUPTED = "interrupted"  # the ticks table's result of a tick stopped mid-way


@dataclass
class TickReport:
    id: int
    started_at: float
    ok: bool = False
    duration_s: float = 0.0
    planned: dict[str, int] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)
    master_calls: dict[str, int] = field(default_factory=dict)
    hold_reason: str | None = None
    held_removals: int = 0
    held_updates: dict[str, Any] | None = None  # cdnreq/reconcile/guardrun.py held_view
    removals_fingerprint: str | None = None  # of the held removals, for `cdnreq approve --fingerprint`
    error: str | None = None
    shortages: dict[str, int] = field(default_factory=dict)  # failures for lack of local resources
    interrupted: bool = False  # stopped mid-way: some planned work was not done (see INTERRUPTED)
    waiting_admission: int = 0  # never-seen instances left for the next tick (decide/admission.py)
    admit_again: bool = False  # ... and the next tick should start at once to take them on

    def summary(self) -> dict[str, Any]:
        """The tick in one log line: zero counts and empty fields left out."""
        summary: dict[str, Any] = {
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "planned": {k: v for k, v in self.planned.items() if v},
            "results": self.results,
            "master_calls": self.master_calls,
            "hold_reason": self.hold_reason,
            "held_removals": self.held_removals or None,
            "removals_fingerprint": self.removals_fingerprint,
            "held_updates": self.held_updates,
            "error": self.error,
            "shortages": self.shortages,
            "interrupted": self.interrupted or None,
            "waiting_admission": self.waiting_admission or None,
        }
        return {k: v for k, v in summary.items() if v is not None and v != {}}

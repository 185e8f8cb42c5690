"""What the running tick is doing, or what the last one did.

Operators ask three questions without wanting to read logs: is a tick running,
how far along is it (which phase, how many of how many, how long until that
phase is done), and did the last tick work? `Progress` answers them for
`GET /status` and `cdnreq status`.

It is plain data plus times the caller passes in: no I/O, no clock of its own,
so tests drive it with a fake clock and the daemon with `time.time()` (wall
clock seconds since the epoch, since the answer shows dates). `advance()` sits
in the per-instance loops (up to 100,000 calls a tick), so it is one attribute
increment on the current phase, nothing more; all the arithmetic happens in
`snapshot()`, which runs only when someone asks.

A tick goes through these phases, in this order (`PHASES`); it may skip some:
listing, validating, dns, planning, executing, committing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["PHASES", "Progress"]

PHASES = ("listing", "validating", "dns", "planning", "executing", "committing")


class _Phase:
    __slots__ = ("name", "total", "done", "started_at", "finished_at")

    def __init__(self, name: str, total: int | None, started_at: float):
        self.name = name
        self.total = total
        self.done = 0
        self.started_at = started_at
        self.finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "done": self.done,
            "total": self.total,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


class _Last:
    __slots__ = ("tick", "ok", "finished_at", "duration_s", "summary")

    def __init__(self, tick: int, ok: bool, finished_at: float, duration_s: float, summary: dict):
        self.tick = tick
        self.ok = ok
        self.finished_at = finished_at
        self.duration_s = duration_s
        self.summary = summary


class Progress:
    """The progress of the current tick (or of the last one, once finished).

    Calls: `start_tick`, then `phase` for each phase with `advance` calls in
    between, then `finish_tick`. Out-of-order calls never raise: progress
    reporting must not break a tick. `advance` before any phase counts into
    a throw-away phase; a new `start_tick` while one runs replaces it.
    """

    def __init__(self) -> None:
        self._running = False
        self._tick: int | None = None
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._phases: list[_Phase] = []
        # advance() writes here; a sink until the first phase() of a tick.
        self._current = _Phase("", None, 0.0)
        self._last: _Last | None = None

    # -- the tick's side: cheap writes -----------------------------------

    def start_tick(self, tick_id: int, now: float) -> None:
        self._running = True
        self._tick = tick_id
        self._started_at = now
        self._finished_at = None
        self._phases = []
        self._current = _Phase("", None, now)

    def phase(self, name: str, total: int | None, now: float) -> None:
        """Ends the current phase (if any) and starts `name` with `total`
        items to do (None when not known in advance)."""
        if self._phases:
            self._phases[-1].finished_at = now
        self._current = _Phase(name, total, now)
        self._phases.append(self._current)

    def advance(self, n: int = 1) -> None:
        self._current.done += n

    def finish_tick(self, ok: bool, summary: dict, now: float) -> None:
        if self._phases and self._phases[-1].finished_at is None:
            self._phases[-1].finished_at = now
        started = self._started_at if self._started_at is not None else now
        self._running = False
        self._finished_at = now
        self._last = _Last(
            tick=self._tick if self._tick is not None else 0,
            ok=bool(ok),
            finished_at=now,
            duration_s=max(0.0, now - started),
            summary=dict(summary),
        )

    # -- the reader's side -------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready state. While a tick runs, its phases and the current
        phase's ETA; between ticks, the phases of the last tick (eta_s null).
        Before the first tick, tick/started_at/phase are null."""
        current = self._phases[-1] if self._phases else None
        if self._started_at is None:
            elapsed = None
        elif self._running:
            elapsed = _round(max(0.0, now - self._started_at))
        else:
            elapsed = _round(max(0.0, (self._finished_at or now) - self._started_at))
        last = self._last
        return {
            "running": self._running,
            "tick": self._tick,
            "started_at": _iso(self._started_at),
            "phase": current.name if current is not None else None,
            "phases": [p.as_dict() for p in self._phases],
            "elapsed_s": elapsed,
            "eta_s": _eta(current, now) if self._running else None,
            "last": None
            if last is None
            else {
                "tick": last.tick,
                "ok": last.ok,
                "finished_at": _iso(last.finished_at),
                "duration_s": _round(last.duration_s),
                "summary": last.summary,
            },
        }


def _eta(phase: _Phase | None, now: float) -> float | None:
    """Seconds left in `phase` at its rate so far; None when it cannot be
    told (no total, nothing done yet, no time elapsed)."""
    if phase is None or phase.total is None:
        return None
    left = phase.total - phase.done
    if left <= 0:
        return 0.0
    elapsed = now - phase.started_at
    if phase.done <= 0 or elapsed <= 0:
        return None
    return _round(left * elapsed / phase.done)


def _round(seconds: float) -> float:
    return round(seconds, 3)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return (
        datetime.fromtimestamp(t, timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )

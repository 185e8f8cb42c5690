"""What the daemon's observers (the status view, the metrics) may read of
the reconciler: a value taken between ticks, never its live state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdnreq.model import Record


@dataclass(frozen=True)
class Snapshot:
    """Instances by phase and hosts held, as the reconciler knows them;
    `loaded` is False before the first load or after a failure that made it
    drop its copy of the store (the next tick reads it again)."""

    loaded: bool = False
    phases: Mapping[str, int] = field(default_factory=dict)
    hosts: int = 0
    hosts_failing: int = 0


def snapshot_of(
    known: Mapping[Any, Record] | None, claims: Iterable[Any] | None, asleep: Mapping[str, int] | None = None
) -> Snapshot:
    """Count once; the caller decides how often (a count walks the fleet).
    `asleep`: the sleeping instances by phase (reconcile/sleepers.py)."""
    if known is None:
        return Snapshot()
    held = list(claims) if claims is not None else []
    phases = Counter(r.phase.value for r in known.values())
    phases.update(asleep or {})
    return Snapshot(
        loaded=True,
        phases=dict(phases),
        hosts=len(held),
        hosts_failing=sum(1 for c in held if c.failing_since is not None),
    )

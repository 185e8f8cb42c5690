"""How the figures grow with the fleet: per-instance slopes between the sizes
measured, and a straight-line projection to 1,000,000 instances.

A projection from the last slope assumes the cost stays linear past the
largest size measured; the README says what would bound it instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROJECT_TO", "scale", "scale_text"]

PROJECT_TO = 1_000_000

# (label, scenario, field, unit, per-instance factor): the slope is printed
# in the unit times the factor per instance (µs or bytes per instance)
METRICS: tuple[tuple[str, str, str, str, float], ...] = (
    ("idle tick wall", "idle", "wall_s", "s", 1e6),
    ("idle tick peak RSS", "idle", "peak_rss_mb", "MB", 1e6),
    ("start-up tick wall", "startup", "wall_s", "s", 1e6),
    ("start-up tick peak RSS", "startup", "peak_rss_mb", "MB", 1e6),
    ("restarted idle tick wall", "restarted_idle", "wall_s", "s", 1e6),
    ("restarted idle peak RSS", "restarted_idle", "peak_rss_mb", "MB", 1e6),
    ("restarted, held between ticks", "restarted_idle", "rss_mb", "MB", 1e6),
    ("cold start (cdnreq once)", "cold_once", "process_s", "s", 1e6),
    ("cold start peak RSS", "cold_once", "peak_rss_mb", "MB", 1e6),
    ("first reconcile wall", "first", "wall_s", "s", 1e6),
    ("first reconcile peak RSS", "first", "peak_rss_mb", "MB", 1e6),
)
SLOPE_UNIT = {"s": "µs/instance", "MB": "bytes/instance"}


def scale(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per metric: the value at each size, the slope between consecutive
    sizes, and the projection at PROJECT_TO from the largest size and the
    last slope (None with fewer than two sizes)."""
    sizes = sorted(int(n) for n in results.get("sizes", {}))
    rows: list[dict[str, Any]] = []
    for label, scenario, field, unit, factor in METRICS:
        points = []
        for n in sizes:
            r = results["sizes"][str(n)].get("scenarios", {}).get(scenario)
            if r and r.get("ok") and isinstance(r.get(field), (int, float)):
                points.append((n, float(r[field])))
        if not points:
            continue
        slopes = [
            {"from": a, "to": b, "per_instance": (vb - va) / (b - a) * factor}
            for (a, va), (b, vb) in zip(points, points[1:])
        ]
        projected = None
        if slopes and points[-1][0] < PROJECT_TO:
            n, value = points[-1]
            projected = value + slopes[-1]["per_instance"] / factor * (PROJECT_TO - n)
        rows.append({
            "metric": label, "unit": unit, "slope_unit": SLOPE_UNIT[unit],
            "values": {str(n): v for n, v in points}, "slopes": slopes, "projected": projected,
        })  # fmt: skip
    return rows


def scale_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "scale: nothing measured"
    lines = [f"scale (slopes between sizes; projection to {PROJECT_TO:,} from the last slope):"]
    for row in rows:
        values = ", ".join(f"{int(n):,}: {v:.2f} {row['unit']}" for n, v in row["values"].items())
        slopes = ", ".join(
            f"{s['from']:,}->{s['to']:,}: {s['per_instance']:.1f} {row['slope_unit']}" for s in row["slopes"]
        ) or "one size only"
        projected = f"; at {PROJECT_TO:,}: {row['projected']:.1f} {row['unit']}" if row["projected"] is not None else ""
        lines.append(f"  {row['metric']}: {values}; {slopes}{projected}")
    return "\n".join(lines)

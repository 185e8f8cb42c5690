"""``python -m bench large``: the daemon's memory with large parameters.

Issue 10, item 2: a listing of 10,000 instances, each with about 64 KiB of
parameters (the [validation].max_parameters_bytes default; unknown keys of
4,000 characters, a certificate chain's worth each), must not take the daemon
past 2 GB. The master double runs in its own process; ``cdnreq run`` runs as
a child, stopped after each tick (bench/daemonproc.py). Three ticks: the
first reconcile (every instance requested with its 64 KiB), the read-backs
(every entry read back, 64 KiB each) and an idle tick. For each, the tick's
wall time and the daemon's peak RSS (VmHWM, reset before the tick).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.daemonproc import DaemonProcess, daemon_config
from bench.double.process import DoubleProcess

LIMIT_MB = 2048


def run(customers: int, parameter_bytes: int, concurrency: int, workdir: Path, piece: int = 4000) -> dict[str, Any]:
    results: dict[str, Any] = {"customers": customers, "parameter_bytes": parameter_bytes,
                               "parameter_piece": piece, "ticks": []}
    with DoubleProcess(customers=customers, parameter_bytes=parameter_bytes, parameter_piece=piece) as double:
        database = workdir / "cdnreq.db"
        config = daemon_config(
            workdir / "cdnreq.toml", master_url=double.url, database=database,
            nameserver="127.0.0.1:9", concurrency=concurrency, tick_interval_s=1.0,
        )
        daemon = DaemonProcess(config, database, workdir / "cdnreq.log").start()
        try:
            for name in ("first reconcile", "read-backs", "idle"):
                daemon.reset_peak()
                line = daemon.next_tick()
                memory = daemon.memory()
                tick = {
                    "tick": name, "ok": line.get("ok"), "duration_s": line.get("duration_s"),
                    "peak_rss_mb": round(memory["VmHWM"] / 1024), "rss_mb": round(memory["VmRSS"] / 1024),
                    "planned": line.get("planned"), "error": line.get("error"),
                }
                results["ticks"].append(tick)
                print(f"{name:16} ok={tick['ok']} {tick['duration_s']} s, peak RSS {tick['peak_rss_mb']} MB,"
                      f" planned {tick['planned']}", file=sys.stderr, flush=True)
        finally:
            daemon.stop()
    results["peak_rss_mb"] = max(t["peak_rss_mb"] for t in results["ticks"])
    results["under_limit"] = results["peak_rss_mb"] < LIMIT_MB and all(t["ok"] for t in results["ticks"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench large", description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--parameter-bytes", type=int, default=65_000, help="about this much JSON each")
    parser.add_argument("--parameter-piece", type=int, default=4000,
                        help="characters in each padding key's value: 4000 (a certificate chain), or a few"
                        " (thousands of small keys, the costliest as Python objects)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdnreq-bench-large-") as tmp:
        results = run(args.customers, args.parameter_bytes, args.concurrency, Path(tmp), args.parameter_piece)
    verdict = "under" if results["under_limit"] else "NOT under"
    print(f"{args.customers} instances x ~{args.parameter_bytes} bytes of parameters in keys of"
          f" {args.parameter_piece} characters: daemon peak RSS "
          f"{results['peak_rss_mb']} MB, {verdict} {LIMIT_MB} MB")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if results["under_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())

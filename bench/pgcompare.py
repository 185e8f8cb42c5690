"""``python -m bench pg``: the size scenarios on SQLite and on PostgreSQL, side by side.

Issue 15: "bench reports the idle tick and the first reconcile at 100,000 on
PostgreSQL beside SQLite (target: idle tick <= 2x SQLite's)". For each size
and each engine, the set-up of ``python -m bench`` (bench/scenarios.py:
challenges stored through the engine, nsd with 90% of the TXT records, the
master double in its own process) and the real ``cdnreq run`` stopped
between ticks (bench/daemonproc.py), one measured tick each:

* the first reconcile (everything new);
* the next tick (every new entry read back once);
* idle ticks (nothing changed; the median is reported);
* the start-up tick of the daemon restarted on the converged store (on
  PostgreSQL a new leader reads the store afresh when it takes over, so this
  is also what a fail-over's first tick costs).

PostgreSQL is a throw-away server on loopback (bench/pgstore.py), durable by
default, one node (the lease is held all along). Its CPU (the postmaster and
its backends, from /proc) is reported beside the daemon's: on SQLite that
work is in the daemon's own process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import sniff
from bench.measure import Probes, measure
from bench.nsd import NsdUnavailable, ensure_nsd
from bench.pgstore import ENGINES, data_size_mb, parse_engines, parse_settings, sqlite_size_mb
from bench.pgreport import comparison, comparison_text, engine_targets
from bench.report import log, targets_text
from bench.runner import _write, machine, versions
from bench.scenarios import MISSING, Options, SizeRun

__all__ = ["EngineRun", "main", "run"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, children: bool = False) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / _CLK_TCK


def server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster (with its reaped
    children's) and every backend still running."""
    total = _proc_cpu(postmaster, children=True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                total += _proc_cpu(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


class StoreProbes(Probes):
    """The usual probes, and the PostgreSQL server's CPU over the tick."""

    def __init__(self, *args: Any, postmaster: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.postmaster = postmaster
        self._cpu = 0.0

    def _server_cpu(self) -> float:
        try:
            return server_cpu(self.postmaster) if self.postmaster else 0.0
        except OSError:
            return 0.0

    def reset(self) -> None:
        super().reset()
        self._cpu = self._server_cpu()

    def read(self) -> dict[str, Any]:
        found = super().read()
        if self.postmaster:
            found["store_cpu_s"] = round(self._server_cpu() - self._cpu, 3)
        return found


def _from_spawn(daemon: Any, tick: dict[str, Any], name: str) -> dict[str, Any]:
    """A first tick counted from the daemon's spawn to its end: SQLite loads the
    store before the daemon logs "started", a PostgreSQL node when it takes the
    lease, inside its first tick; from the spawn, both count the same work."""
    wall = daemon.last_tick_at - daemon.started_at if daemon.last_tick_at and daemon.started_at else None
    return {"scenario": name, "ok": tick["ok"], "tick": tick["tick"], "wall_s": round(wall, 3) if wall else None,
            "cpu_s": tick.get("cpu_s_since_spawn"), "store_cpu_s": tick.get("store_cpu_s"),
            "peak_rss_mb": tick["peak_rss_mb"], "ready_after_s": tick.get("ready_after_s")}


class EngineRun(SizeRun):
    """One size on one engine: the first reconcile, the read-back, idle ticks, the start-up tick."""

    def _run(self) -> None:
        n, scenarios = self.n, self.result["scenarios"]
        self._setup()
        config = self._config("cdnreq.toml", self.nsd.nameserver)
        pg = self.pg
        probes = StoreProbes(self.double, self.sniffer, profiler=self.profiler,
                             prefix=f"{self.options.store}-{n}-",
                             postmaster=pg.server.process.pid if pg is not None else None)
        probes.reset()
        daemon = self._daemon(config, self.database, "daemon-1.log", "first reconcile")
        scenarios["first"] = measure(daemon, probes, f"{self.options.store}: first reconcile", n, first=True)
        scenarios["first_spawn"] = _from_spawn(daemon, scenarios["first"], "first reconcile, from spawn")
        scenarios["readback"] = measure(daemon, probes, f"{self.options.store}: next tick (read-back)", n)
        self._idle(daemon, probes, "idle", "idle")
        self._stop(daemon)
        probes.reset()
        daemon = self._daemon(config, self.database, "daemon-2.log", "start-up tick")
        scenarios["startup"] = measure(daemon, probes, f"{self.options.store}: start-up tick", n, first=True)
        scenarios["startup_spawn"] = _from_spawn(daemon, scenarios["startup"], "start-up tick, from spawn")
        self._idle(daemon, probes, "restarted_idle", "restarted, idle")
        self._stop(daemon)
        self.result["store"]["size_mb"] = data_size_mb(pg) if pg is not None else sqlite_size_mb(self.database)

    def _idle(self, daemon: Any, probes: Probes, key: str, label: str) -> None:
        name = f"{self.options.store}: {label}"
        idle = [measure(daemon, probes, f"{name} #{k + 1}", self.n) for k in range(self.options.idle_ticks)]
        median = sorted(idle, key=lambda r: r["wall_s"])[len(idle) // 2]
        self.result["scenarios"][f"{key}_all"] = idle
        self.result["scenarios"][key] = {**median, "scenario": f"{name} (median of {len(idle)})",
                                         "peak_rss_mb": max(r["peak_rss_mb"] for r in idle)}


def run(options: Options, engines: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": machine(),
        "settings": {"concurrency": options.concurrency, "tick_interval_s": options.tick_interval_s,
                     "idle_ticks": options.idle_ticks, "missing_txt_fraction": 1 / MISSING,
                     "engines": engines, "pg_settings": options.pg_settings},
        "runs": {}, "notes": [],
    }
    nsd_executable = ensure_nsd(log=log)
    results["versions"] = versions(nsd_executable)
    can_sniff = options.sniff and sniff.available()
    base = options.workdir or Path(tempfile.mkdtemp(prefix="cdnreq-bench-pg-"))
    results["workdir"] = str(base)
    log(f"work directory {base}")
    try:
        for n in options.sizes:
            for engine in engines:
                workdir = base / f"n{n}-{engine}"
                workdir.mkdir(parents=True, exist_ok=False)
                began = time.perf_counter()
                engine_options = dataclasses.replace(options, store=engine)
                load = [round(x, 2) for x in os.getloadavg()]
                result = EngineRun(n, engine_options, workdir, nsd_executable, can_sniff).run()
                result["bench_seconds"] = round(time.perf_counter() - began, 1)
                result["loadavg"] = {"before": load, "after": [round(x, 2) for x in os.getloadavg()]}
                results["runs"].setdefault(str(n), {})[engine] = result
                _write(options.out, results)
    finally:
        results["comparison"] = comparison(results)
        results["targets"] = engine_targets(results)
        _write(options.out, results)
        if not options.keep:
            shutil.rmtree(base, ignore_errors=True)
            results["workdir"] = None
    return results


def _parser() -> argparse.ArgumentParser:
    from bench.__main__ import _sizes

    def typed(parse):
        def convert(text: str):
            try:
                return parse(text)
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None
        return convert

    parser = argparse.ArgumentParser(prog="python -m bench pg", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[10000, 100000],
                        help="customers per run, comma-separated (default 10000,100000)")
    parser.add_argument("--store", type=typed(parse_engines), default=list(ENGINES),
                        help="engines, in this order (default sqlite,postgresql)")
    parser.add_argument("--out", type=Path, default=Path("bench-pg-results.json"),
                        help="where the JSON results go (default bench-pg-results.json)")
    parser.add_argument("--idle-ticks", type=int, default=10, help="idle ticks measured (median reported; default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="[daemon].concurrency (default 8)")
    parser.add_argument("--pg-settings", type=typed(parse_settings), default={}, metavar="K=V,...",
                        help="PostgreSQL settings over the durable defaults (e.g. synchronous_commit=off)")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs)")
    parser.add_argument("--no-sniff", action="store_true", help="do not count DNS datagrams on lo")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = Options(sizes=args.sizes, out=args.out, concurrency=args.concurrency,
                      idle_ticks=max(1, args.idle_ticks), workdir=args.workdir,
                      keep=args.keep or args.workdir is not None, sniff=not args.no_sniff,
                      pg_settings=args.pg_settings)
    try:
        results = run(options, args.store)
    except NsdUnavailable as error:
        print(f"python -m bench pg: nsd is needed: {error}", file=sys.stderr)
        return 1
    m = results["machine"]
    print(f"\ncdnreq on SQLite and PostgreSQL, {results['date']}, {m['nproc']} CPUs ({m['cpu_model']}), "
          f"{m['memory_mb']} MB, Python {m['python']}, cdnreq {results['versions'].get('git', '?')}\n")
    print(comparison_text(results))
    print("\nTargets:")
    print(targets_text(results["targets"]))
    print(f"\nresults: {options.out}")
    failed = any(r.get("error") for by_engine in results["runs"].values() for r in by_engine.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

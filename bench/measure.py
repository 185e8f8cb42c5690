"""One tick of the daemon, measured: what is read around it and what is derived from it.

:func:`measure` applies a change while the daemon is stopped, lets it run
one tick, and reads its CPU time and peak RSS (/proc), the master calls (the
double's counters and the daemon's own), and the DNS traffic (the sniffer on
``lo``, the relay's counters) through :class:`Probes`; then derives the
rates. :func:`versus` sets a tick beside a bare client doing the same work.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from bench import child, sniff
from bench.baselines import same_work
from bench.daemonproc import DaemonProcess, cdnreq_command, memory_kb
from bench.double.process import DoubleProcess
from bench.double.wire import ERROR, GET, LIST_HOSTED, PUBLISH, REQUEST
from bench.profile import PySpy
from bench.relay.process import RelayProcess
from bench.report import log

__all__ = ["Probes", "measure", "measure_once", "versus"]

SHORT = {LIST_HOSTED: "list", REQUEST: "request", GET: "get", PUBLISH: "publish", ERROR: "error"}


class Probes:
    """What is read around each tick: the double's counters, the sniffer, the relay."""

    def __init__(self, double: DoubleProcess | None = None, sniffer: sniff.Sniffer | None = None,
                 relay: RelayProcess | None = None, profiler: PySpy | None = None, prefix: str = ""):
        self.double, self.sniffer, self.relay = double, sniffer, relay
        self.profiler, self.prefix = profiler, prefix

    def reset(self) -> None:
        if self.double is not None:
            self.double.control("reset_counts")
        if self.sniffer is not None:
            self.sniffer.reset()
        if self.relay is not None:
            self.relay.reset()

    def read(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.double is not None:
            found["master_calls"] = {SHORT.get(k, k): v for k, v in
                                     self.double.control("counts", method="GET")["calls"].items()}
        if self.sniffer is not None:
            found["dns_wire"] = self.sniffer.window()
        if self.relay is not None:
            stats = self.relay.stats()
            first, last = stats["first_query_at"], stats["last_answer_at"]
            stats["seconds"] = last - first if first is not None and last is not None else None
            found["relay"] = stats
        return found


def measure(daemon: DaemonProcess, probes: Probes, name: str, listed: int,
            change: Callable[[], Any] | None = None, first: bool = False,
            timeout_s: float = 7200) -> dict[str, Any]:
    """One tick: apply `change` while the daemon is stopped, let it tick, read everything.

    `first`: the daemon's first tick since it started (it was not stopped
    before it: its CPU is counted from the "started" log line, and its peak
    RSS is the process's, load included).
    """
    changed = change() if change is not None else None
    if not first:
        if probes.profiler is not None:
            probes.profiler.start(daemon.pid, f"{probes.prefix}{name}")
        probes.reset()
        peak_reset = daemon.reset_peak()
        cpu_before = daemon.cpu()
    else:
        peak_reset = False
        cpu_before = daemon.cpu_at_ready or 0.0
    line = _through_admission(daemon, daemon.next_tick(timeout_s), timeout_s)
    cpu_after = daemon.cpu()
    memory = daemon.memory()
    if probes.profiler is not None:
        probes.profiler.stop()
    tick = int(line.get("tick", 0))
    read = probes.read()
    result: dict[str, Any] = {
        "scenario": name,
        "tick": tick,
        "ok": bool(line.get("ok")),
        "listed": listed,
        "wall_s": float(line.get("duration_s", float("nan"))),
        "cpu_s": round(cpu_after - cpu_before, 3),
        "peak_rss_mb": round(memory.get("VmHWM", 0) / 1024, 1),
        "rss_mb": round(memory.get("VmRSS", 0) / 1024, 1),
        "peak_is_process_lifetime": not peak_reset,
        "planned": line.get("planned", {}),
        "results": line.get("results", {}),
        "daemon_master_calls": {SHORT.get(k, k): v for k, v in (line.get("master_calls") or {}).items()},
        "error": line.get("error"),
        "change": _brief(changed),
        **read,
    }
    if "admission_ticks" in line:  # a burst over [daemon].admit_per_tick: the ticks that took it on
        result["admission_ticks"] = line["admission_ticks"]
    if first:
        result["cpu_s_since_spawn"] = round(cpu_after, 3)
        result["ready_after_s"] = round(daemon.ready_after_s or 0.0, 3)
    later = daemon.later_ticks(tick)
    if later:
        result["overlap"] = ("the next tick began before the daemon was stopped: CPU, calls and DNS "
                             "counts may include its first milliseconds")
    _derive(result)
    log(f"  {name}: tick {tick} {'ok' if result['ok'] else 'FAILED'} in {result['wall_s']:.3f} s, "
        f"cpu {result['cpu_s']:.2f} s, peak {result['peak_rss_mb']} MB, calls {_calls(result)}, "
        f"dns {_dns_brief(result)}")
    return result


def measure_once(config: Path, probes: Probes, name: str, listed: int, log_path: Path,
                 timeout_s: float = 600) -> dict[str, Any]:
    """A cold start: `cdnreq once` as a new process on the store (no daemon
    running), from spawn to exit. Its CPU time is the process's own (wait4),
    the interpreter's start and the store's load included. Its peak RSS is
    VmHWM, read until it exits: wait4's ru_maxrss would count the pages of
    the benchmark itself, which the child holds between fork and exec."""
    probes.reset()
    began = time.perf_counter()
    with open(log_path, "wb") as out:
        process = child.spawn([*cdnreq_command(), "once", "--config", str(config)],
                              stdout=out, stderr=subprocess.STDOUT)
        if probes.profiler is not None:  # from spawn to exit (--profile: investigation only)
            probes.profiler.start(process.pid, f"{probes.prefix}{name}")
        deadline = began + timeout_s
        peak_kb = 0
        while True:  # wait4 for this child's own rusage; polled so a hung run is killed
            try:
                peak_kb = max(peak_kb, memory_kb(process.pid).get("VmHWM", 0))
            except OSError:
                pass  # exiting: its last peak was read a moment ago
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - began
    if probes.profiler is not None:
        probes.profiler.stop()
    line = _tick_line(log_path)
    result: dict[str, Any] = {
        "scenario": name,
        "tick": int(line.get("tick", 0)),
        "ok": bool(line.get("ok")) and process.returncode == 0,
        "exit_code": process.returncode,
        "listed": listed,
        "wall_s": float(line.get("duration_s", float("nan"))),
        "process_s": round(elapsed, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_is_process_lifetime": True,
        "planned": line.get("planned", {}),
        "results": line.get("results", {}),
        "daemon_master_calls": {SHORT.get(k, k): v for k, v in (line.get("master_calls") or {}).items()},
        "error": line.get("error"),
        **probes.read(),
    }
    _derive(result)
    log(f"  {name}: exit {process.returncode} after {elapsed:.3f} s (its tick {result['wall_s']:.3f} s), "
        f"cpu {result['cpu_s']:.2f} s, peak {result['peak_rss_mb']} MB, calls {_calls(result)}, "
        f"dns {_dns_brief(result)}")
    return result


def _through_admission(daemon: DaemonProcess, line: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The tick, and the ticks that follow it at once while new instances wait
    for admission ([daemon].admit_per_tick), as one: their durations, counts
    and calls summed, the last one's id (the peak RSS spans them all)."""
    lines = [line]
    while lines[-1].get("ok") and lines[-1].get("waiting_admission"):
        lines.append(daemon.next_tick(timeout_s))
    if len(lines) == 1:
        return line
    merged = dict(lines[-1])
    merged["duration_s"] = sum(float(one.get("duration_s", 0.0)) for one in lines)
    for key in ("planned", "results", "master_calls"):
        total: dict[str, int] = {}
        for one in lines:
            for name, n in (one.get(key) or {}).items():
                total[name] = total.get(name, 0) + n
        merged[key] = total
    merged["admission_ticks"] = [{"tick": one.get("tick"), "wall_s": one.get("duration_s"),
                                  "waiting": one.get("waiting_admission", 0)} for one in lines]
    return merged


def _tick_line(log_path: Path) -> dict[str, Any]:
    """The last `tick done` / `tick failed` JSON line of a log; {} when none."""
    found: dict[str, Any] = {}
    for raw in log_path.read_bytes().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") in ("tick done", "tick failed", "tick interrupted"):
            found = line
    return found


def versus(r: dict[str, Any], request_rate: float, publish_rate: float | None) -> None:
    """The tick against a bare client doing the same requests and publications."""
    calls = r.get("master_calls", r["daemon_master_calls"])
    seconds = same_work(calls, request_rate, publish_rate)
    if seconds and r["wall_s"] > 0:
        r["bare_seconds"] = seconds
        r["vs_bare"] = seconds / r["wall_s"]


def _brief(changed: Any) -> Any:
    if isinstance(changed, dict):
        return {k: v for k, v in changed.items() if k != "guids"}
    return changed


def _derive(r: dict[str, Any]) -> None:
    wall = r["wall_s"]
    calls = r.get("master_calls", r["daemon_master_calls"])
    r["master_calls_total"] = sum(calls.values())
    r["calls_per_s"] = r["master_calls_total"] / wall if wall > 0 else None
    r["instances_per_s"] = r["listed"] / wall if wall > 0 else None
    planned = r.get("planned", {})
    r["dns_lookups"] = sum(v for k, v in planned.items() if k.startswith("dns_"))
    wire = r.get("relay") or r.get("dns_wire")
    if wire and wire.get("seconds"):
        answers = wire.get("udp_answers", wire.get("answers", 0))
        r["dns_seconds"] = wire["seconds"]
        r["dns_rate"] = answers / wire["seconds"] if wire["seconds"] > 0 else None


def _calls(r: dict[str, Any]) -> str:
    calls = r.get("master_calls", r["daemon_master_calls"])
    return " ".join(f"{k}={v}" for k, v in sorted(calls.items()) if v) or "none"


def _dns_brief(r: dict[str, Any]) -> str:
    wire = r.get("relay") or r.get("dns_wire") or {}
    queries = wire.get("udp_queries", wire.get("queries"))
    text = f"{r['dns_lookups']} lookups"
    if queries is not None:
        text += f", {queries} queries on the wire"
    if r.get("dns_seconds"):
        text += f" in {r['dns_seconds']:.3f} s ({r['dns_rate']:.0f}/s)"
    return text

"""The benchmark: the real cdnreq daemon against the master double, nsd and slapproxy.

``python -m bench`` runs everything below and prints a table; the results go
to a JSON file. It is not part of the test suite.

For each size N (1,000, 10,000 and 100,000 by default):

1. Set-up, before the daemon starts. A domain secret is written and a
   challenge is issued for each of the N customers
   (:func:`cdnreq.dns.challenge.issue`) and stored in the daemon's database,
   so the tokens are known in advance. nsd serves the zone ``example.`` with
   the TXT records of 90% of them (customers whose index ends in 9 have
   none). The master double runs in its own process with N customers, each
   with ``custom_domain = www.d<i>.example``, and publishes technical
   entries at once (``publish_after = immediately``).
2. Baselines: the double's ceiling (a bare aiohttp client requesting
   min(N, 10,000) entries at the daemon's concurrency) and the DNS ceiling
   (a bare aiodns loop, 256 queries in flight, over the same names the
   daemon asks: both proof names of min(N, 10,000) customers), directly and
   through the 30 ms relay.
3. ``cdnreq run`` as a child process (:mod:`bench.daemonproc`), stopped
   between ticks; the customers are changed on the double while it is
   stopped. Scenarios, one tick each:
   * first reconcile: everything new, DNS in place for 90%;
   * next tick: cdnreq reads each new technical entry back once (``poll``)
     on the tick after its request, so this tick is not idle;
   * idle: nothing changed (three ticks after that, the median is reported);
   * 1% changed (new backend URL), 10% removed (``retention_s = 0``,
     ``max_destroy_fraction = 0.9``: destroyed at once), and the tick after
     the removal (cdnreq confirms destroys with a read);
   * DNS-pending burst: N/10 new customers whose TXT records do not exist;
   * start-up: the daemon restarted, its first tick (store loaded, the
     kept decisions reused, nothing changed); then a cold start: ``cdnreq
     once`` as a new process, from spawn to exit;
   * at 30 ms RTT: restarted with the relay as name server; its start-up
     tick, then a burst bringing the pending challenges to at least 10,000.
4. Against slapproxy (N = 1,000, customers without custom_domain, cdnreq at
   concurrency 1): first reconcile, the tick that forwards the technical
   CDN's answers, and an idle tick; next to a bare client on a fresh
   slapproxy holding the same 1,000 customers (requests, then publications,
   one at a time, with the requester's partition header).

Measured per tick: wall time (the tick's ``duration_s``), CPU time of the
daemon (utime + stime from /proc), its peak RSS during the tick (VmHWM,
reset before the tick), master calls by name (the double's counters, and the
daemon's own count), DNS queries and the time from the first query to the
last answer (counted on ``lo`` by :mod:`bench.sniff`, and by the relay when
it is used), and rates.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import child, sniff
from bench.daemonproc import DNS_IN_FLIGHT
from bench.nsd import NsdUnavailable, ensure_nsd, nsd_version
from bench.report import log, targets
from bench.scale import scale
from bench.scenarios import MISSING, Options, SizeRun, run_slapproxy

__all__ = ["Options", "run"]


# -- the machine and the versions --------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_mb": round(memory_kb / 1024) if memory_kb else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],  # other work on the machine when the run began
    }


def versions(nsd_executable: str | None) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("cdnreq", "aiohttp", "aiodns", "pycares", "aiosqlite", "structlog", "pydantic",
                 "orjson", "dnslib", "prometheus-client", "slapos.core", "jsonschema"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["nsd"] = nsd_version(nsd_executable) if nsd_executable else None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=child.ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=child.ROOT,
                               capture_output=True, text=True).stdout.strip()
        found["git"] = commit + ("+dirty" if dirty else "")
    if os.environ.get("BENCH_GIT_COMMIT"):  # a copy of the tree outside git (git archive): its commit, as told
        found["git"] = os.environ["BENCH_GIT_COMMIT"] + " (told)"
    return found


# -- all of it ---------------------------------------------------------------------------------


def run(options: Options) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": machine(),
        "settings": {
            "concurrency": options.concurrency, "tick_interval_s": options.tick_interval_s,
            "dns_in_flight": DNS_IN_FLIGHT, "relay_delay_ms_each_way": options.delay_ms,
            "idle_ticks": options.idle_ticks, "missing_txt_fraction": 1 / MISSING,
            "publish_after": "immediately", "retention_s": 0, "max_destroy_fraction": 0.9,
            "store": options.store, "pg_settings": options.pg_settings,
        },
        "sizes": {},
        "notes": [],
    }
    nsd_executable = None
    try:
        nsd_executable = ensure_nsd(log=log)
    except NsdUnavailable as error:
        results["notes"].append(f"nsd unavailable, DNS scenarios skipped: {error}")
        log(f"SKIPPING the nsd scenarios: {error}")
    results["versions"] = versions(nsd_executable)
    can_sniff = options.sniff and sniff.available()
    if options.sniff and not can_sniff:
        results["notes"].append("no AF_PACKET socket (not root?): DNS queries on the wire not counted")
    base = options.workdir or Path(tempfile.mkdtemp(prefix="cdnreq-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    results["workdir"] = str(base)
    log(f"work directory {base}")
    try:
        if nsd_executable is not None:
            for n in options.sizes:
                workdir = base / f"n{n}"
                workdir.mkdir(parents=True, exist_ok=False)
                began = time.perf_counter()
                results["sizes"][str(n)] = SizeRun(n, options, workdir, nsd_executable, can_sniff).run()
                results["sizes"][str(n)]["bench_seconds"] = round(time.perf_counter() - began, 1)
                _write(options.out, results)
        if not options.skip_slapproxy:
            (base / "slapproxy").mkdir(exist_ok=True)
            results["slapproxy"] = run_slapproxy(options, base / "slapproxy")
    finally:
        results["targets"] = targets(results)
        results["scale"] = scale(results)
        _write(options.out, results)
        if not options.keep:
            shutil.rmtree(base, ignore_errors=True)
            results["workdir"] = None
    return results


def _write(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)

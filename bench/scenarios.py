"""The scenarios: one size N against the double and nsd, and the slapproxy comparison.

:class:`SizeRun` sets up N customers (challenges stored, the zone written,
nsd and the double started), takes the baselines, then runs the daemon
through the scenarios listed in bench/runner.py, one measured tick each.
:func:`run_slapproxy` compares cdnreq with a bare client on slapproxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.slapproxy import free_port

from bench import listingmem, sniff
from bench.baselines import (
    bare_slapproxy_client, best_of, ceiling, dns_ceiling_child, measure_rtt, publish_ceiling,
)
from bench.daemonproc import DNS_IN_FLIGHT, DaemonProcess, daemon_config
from bench.double.customers import customer_guid
from bench.double.process import DoubleProcess
from bench.measure import Probes, measure, measure_once, versus
from bench.nsd import Nsd, challenge_name, write_zone
from bench.pgstore import PgDatabase
from bench.profile import PySpy
from bench.relay.process import RelayProcess
from bench.report import log

__all__ = ["MISSING", "Options", "SizeRun", "run_slapproxy", "seed_challenges"]

RTT_RANGE_MS = (25.0, 45.0)
MISSING = 10  # every 10th customer (index % 10 == 9) has no TXT record
# PostgreSQL: the lease outlasts the pauses between measured ticks (SIGSTOP), so
# that no tick starts by taking the lease again; renewals as in production.
LEASE_S, RENEW_S = 120.0, 5.0


@dataclass
class Options:
    sizes: list[int] = field(default_factory=lambda: [1000, 10000, 100000])
    out: Path = Path("bench-results.json")
    skip_slapproxy: bool = False
    skip_latency: bool = False
    concurrency: int = 8
    tick_interval_s: float = 1.0
    idle_ticks: int = 3
    delay_ms: float = 15.0
    slapproxy_customers: int = 1000
    workdir: Path | None = None
    keep: bool = False
    profile_dir: Path | None = None  # py-spy profiles of each tick (investigation only)
    sniff: bool = True  # count DNS datagrams on lo (needs root)
    store: str = "sqlite"  # or "postgresql": a throw-away server per size (bench/pgstore.py)
    pg_settings: dict[str, str] = field(default_factory=dict)  # over bench.pgstore.DURABLE


# -- one size ----------------------------------------------------------------------------------


async def _seed(config_path: Path, challenges: list) -> None:
    """Store the challenges through the engine the configuration names, as the daemon opens it."""
    from cdnreq.configfile import load_config
    from cdnreq.store.engines import open_engine

    store = await open_engine(load_config(config_path), lock=True)
    try:
        for start in range(0, len(challenges), 20000):
            await store.commit(challenge_upserts=challenges[start:start + 20000])
    finally:
        await store.close()


def seed_challenges(workdir: Path, count: int, store: dict[str, Any] | None = None) -> tuple[Path, dict[int, str]]:
    """Write the domain secret and store a challenge for customers 0..count-1; their tokens.
    `store`: the `[store]` section (PostgreSQL), else the SQLite file workdir/cdnreq.db."""
    from cdnreq.dns.challenge import issue
    from cdnreq.model import InstanceGuid

    database = workdir / "cdnreq.db"
    secret_path = workdir / "domain-secret"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    secret = secret_path.read_bytes().strip()  # as cdnreq.dns.challenge.load_secret reads it
    now = time.time()
    challenges = [issue(secret, InstanceGuid(customer_guid(i)), f"www.d{i}.example", now) for i in range(count)]
    config = daemon_config(workdir / "seed.toml", master_url="http://127.0.0.1:9", database=database,
                           nameserver="127.0.0.1:9", concurrency=1, tick_interval_s=1.0,
                           extra={"store": store} if store else None)
    asyncio.run(_seed(config, challenges))
    return database, {i: c.token for i, c in enumerate(challenges)}


class SizeRun:
    def __init__(self, n: int, options: Options, workdir: Path, nsd_executable: str, can_sniff: bool):
        self.n = n
        self.options = options
        self.workdir = workdir
        self.nsd_executable = nsd_executable
        self.can_sniff = can_sniff
        self.result: dict[str, Any] = {"n": n, "scenarios": {}, "baselines": {}, "notes": []}
        self._stack = contextlib.ExitStack()
        self.profiler = PySpy(options.profile_dir) if options.profile_dir else None
        self.pg: PgDatabase | None = None  # the store's server, when options.store is postgresql
        if self.profiler is not None and not self.profiler.usable:
            self.result["notes"].append("--profile: py-spy is not installed (pip install py-spy)")
            self.profiler = None

    def run(self) -> dict[str, Any]:
        with self._stack:
            try:
                self._run()
            except Exception as error:
                self.result["error"] = f"{type(error).__name__}: {error}"
                self.result["traceback"] = traceback.format_exc()
                log(f"N={self.n}: FAILED: {error}")
        return self.result

    def _run(self) -> None:
        self.result["listing"] = listingmem.measure(self.n)  # before any other process: alone on the CPU
        log(f"N={self.n}: listing {self.result['listing']}")
        self._setup()
        self._baselines()
        relay = None if self.options.skip_latency else self._relay()
        for key, value in self.result["baselines"].items():
            if "rate" in value:
                log(f"N={self.n}: baseline {key}: {value['rate']:.0f}/s")
        config = self._config("cdnreq.toml", self.nsd.nameserver)
        probes = Probes(self.double, self.sniffer, profiler=self.profiler, prefix=f"{self.n}-")
        listed, burst = self._against_nsd(config, probes)
        self._startup(config, probes, listed)
        if relay is not None:
            self._at_latency(relay, listed, burst)

    def _store_section(self) -> dict[str, Any] | None:
        """`[store]` for PostgreSQL (its server started on first use), None for SQLite."""
        if self.options.store != "postgresql":
            return None
        if self.pg is None:
            self.pg = PgDatabase(self.options.pg_settings).start()
            self._stack.callback(self.pg.stop)
            self.result["store"] = {"engine": "postgresql", "server": self.pg.info()}
            log(f"N={self.n}: PostgreSQL {self.result['store']['server'].get('server_version')} at {self.pg.url}")
        return self.pg.store_section(lease_s=LEASE_S, renew_s=RENEW_S, node_name="bench")

    def _config(self, name: str, nameserver: str) -> Path:
        o = self.options
        store = self._store_section()
        return daemon_config(self.workdir / name, master_url=self.double.url, database=self.database,
                             nameserver=nameserver, concurrency=o.concurrency, tick_interval_s=o.tick_interval_s,
                             extra={"store": store} if store else None)

    def _setup(self) -> None:
        """Challenges stored, the zone written (90% of the records), nsd, the double, the sniffer."""
        n, w = self.n, self.workdir
        self.result.setdefault("store", {"engine": "sqlite"})
        log(f"N={n}: issuing and storing {n} challenges ({self.options.store}), writing the zone")
        began = time.perf_counter()
        self.database, tokens = seed_challenges(w, n, self._store_section())
        nsd_dir = w / "nsd"
        nsd_dir.mkdir()
        write_zone(nsd_dir / "example.zone", ((challenge_name(i), t) for i, t in tokens.items() if i % MISSING != MISSING - 1))
        records = sum(1 for i in tokens if i % MISSING != MISSING - 1)
        self.result["setup"] = {"challenges": n, "txt_records": records, "missing": n - records,
                                "seconds": round(time.perf_counter() - began, 2)}
        self.nsd = nsd = Nsd(nsd_dir, executable=self.nsd_executable).start(probe=challenge_name(0))
        self._stack.callback(nsd.stop)
        log(f"N={n}: nsd on {nsd.nameserver}; starting the master double with {n} customers")
        self.double = double = DoubleProcess(customers=n, domains=True, publish_after="immediately").start(timeout_s=600)
        self._stack.callback(double.stop)
        self.sniffer = None
        if self.can_sniff:
            self.sniffer = sniff.Sniffer(nsd.port).start()
            self._stack.callback(self.sniffer.stop)

    def _baselines(self) -> None:
        """Nothing else running; the DNS ones in a child process, like the daemon,
        so that the sniffer's thread costs them what it costs the daemon."""
        n, o, double, nsd = self.n, self.options, self.double, self.nsd
        sample = min(n, 10000)
        log(f"N={n}: double ceiling ({sample} requests, then publications, at concurrency {o.concurrency}; best of 2)")
        base = self.result["baselines"]
        base["double"] = best_of(2, lambda: asyncio.run(ceiling(double.url, sample, o.concurrency)))
        base["double_publish"] = best_of(2, lambda: asyncio.run(
            publish_ceiling(double.url, [customer_guid(i) for i in range(sample)], o.concurrency)))
        double.control("clear_technical")
        double.control("reset_counts")
        log(f"N={n}: DNS ceiling, bare aiodns, {2 * sample} queries, {DNS_IN_FLIGHT} in flight (best of 3)")
        base["dns"] = best_of(3, lambda: dns_ceiling_child(nsd.nameserver, sample))

    def _relay(self) -> RelayProcess | None:
        """The 30 ms relay in front of nsd, and its baselines; None when its RTT is out of range."""
        n, nsd, sample = self.n, self.nsd, min(self.n, 10000)
        relay = RelayProcess(nsd.address, delay_ms=self.options.delay_ms).start()
        self._stack.callback(relay.stop)
        rtt = measure_rtt(relay.address, challenge_name(0), count=20)
        direct = measure_rtt(nsd.address, challenge_name(0), count=20)
        ok = RTT_RANGE_MS[0] <= rtt["median_ms"] <= RTT_RANGE_MS[1]
        self.result["baselines"]["rtt"] = {"relay": rtt, "direct": direct, "ok": ok,
                                           "range_ms": list(RTT_RANGE_MS)}
        log(f"N={n}: relay RTT median {rtt['median_ms']:.1f} ms (direct {direct['median_ms']:.2f} ms)")
        if ok:
            self.result["baselines"]["dns_relay"] = best_of(
                3, lambda: dns_ceiling_child(f"127.0.0.1:{relay.port}", sample))
            return relay
        self.result["notes"].append(
            f"latency scenario skipped: the relay's RTT is {rtt['median_ms']:.1f} ms, "
            f"outside {RTT_RANGE_MS[0]:g}-{RTT_RANGE_MS[1]:g} ms")
        relay.stop()
        return None

    def _against_nsd(self, config: Path, probes: Probes) -> tuple[int, int]:
        """The daemon, name server nsd: the scenarios one tick each; (customers listed, burst)."""
        n, double, scenarios = self.n, self.double, self.result["scenarios"]
        probes.reset()
        daemon = self._daemon(config, self.database, "daemon-1.log", "first reconcile")
        scenarios["first"] = measure(daemon, probes, "first reconcile", n, first=True)
        versus(scenarios["first"], self.result["baselines"]["double"]["rate"],
               self.result["baselines"]["double_publish"]["rate"])
        # cdnreq reads every new entry back once, on the tick after its request
        scenarios["readback"] = measure(daemon, probes, "next tick (read-back)", n)
        idle = [measure(daemon, probes, f"idle #{k + 1}", n) for k in range(self.options.idle_ticks)]
        scenarios["idle_all"] = idle
        median = sorted(idle, key=lambda r: r["wall_s"])[len(idle) // 2]
        scenarios["idle"] = {**median, "scenario": f"idle (median of {len(idle)})"}
        listed = n
        scenarios["changed"] = measure(daemon, probes, "1% changed", listed,
                                       lambda: double.control("change", {"fraction": 0.01}))
        scenarios["removed"] = measure(daemon, probes, "10% removed", listed - round(listed * 0.10),
                                       lambda: double.control("remove", {"fraction": 0.10}))
        listed -= scenarios["removed"]["change"]["removed"]
        # cdnreq confirms each destroy with a read on the next tick
        scenarios["after_removed"] = measure(daemon, probes, "next tick (after removal)", listed)
        burst = n // 10
        scenarios["burst"] = measure(daemon, probes, "DNS-pending burst", listed + burst,
                                     lambda: double.control("add", {"count": burst}))
        listed += burst
        scenarios["after_burst"] = measure(daemon, probes, "idle after burst", listed)
        self._stop(daemon)
        return listed, burst

    def _startup(self, config: Path, probes: Probes, listed: int) -> None:
        """The daemon restarted on its converged store: its first tick (store
        loaded, nothing changed), then idle ticks (issue 14: the restarted
        daemon's peak through them, and what it holds between them)."""
        probes.reset()
        daemon = self._daemon(config, self.database, "daemon-2.log", "start-up tick")
        scenarios = self.result["scenarios"]
        scenarios["startup"] = measure(daemon, probes, "start-up tick", listed, first=True)
        idle = [measure(daemon, probes, f"restarted, idle #{k + 1}", listed) for k in range(self.options.idle_ticks)]
        if idle:
            median = sorted(idle, key=lambda r: r["wall_s"])[len(idle) // 2]
            scenarios["restarted_idle"] = {
                **median, "scenario": f"restarted, idle (median of {len(idle)})",
                "peak_rss_mb": max(r["peak_rss_mb"] for r in idle),  # the highest of the ticks'
                "rss_mb": idle[-1]["rss_mb"],  # held between ticks, after the last
            }
        self._stop(daemon)
        self.result["scenarios"]["cold_once"] = measure_once(
            config, probes, "cold start (cdnreq once)", listed, self.workdir / "once.log")

    def _at_latency(self, relay: RelayProcess, listed: int, burst: int) -> None:
        """Restarted with the relay as name server: its start-up tick, then a burst."""
        n, double, scenarios = self.n, self.double, self.result["scenarios"]
        pending = (n // MISSING) + burst  # never proven: the missing records, the first burst
        config = self._config("cdnreq-relay.toml", f"127.0.0.1:{relay.port}")
        relay_probes = Probes(double, sniff.Sniffer(relay.port).start() if self.can_sniff else None, relay,
                              profiler=self.profiler, prefix=f"{n}-")
        if relay_probes.sniffer is not None:
            self._stack.callback(relay_probes.sniffer.stop)
        relay_probes.reset()
        daemon = self._daemon(config, self.database, "daemon-3.log", "start-up tick @30ms")
        scenarios["startup_rtt"] = measure(daemon, relay_probes, "start-up tick @30ms", listed, first=True)
        scenarios["startup_rtt"]["pending_challenges"] = pending
        more = max(n // 10, 10000 - pending)
        scenarios["burst_rtt"] = measure(daemon, relay_probes, "DNS-pending burst @30ms", listed + more,
                                         lambda: double.control("add", {"count": more}))
        scenarios["burst_rtt"]["pending_challenges"] = pending + more
        scenarios["burst_rtt"]["new_challenges"] = more
        self._stop(daemon)

    def _daemon(self, config: Path, database: Path, log_name: str, first: str) -> DaemonProcess:
        """Start cdnreq; with --profile, py-spy records from the spawn to the end of the first tick."""
        profiler = self.profiler
        on_spawn = (lambda pid: profiler.start(pid, f"{self.n}-{first} (from spawn)")) if profiler else None
        daemon = DaemonProcess(config, database, self.workdir / log_name, on_spawn=on_spawn,
                               ticks_after=self.pg.ticks_after if self.pg is not None else None)
        self._stack.callback(daemon.kill)
        log(f"N={self.n}: starting cdnreq run ({log_name})")
        return daemon.start()

    def _stop(self, daemon: DaemonProcess) -> None:
        code = daemon.stop()
        if code not in (0, None):
            self.result["notes"].append(f"cdnreq exited with {code} (log {daemon.log_path})")


# -- slapproxy ---------------------------------------------------------------------------------


def _slapproxy_site(workdir: Path, customers: int):
    from devtools.devmaster import Slapproxy, setup_cdn

    proxy = Slapproxy(workdir).start()
    site = setup_cdn(proxy)
    began = time.perf_counter()
    guids = [site.add_customer(f"customer-{i}", {"url": f"https://backend-{i}.example"})
             for i in range(customers)]
    return proxy, site, guids, time.perf_counter() - began


def run_slapproxy(options: Options, workdir: Path) -> dict[str, Any]:
    from devtools.devmaster import write_config

    count = options.slapproxy_customers
    result: dict[str, Any] = {"n": count, "concurrency": 1, "scenarios": {}}
    with contextlib.ExitStack() as stack:
        try:
            # a bare client, on a fresh slapproxy holding the same customers (twice: it is noisy)
            runs = []
            for attempt in (1, 2):
                log(f"slapproxy: a fresh one with {count} customers, for the bare client (run {attempt} of 2)")
                proxy, site, guids, seconds = _slapproxy_site(workdir / f"bare-{attempt}", count)
                try:
                    result["customers_setup_s"] = round(seconds, 2)
                    runs.append(asyncio.run(bare_slapproxy_client(
                        proxy.url, proxy.computer_id, site.requester_partition, count, guids)))
                finally:
                    proxy.stop()
                log(f"slapproxy: bare client {runs[-1]['request_rate']:.1f} requests/s, "
                    f"{runs[-1]['publish_rate']:.1f} publications/s")
            result["bare"] = dict(max(runs, key=lambda r: r["both_rate"]))
            result["bare"]["runs"] = [{k: round(r[k], 2) for k in ("request_rate", "publish_rate", "both_rate")}
                                      for r in runs]

            log(f"slapproxy: a fresh one with {count} customers, for cdnreq")
            proxy, site, guids, _ = _slapproxy_site(workdir / "cdnreq", count)
            stack.callback(proxy.stop)
            database = workdir / "cdnreq" / "cdnreq.db"
            config = write_config(
                workdir / "cdnreq" / "cdnreq.toml", site, database=database,
                daemon={"concurrency": 1, "tick_interval_s": options.tick_interval_s,
                        "listen": f"127.0.0.1:{free_port()}"},
                master={"timeout_s": 60.0},
            )
            daemon = DaemonProcess(config, database, workdir / "cdnreq" / "daemon.log")
            stack.callback(daemon.kill)
            daemon.start()
            probes = Probes()
            scenarios = result["scenarios"]
            scenarios["first"] = measure(daemon, probes, "slapproxy first reconcile", count, first=True)
            versus(scenarios["first"], result["bare"]["request_rate"], result["bare"]["publish_rate"])

            def cdn_publishes() -> dict[str, Any]:
                entries = site.technical_entries()
                for entry in entries:
                    site.publish_as_cdn(entry["instance_guid"], {"domain": f"{entry['title']}.cdn.example"})
                return {"published_by_cdn": len(entries)}

            scenarios["answers"] = measure(daemon, probes, "slapproxy answers forwarded", count, cdn_publishes)
            scenarios["idle"] = measure(daemon, probes, "slapproxy idle", count)
            code = daemon.stop()
            if code not in (0, None):
                result.setdefault("notes", []).append(f"cdnreq exited with {code}")
        except Exception as error:
            result["error"] = f"{type(error).__name__}: {error}"
            result["traceback"] = traceback.format_exc()
            log(f"slapproxy: FAILED: {error}")
    return result

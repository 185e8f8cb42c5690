"""Quick tests of the benchmark's own tools (bench/): the latency relay, the
nsd zone and configuration, the loopback sniffer, the /proc readers and the
runner's bookkeeping. The benchmark itself (python -m bench) is not run here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord

from bench import sniff
from bench.__main__ import _sizes
from bench.daemonproc import cpu_seconds, memory_kb, reset_peak
from bench.nsd import (
    Nsd, challenge_name, find_nsd, nsd_conf_text, write_zone, zone_text,
)
from bench.relay import Relay, parse_address
from bench.baselines import measure_rtt, same_work
from bench.daemonproc import daemon_config
from bench.report import table, targets
from cdnreq.configfile import load_config

DELAY_S = 0.015


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def _udp_echo() -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


class _Client(asyncio.DatagramProtocol):
    def __init__(self):
        self.received: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.received.put_nowait((time.perf_counter(), data))


async def test_relay_delays_each_udp_datagram_both_ways():
    echo, port = await _udp_echo()
    relay = await Relay(("127.0.0.1", port), delay_s=DELAY_S).start()
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        _Client, remote_addr=("127.0.0.1", relay.port))
    try:
        began = time.perf_counter()
        transport.sendto(b"ping")
        at, data = await asyncio.wait_for(client.received.get(), 2)
        assert data == b"ping"
        assert at - began >= 0.028, f"round trip {1000 * (at - began):.1f} ms, expected >= 28 ms"
        assert at - began < 0.5

        # 50 datagrams at once: each is delayed on its own, not one after the other
        began = time.perf_counter()
        for i in range(50):
            transport.sendto(b"n%d" % i)
        got = [await asyncio.wait_for(client.received.get(), 2) for _ in range(50)]
        last = max(at for at, _ in got) - began
        assert sorted(data for _, data in got) == sorted(b"n%d" % i for i in range(50))
        assert 0.028 <= last < 0.25, f"50 datagrams took {1000 * last:.0f} ms: delays are serialised"
        stats = relay.stats()
        assert stats["udp_queries"] == stats["udp_answers"] == 51
        assert stats["first_query_at"] is not None and stats["last_answer_at"] >= stats["first_query_at"]
        assert relay.reset()["udp_queries"] == 0
    finally:
        transport.close()
        await relay.close()
        echo.close()


async def test_relay_delays_tcp_and_keeps_the_order():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = await Relay(("127.0.0.1", port), delay_s=DELAY_S).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        began = time.perf_counter()
        writer.write(b"first ")
        await writer.drain()
        first = await asyncio.wait_for(reader.readexactly(6), 2)
        elapsed = time.perf_counter() - began
        assert first == b"first " and elapsed >= 0.028
        chunks = [b"%03d," % i for i in range(30)]
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(sum(map(len, chunks))), 2)
        assert echoed == b"".join(chunks)
        writer.close()
        assert relay.stats()["tcp_connections"] == 1
    finally:
        await relay.close()
        server.close()


def test_relay_is_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        Relay(("192.0.2.1", 53))
    with pytest.raises(ValueError, match="loopback"):
        Relay(("127.0.0.1", 53), host="0.0.0.0")
    assert parse_address("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_address("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ValueError):
        parse_address("10.0.0.1:53")


# -- the zone and nsd's configuration ------------------------------------------------------


def _tokens(count: int) -> dict[int, str]:
    return {i: f"cdnreq-{i:032d}" for i in range(count)}


def test_zone_holds_90_percent_of_the_challenges():
    tokens = _tokens(100)
    text = zone_text((challenge_name(i), t) for i, t in tokens.items() if i % 10 != 9)
    records = RR.fromZone(text)
    soa = [r for r in records if r.rtype == QTYPE.SOA]
    assert len(soa) == 1 and str(soa[0].rname) == "example."
    assert str(soa[0].rdata).split()[-1] == "0", "negative answers must not be cached (SOA minimum 0)"
    txt = {str(r.rname): str(r.rdata).strip('"') for r in records if r.rtype == QTYPE.TXT}
    assert len(txt) == 90
    for i, token in tokens.items():
        name = f"_slapos-challenge.www.d{i}.example."
        if i % 10 == 9:
            assert name not in txt
        else:
            assert txt[name] == token
    assert all(r.ttl == 0 for r in records), "every record has TTL 0, so no cache hides a lookup"


def test_zone_refuses_names_outside_and_odd_values():
    with pytest.raises(ValueError, match="not in the zone"):
        zone_text([("_slapos-challenge.www.other.test", "x")])
    with pytest.raises(ValueError, match="TXT"):
        zone_text([("a.example", 'quote"inside')])


def test_nsd_conf_listens_on_loopback_only_and_keeps_its_files(tmp_path: Path):
    text = nsd_conf_text(tmp_path, 5353)
    lines = [line.strip() for line in text.splitlines()]
    assert "ip-address: 127.0.0.1@5353" in lines
    assert "port: 5353" in lines
    assert sum(1 for line in lines if line.startswith(("ip-address:", "interface:"))) == 1
    for key in ('username: ""', 'chroot: ""', 'database: ""', "do-ip6: no", "rrl-ratelimit: 0",
                "rrl-whitelist-ratelimit: 0", "control-enable: no"):
        assert key in lines, key
    root = str(tmp_path.resolve())
    for key in ("zonesdir", "pidfile", "xfrdfile", "zonelistfile", "logfile", "xfrdir"):
        value = next(line for line in lines if line.startswith(f"{key}:")).split(":", 1)[1].strip().strip('"')
        assert value.startswith(root), f"{key} {value} is outside the work directory"
    assert 'name: "example"' in lines


def test_nsd_checkconf_accepts_the_configuration(tmp_path: Path):
    checkconf = shutil.which("nsd-checkconf") or ("/usr/sbin/nsd-checkconf" if os.path.exists("/usr/sbin/nsd-checkconf") else None)
    if checkconf is None:
        pytest.skip("nsd is not installed (apt-get install nsd): nsd-checkconf not found; "
                    "python -m bench installs it by itself")
    write_zone(tmp_path / "example.zone", [(challenge_name(1), "cdnreq-x")])
    (tmp_path / "nsd.conf").write_text(nsd_conf_text(tmp_path, 5353))
    done = subprocess.run([checkconf, str(tmp_path / "nsd.conf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_nsd_answers_found_and_missing_challenges(tmp_path: Path):
    if find_nsd() is None:
        pytest.skip("nsd is not installed (apt-get install nsd); python -m bench installs it by itself")
    tokens = _tokens(20)
    write_zone(tmp_path / "example.zone", ((challenge_name(i), t) for i, t in tokens.items() if i % 10 != 9))
    with Nsd(tmp_path).start(probe=challenge_name(0)) as nsd:
        assert nsd.address[0] == "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            for index, expected in ((3, tokens[3]), (9, None)):
                question = DNSRecord.question(challenge_name(index), "TXT")
                sock.sendto(question.pack(), nsd.address)
                answer = DNSRecord.parse(sock.recv(4096))
                if expected is None:
                    assert answer.header.rcode == RCODE.NXDOMAIN
                else:
                    assert [str(r.rdata).strip('"') for r in answer.rr] == [expected]
        # and through the relay, with the bare RTT check the benchmark uses
        async def through_relay() -> dict:
            relay = await Relay(nsd.address, delay_s=DELAY_S).start()
            try:
                return await asyncio.to_thread(measure_rtt, ("127.0.0.1", relay.port), challenge_name(1),
                                               count=5)
            finally:
                await relay.close()

        rtt = asyncio.run(through_relay())
        assert rtt["answered"] == 5 and 28 <= rtt["median_ms"] <= 60


# -- the sniffer and /proc ----------------------------------------------------------------------


def test_sniffer_counts_queries_and_answers_on_lo():
    if not sniff.available():
        pytest.skip("no AF_PACKET socket here (needs root / CAP_NET_RAW)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        other.bind(("127.0.0.1", 0))
        sniffer = sniff.Sniffer(port).start()
        try:
            client.settimeout(2)
            for i in range(5):
                client.sendto(b"q%d" % i, ("127.0.0.1", port))
                data, addr = server.recvfrom(100)
                server.sendto(data, addr)
                client.recvfrom(100)
            client.sendto(b"elsewhere", other.getsockname())  # another port: not counted
            window = sniffer.window()
            assert (window["queries"], window["answers"]) == (5, 5)
            assert window["seconds"] is not None and 0 <= window["seconds"] < 2
            sniffer.reset()
            assert sniffer.window()["queries"] == 0
        finally:
            sniffer.stop()


def test_proc_readers():
    assert cpu_seconds(os.getpid()) > 0
    memory = memory_kb(os.getpid())
    assert memory["VmHWM"] >= memory["VmRSS"] > 0
    assert reset_peak(os.getpid()) in (True, False)


# -- the runner's bookkeeping ---------------------------------------------------------------


def test_daemon_config_is_valid_and_uses_explicit_loopback_nameservers(tmp_path: Path):
    path = daemon_config(tmp_path / "cdnreq.toml", master_url="http://127.0.0.1:1", database=tmp_path / "db",
                         nameserver="127.0.0.1:5353", concurrency=8, tick_interval_s=1.0)
    config = load_config(path)
    assert config.dns.nameservers == ["127.0.0.1:5353"]
    assert config.daemon.concurrency == 8
    assert config.domain.retention_s == 0
    assert config.daemon.max_destroy_fraction >= 0.5
    assert config.master.instance_guid == "cdn-requester______0"


def test_same_work_adds_the_bare_times():
    assert same_work({"request": 900, "publish": 1000, "list": 1}, 1000.0, 2000.0) == pytest.approx(1.4)
    assert same_work({"request": 1}, 1.0, None) is None


def _scenario(name: str, **extra) -> dict:
    base = {"scenario": name, "tick": 1, "ok": True, "listed": 100000, "wall_s": 1.2, "cpu_s": 1.0,
            "peak_rss_mb": 250.0, "daemon_master_calls": {"list": 1}, "master_calls": {"list": 1},
            "dns_lookups": 20000, "planned": {}}
    return {**base, **extra}


def test_targets_and_table_from_synthetic_results():
    results = {
        "sizes": {
            "10000": {"baselines": {"double": {"requests": 10000, "seconds": 2.0, "rate": 5000.0},
                                    "double_publish": {"publishes": 10000, "seconds": 1.0, "rate": 10000.0},
                                    "dns": {"queries": 20000, "seconds": 1.0, "rate": 20000.0}},
                      "scenarios": {"first": _scenario("first reconcile", listed=10000, wall_s=2.0,
                                                       vs_bare=0.9, bare_seconds=1.8, calls_per_s=9500.0,
                                                       dns_rate=15000.0, dns_seconds=1.3)}},
            "100000": {"baselines": {"dns": {"queries": 20000, "seconds": 1.0, "rate": 20000.0}},
                       "scenarios": {"idle": _scenario("idle (median of 3)"),
                                     "burst": _scenario("DNS-pending burst", dns_rate=19000.0, dns_seconds=2.0),
                                     "startup": _scenario("start-up tick", dns_rate=10000.0, dns_seconds=2.0),
                                     "burst_rtt": _scenario("DNS-pending burst @30ms", pending_challenges=30000,
                                                            dns_seconds=9.0, dns_lookups=60000)}},
        },
    }
    by_name = {t["target"]: t for t in targets(results)}
    assert by_name["idle tick at 100,000: wall"]["pass"] is True
    assert by_name["idle tick at 100,000: peak RSS"]["pass"] is True
    assert by_name["idle tick at 100,000: master calls"]["pass"] is True
    assert by_name["first reconcile at 10,000 vs the double's ceiling"]["pass"] is True
    assert by_name["DNS at 30 ms RTT: 10,000 pending challenges"]["pass"] is True  # 3 s per 10,000
    # the start-up tick (DNS alone) is the one compared, not the burst (DNS beside publications)
    assert by_name["DNS against loopback nsd vs bare aiodns"]["pass"] is False  # 50%
    assert by_name["slapproxy vs a bare client"]["pass"] is None
    text = table(results)
    assert "idle (median of 3)" in text and "90% bare" in text
    assert by_name["restarted at 100,000: peak RSS through the start-up tick and the idle ticks"]["pass"] is None
    assert by_name["first reconcile of 100,000: peak RSS"]["pass"] is None  # not run at 100,000
    assert by_name["state held between ticks at 100,000"]["pass"] is None  # one size only
    assert by_name["one tick's listing at 100,000: transient peak"]["pass"] is None


def test_memory_targets_from_two_sizes():
    results = {"sizes": {
        "10000": {"scenarios": {"restarted_idle": _scenario("idle", rss_mb=100.0)}},
        "100000": {"scenarios": {"restarted_idle": _scenario("idle", rss_mb=200.0, peak_rss_mb=280.0),
                                 "startup": _scenario("start-up", peak_rss_mb=290.0),
                                 "first": _scenario("first", peak_rss_mb=500.0)},
                   "listing": {"transient_per_body": 1.7, "transient_peak_mb": 36.0, "body_mb": 22.0,
                               "held_bytes_per_instance": 380}},
    }}
    by_name = {t["target"]: t for t in targets(results)}
    held = by_name["state held between ticks at 100,000"]
    assert held["pass"] is False and held["measured"] == "1165 B/instance"  # 100 MiB over 90,000
    assert by_name["first reconcile of 100,000: peak RSS"]["pass"] is False
    restarted = by_name["restarted at 100,000: peak RSS through the start-up tick and the idle ticks"]
    assert restarted["pass"] is True and restarted["measured"] == "290 MB"
    assert by_name["one tick's listing at 100,000: transient peak"]["pass"] is True


def test_scale_slopes_and_projection_from_synthetic_results():
    from bench.scale import scale, scale_text

    def size(wall: float, peak: float) -> dict:
        return {"scenarios": {"idle": _scenario("idle", wall_s=wall, peak_rss_mb=peak)}}

    results = {"sizes": {"10000": size(0.1, 100.0), "100000": size(1.0, 400.0), "300000": size(3.2, 1000.0)}}
    rows = {r["metric"]: r for r in scale(results)}
    wall, peak = rows["idle tick wall"], rows["idle tick peak RSS"]
    assert [round(s["per_instance"], 3) for s in wall["slopes"]] == [10.0, 11.0]  # µs per instance
    assert [round(s["per_instance"]) for s in peak["slopes"]] == [3333, 3000]  # bytes per instance
    assert round(wall["projected"], 2) == 10.9 and round(peak["projected"]) == 3100  # 300k + 700k at the last slope
    text = scale_text(list(rows.values()))
    assert "10,000->100,000: 10.0 µs/instance" in text and "at 1,000,000: 3100.0 MB" in text
    assert scale({"sizes": {"1000": size(0.01, 80.0)}})[0]["projected"] is None  # one size: no slope


def test_sizes_argument():
    assert _sizes("1000,10_000") == [1000, 10000]
    with pytest.raises(Exception):
        _sizes("a,b")


def test_history_bench_on_a_small_store(tmp_path: Path):
    """bench/history.py end to end, small: what it reports adds up."""
    import json

    from bench.history import main as history

    out = tmp_path / "history.json"
    assert history(["--size", "40", "--days", "6", "--retention", "2", "--workdir", str(tmp_path / "w"),
                    "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    # day 0: request, poll, publish (+ a claim for 9 in 10) then a poll a day; 1,440 ticks a day
    assert r["events"] == 40 * (3 + 5) + 36 and r["ticks"] == 6 * 1440
    # past 2 days: the polls of days 0 to 3 (not day 0's request, publication or claim,
    # each the newest of its action) and those days' ticks
    assert r["prune"]["events_deleted"] == 40 * 4 and r["prune"]["ticks_deleted"] == 4 * 1440
    assert r["next_day"]["events_deleted"] == 40 and r["next_day"]["ticks_deleted"] == 1440
    assert r["pruned_mb"] < r["migrated_mb"]


def test_listing_memory_probe_reads_the_double_s_body(tmp_path: Path):
    """bench/listingmem.py reads the master double's body as the daemon does."""
    from bench import listingmem
    from bench.double.customers import Customers

    double = Customers(with_domains=True)
    double.populate(300)
    path = tmp_path / "body.json"
    path.write_bytes(double.body())
    found = listingmem.read(str(path))
    assert found["instances"] == 300 and found["body_mb"] >= 0
    assert set(found) >= {"transient_peak_mb", "transient_per_body", "held_bytes_per_instance", "seconds"}

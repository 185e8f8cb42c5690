"""cdnreq.dns.Resolver against devtools.devdns on loopback (never a real resolver)."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from devtools.devdns import DevDns
from cdnreq.dns.resolver import Resolver
from cdnreq.model import Lookup
from cdnreq.dns.names import parse_nameserver
from cdnreq.dns.resolver import _LoopDriven


def resolver(dns: DevDns, **kwargs) -> Resolver:
    kwargs.setdefault("timeout_s", 0.5)
    kwargs.setdefault("tries", 2)
    return Resolver(nameservers=[dns.address], **kwargs)


async def txt(dns: DevDns, *names: str, **kwargs) -> dict[str, Lookup]:
    async with resolver(dns, **kwargs) as r:
        return await r.txt_many(names)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll predicate until true; fail (not hang) after timeout."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- found --------------------------------------------------------------------


async def test_found_single(devdns: DevDns) -> None:
    devdns.set_txt("_cdnreq.example.test", "cdnreq-token")
    result = await txt(devdns, "_cdnreq.example.test")
    assert result == {
        "_cdnreq.example.test": Lookup("_cdnreq.example.test", "found", ("cdnreq-token",)),
    }
    assert devdns.queries == 1


async def test_found_multiple_records(devdns: DevDns) -> None:
    devdns.set_txt("m.test", "one", "two")
    devdns.add_txt("m.test", "three")
    lookup = (await txt(devdns, "m.test"))["m.test"]
    assert lookup.outcome == "found"
    assert sorted(lookup.values) == ["one", "three", "two"]


async def test_long_value_is_rejoined(devdns: DevDns) -> None:
    value = "".join(chr(ord("a") + i % 26) for i in range(700))
    devdns.set_txt("long.test", value, "short")
    lookup = (await txt(devdns, "long.test"))["long.test"]
    assert sorted(lookup.values) == sorted([value, "short"])


async def test_utf8_and_invalid_bytes(devdns: DevDns) -> None:
    devdns.set_txt("u.test", "clé ✓")
    devdns.set_txt("raw.test", b"ok\xff")
    result = await txt(devdns, "u.test", "raw.test")
    assert result["u.test"].values == ("clé ✓",)
    assert result["raw.test"].values == ("ok\ufffd",)


async def test_names_are_case_insensitive_and_keyed_as_given(devdns: DevDns) -> None:
    devdns.set_txt("mixed.test", "x")
    result = await txt(devdns, "MiXeD.Test.")
    assert result["MiXeD.Test."] == Lookup("MiXeD.Test.", "found", ("x",))


# -- absent ---------------------------------------------------------------------


async def test_absent_nxdomain_and_nodata(devdns: DevDns) -> None:
    devdns.set_a("host.test", "192.0.2.1")
    result = await txt(devdns, "missing.test", "host.test")
    assert result["missing.test"] == Lookup("missing.test", "absent", (), "NXDOMAIN")
    assert result["host.test"] == Lookup("host.test", "absent", (), "NODATA")


async def test_record_changes_are_seen(devdns: DevDns) -> None:
    async with resolver(devdns) as r:
        assert (await r.txt_many(["late.test"]))["late.test"].outcome == "absent"
        devdns.set_txt("late.test", "now")
        assert (await r.txt_many(["late.test"]))["late.test"].values == ("now",)


# -- unknown --------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "detail"), [
    ("timeout", "timeout"), ("servfail", "SERVFAIL"), ("refused", "REFUSED"),
])
async def test_unknown(devdns: DevDns, kind: str, detail: str) -> None:
    devdns.set_txt("bad.test", "hidden")
    devdns.behave("bad.test", kind)
    result = await txt(devdns, "bad.test", timeout_s=0.2, tries=2)
    assert result["bad.test"] == Lookup("bad.test", "unknown", (), detail)


async def test_no_server_listening() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Resolver(nameservers=[f"127.0.0.1:{port}"], timeout_s=0.2, tries=1) as r:
        lookup = (await r.txt_many(["x.test"]))["x.test"]
    assert lookup.outcome == "unknown"
    assert lookup.detail in {"connection refused", "timeout"}


async def test_bad_name_is_unknown(devdns: DevDns) -> None:
    result = await txt(devdns, "", "a..b.test", "x" * 64 + ".test")
    assert {n: (lk.outcome, lk.detail) for n, lk in result.items()} == {
        "": ("unknown", "bad name"),
        "a..b.test": ("unknown", "bad name"),
        "x" * 64 + ".test": ("unknown", "bad name"),
    }
    assert devdns.queries == 0


async def test_timeout_waits_for_the_whole_budget_after_fast_answers(devdns: DevDns) -> None:
    """c-ares shortens its timeouts (250 ms) once it has seen fast answers; the
    resolver still gives a silent name timeout_s * tries before calling it a timeout."""
    seconds: dict[str, float] = {}
    for i in range(5):
        devdns.set_txt(f"fast{i}.test", "x")
    devdns.behave("silent.test", "timeout")
    async with resolver(devdns, timeout_s=0.6, tries=2) as r:
        await r.txt_many([f"fast{i}.test" for i in range(5)])
        r.observer = lambda outcome, s: seconds.setdefault(outcome, s)
        lookup = (await r.txt_many(["silent.test"]))["silent.test"]
    assert lookup.detail == "timeout"
    assert seconds["unknown"] >= 0.6 * 2 * 0.95
    assert devdns.queries_for("silent.test") >= 2


async def test_safety_net_deadline(devdns: DevDns) -> None:
    devdns.behave("silent.test", "timeout")
    async with resolver(devdns, timeout_s=30, tries=1) as r:
        r._deadline_s = 0.2
        lookup = (await r.txt_many(["silent.test"]))["silent.test"]
    assert (lookup.outcome, lookup.detail) == ("unknown", "timeout")


# -- CNAMEs -----------------------------------------------------------------------


async def test_cname_to_txt_name_same_server(devdns: DevDns) -> None:
    devdns.set_cname("_cdnreq.customer.test", "_cdnreq.customer.delegated.test")
    devdns.set_txt("_cdnreq.customer.delegated.test", "token")
    lookup = (await txt(devdns, "_cdnreq.customer.test"))["_cdnreq.customer.test"]
    assert lookup.outcome == "found" and lookup.values == ("token",)
    assert "_cdnreq.customer.delegated.test" in lookup.detail
    assert devdns.queries == 1  # the server gave the target's records with the CNAME


async def test_cname_followed_by_the_resolver(devdns: DevDns) -> None:
    devdns.follow_cnames = False  # answers hold the CNAME only
    devdns.set_cname("a.test", "b.test")
    devdns.set_cname("b.test", "c.test")
    devdns.set_txt("c.test", "end")
    lookup = (await txt(devdns, "a.test"))["a.test"]
    assert (lookup.outcome, lookup.values) == ("found", ("end",))
    assert lookup.detail == "via CNAME b.test -> c.test"
    assert devdns.queries == 3


@pytest.mark.parametrize("follow", [True, False])
async def test_cname_to_missing_target_is_absent(devdns: DevDns, follow: bool) -> None:
    devdns.follow_cnames = follow
    devdns.set_cname("a.test", "nowhere.test")
    devdns.set_cname("b.test", "host.test")
    devdns.set_a("host.test", "192.0.2.1")
    result = await txt(devdns, "a.test", "b.test")
    assert (result["a.test"].outcome, result["a.test"].detail) == ("absent", "NXDOMAIN")
    assert (result["b.test"].outcome, result["b.test"].detail) == ("absent", "NODATA")


@pytest.mark.parametrize("follow", [True, False])
async def test_cname_loop(devdns: DevDns, follow: bool) -> None:
    devdns.follow_cnames = follow
    devdns.set_cname("l1.test", "l2.test")
    devdns.set_cname("l2.test", "l3.test")
    devdns.set_cname("l3.test", "l1.test")
    devdns.set_cname("self.test", "self.test")
    result = await txt(devdns, "l1.test", "self.test")
    for name in ("l1.test", "self.test"):
        assert result[name] == Lookup(name, "unknown", (), "CNAME loop")


@pytest.mark.parametrize("follow", [True, False])
async def test_cname_chain_too_long(devdns: DevDns, follow: bool) -> None:
    devdns.follow_cnames = follow
    for i in range(12):
        devdns.set_cname(f"c{i}.test", f"c{i + 1}.test")
    devdns.set_txt("c12.test", "far")
    result = await txt(devdns, "c0.test", "c5.test")
    assert result["c0.test"] == Lookup("c0.test", "unknown", (), "CNAME chain too long")
    assert result["c5.test"].values == ("far",)  # 7 hops: fine


# -- transport ------------------------------------------------------------------------


async def test_truncated_udp_answer_is_retried_over_tcp(devdns: DevDns) -> None:
    devdns.set_txt("big.test", "x" * 1000, "y" * 1000)
    devdns.behave("big.test", "truncate")
    lookup = (await txt(devdns, "big.test"))["big.test"]
    assert sorted(lookup.values) == ["x" * 1000, "y" * 1000]
    assert devdns.tcp_queries >= 1


async def test_duplicates_are_looked_up_once(devdns: DevDns) -> None:
    devdns.set_txt("dup.test", "d")
    names = ["dup.test", "dup.test", "DUP.test.", "other.test", "dup.test"]
    result = await txt(devdns, *names)
    assert set(result) == {"dup.test", "DUP.test.", "other.test"}
    assert result["DUP.test."] == Lookup("DUP.test.", "found", ("d",))
    assert devdns.queries_for("dup.test") == 1
    assert devdns.queries == 2


async def test_ipv6_nameserver() -> None:
    try:
        dns = DevDns(host="::1").start()
    except OSError as error:
        pytest.skip(f"cannot listen on ::1: {error}")
    try:
        dns.set_txt("v6.test", "six")
        assert dns.address.startswith("[::1]:")
        lookup = (await txt(dns, "v6.test"))["v6.test"]
        assert lookup.values == ("six",)
        assert dns.queries == 1
    finally:
        dns.stop()


# -- nameservers --------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("127.0.0.1", "127.0.0.1:53"),
    ("127.0.0.1:5353", "127.0.0.1:5353"),
    (" 10.0.0.1:53 ", "10.0.0.1:53"),
    ("::1", "[::1]:53"),
    ("[::1]", "[::1]:53"),
    ("[::1]:5353", "[::1]:5353"),
    ("[2001:DB8::1]:53", "[2001:db8::1]:53"),
])
def test_parse_nameserver(given: str, expected: str) -> None:
    assert parse_nameserver(given) == expected


@pytest.mark.parametrize("bad", [
    "", "localhost", "dns.example:53", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
    "127.0.0.1:x", "[::1]:", "[::1", "[::1]53", "[127.0.0.1]:53", "1.2.3.4.5", "256.0.0.1",
])
def test_bad_nameserver_names_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        Resolver(nameservers=[bad])


def test_nameservers_must_be_a_list() -> None:
    with pytest.raises(ValueError):
        Resolver(nameservers="127.0.0.1")


@pytest.mark.parametrize("kwargs", [
    {"timeout_s": 0}, {"timeout_s": -1}, {"tries": 0}, {"concurrency": 0},
])
def test_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Resolver(nameservers=["127.0.0.1"], **kwargs)


async def test_the_given_port_is_queried(devdns: DevDns) -> None:
    devdns.set_txt("p.test", "here")
    async with Resolver(nameservers=[f"127.0.0.1:{devdns.port}"], timeout_s=0.5) as r:
        assert r.nameservers == (f"127.0.0.1:{devdns.port}",)
        assert (await r.txt_many(["p.test"]))["p.test"].values == ("here",)
    assert devdns.queries == 1


# -- concurrency ------------------------------------------------------------------------


async def test_in_flight_is_bounded(devdns: DevDns) -> None:
    """With concurrency=4 the server sees 4 black-holed names and no fifth until
    one of them times out; with concurrency=256 it sees all 50 at once."""
    names = [f"hole{i}.test" for i in range(50)]
    for name in names:
        devdns.behave(name, "timeout")

    async with resolver(devdns, timeout_s=3, tries=1, concurrency=4) as r:
        task = asyncio.create_task(r.txt_many(names))
        await wait_for(lambda: len(devdns.queried_names()) >= 4)
        await asyncio.sleep(0.3)  # far less than the 3 s budget of the first 4
        assert len(devdns.queried_names()) == 4
        assert r.in_flight == 4 and r.peak_in_flight == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    devdns.reset_counts()
    async with resolver(devdns, timeout_s=3, tries=1, concurrency=256) as r:
        task = asyncio.create_task(r.txt_many(names))
        await wait_for(lambda: len(devdns.queried_names()) == 50)
        assert r.peak_in_flight == 50
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_bounded_batch_of_answers(devdns: DevDns) -> None:
    names = [f"n{i}.test" for i in range(200)]
    for name in names[::2]:
        devdns.set_txt(name, name)
    async with resolver(devdns, concurrency=4) as r:
        result = await r.txt_many(names)
    assert r.peak_in_flight == 4 and r.in_flight == 0
    assert [result[n].outcome for n in names] == ["found", "absent"] * 100


async def test_observer_is_called_per_lookup(devdns: DevDns) -> None:
    seen: list[tuple[str, float]] = []
    devdns.set_txt("a.test", "x")
    devdns.behave("s.test", "servfail")
    async with resolver(devdns, observer=lambda o, s: seen.append((o, s))) as r:
        await r.txt_many(["a.test", "b.test", "s.test", "a.test"])
    assert sorted(o for o, _ in seen) == ["absent", "found", "unknown"]
    assert all(s >= 0 for _, s in seen)


async def test_a_failing_observer_does_not_break_lookups(devdns: DevDns) -> None:
    devdns.set_txt("a.test", "x")

    def boom(outcome: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    async with resolver(devdns, observer=boom) as r:
        assert (await r.txt_many(["a.test"]))["a.test"].outcome == "found"


async def test_key_property_1000_names(devdns: DevDns) -> None:
    """1,000 names, 100 black-holed: all classified, in less than timeout_s * tries + 5."""
    timeout_s, tries = 1.0, 2
    names = [f"_cdnreq.customer{i}.test" for i in range(1000)]
    expected: dict[str, str] = {}
    answered = 0
    for i, name in enumerate(names):
        if i % 10 == 0:
            devdns.behave(name, "timeout")
            expected[name] = "unknown"
        else:
            answered += 1
            if answered % 2:
                devdns.set_txt(name, f"token-{i}")
                expected[name] = "found"
            else:
                expected[name] = "absent"
    assert list(expected.values()).count("unknown") == 100
    assert list(expected.values()).count("found") == 450

    async with Resolver(nameservers=[devdns.address], timeout_s=timeout_s, tries=tries,
                        concurrency=256) as r:
        started = time.monotonic()
        result = await r.txt_many(names)
        elapsed = time.monotonic() - started
    print(f"\n1,000 names (100 black-holed), timeout_s={timeout_s}, tries={tries}: "
          f"{elapsed:.2f} s, {devdns.queries} queries")

    wrong = {n: result[n] for n in names if result[n].outcome != expected[n]}
    assert not wrong
    for i, name in enumerate(names):
        if expected[name] == "found":
            assert result[name].values == (f"token-{i}",)
        elif expected[name] == "absent":
            assert result[name].detail == "NXDOMAIN"
        else:
            assert result[name].detail == "timeout"
    assert r.peak_in_flight == 256
    assert elapsed < timeout_s * tries + 5


async def test_a_pool_of_workers_not_a_task_per_name(devdns: DevDns) -> None:
    """1,000 names at concurrency 8: at most 8 workers (tasks) besides the caller's."""
    names = [f"t{i}.test" for i in range(1000)]
    for name in names[::3]:
        devdns.set_txt(name, "v")
    tasks_seen = 0

    async def count_tasks() -> None:
        nonlocal tasks_seen
        while True:
            tasks_seen = max(tasks_seen, len(asyncio.all_tasks()))
            await asyncio.sleep(0)

    async with resolver(devdns, concurrency=8) as r:
        counter = asyncio.create_task(count_tasks())
        result = await r.txt_many(names)
        counter.cancel()
    assert tasks_seen <= 8 + 2  # the test's own task and the counter
    assert r.peak_in_flight == 8 and r.in_flight == 0
    timers = asyncio.get_running_loop()._scheduled  # the batch's budget sweep must be gone
    assert not [t for t in timers if not t.cancelled() and "sweep" in repr(t)]
    assert sum(lk.outcome == "found" for lk in result.values()) == 334


async def test_every_name_answered_once_with_duplicates(devdns: DevDns) -> None:
    """Many duplicates, few workers: one question per distinct name, every name keyed as given."""
    base = [f"d{i}.test" for i in range(60)]
    for i, name in enumerate(base):
        if i % 2:
            devdns.set_txt(name, f"v{i}")
    names = base + [n.upper() for n in base] + [n + "." for n in base[::3]] + base[::5]
    async with resolver(devdns, concurrency=3) as r:
        result = await r.txt_many(names)
    assert set(result) == set(names)
    assert devdns.queries == 60 and all(devdns.queries_for(n) == 1 for n in base)
    for name in names:
        i = int(name.rstrip(".").lower()[1:].split(".")[0])
        assert result[name].name == name
        assert result[name].values == ((f"v{i}",) if i % 2 else ())
        assert result[name].outcome == ("found" if i % 2 else "absent")


async def test_each_question_gets_its_own_budget_in_a_small_pool(devdns: DevDns) -> None:
    """4 silent names through 2 workers: two waves, each waiting the whole budget (not a
    budget per worker or per batch), and the answered names still answered."""
    silent = [f"s{i}.test" for i in range(4)]
    for name in silent:
        devdns.behave(name, "timeout")
    devdns.set_txt("ok.test", "x")
    seconds: list[float] = []
    async with resolver(devdns, timeout_s=0.3, tries=2, concurrency=2,
                        observer=lambda o, s: seconds.append(s) if o == "unknown" else None) as r:
        started = time.monotonic()
        result = await r.txt_many([*silent, "ok.test"])
        elapsed = time.monotonic() - started
    assert [result[n].detail for n in silent] == ["timeout"] * 4
    assert result["ok.test"].values == ("x",)
    assert len(seconds) == 4 and all(0.6 * 0.95 <= s < 0.6 + 0.5 for s in seconds)
    assert 2 * 0.6 * 0.95 <= elapsed < 2 * 0.6 + 1.0
    assert r.peak_in_flight == 2


async def test_addresses_and_txt_share_the_slots(devdns: DevDns) -> None:
    devdns.set_a("h.test", "192.0.2.9")
    names = [f"x{i}.test" for i in range(30)]
    for name in names:
        devdns.set_txt(name, "v")
    async with resolver(devdns, concurrency=3) as r:
        txt, *hosts = await asyncio.gather(r.txt_many(names), *(r.addresses("h.test") for _ in range(5)))
    assert r.peak_in_flight <= 3 and r.in_flight == 0
    assert all(lk.values == ("v",) for lk in txt.values())
    assert all(h.values == ("192.0.2.9",) for h in hosts)


async def test_given_nameservers_use_the_loop_driven_channel(devdns: DevDns) -> None:
    """The event loop drives c-ares (no event thread, twice the rate); guards an aiodns upgrade."""
    devdns.set_txt("a.test", "x")
    async with resolver(devdns) as r:
        assert (await r.txt_many(["a.test"]))["a.test"].values == ("x",)
        assert isinstance(r._dns, _LoopDriven) and r._dns._event_thread is False


# -- addresses ---------------------------------------------------------------------------


async def test_addresses(devdns: DevDns) -> None:
    devdns.set_a("cdn.test", "192.0.2.1", "192.0.2.2")
    devdns.set_aaaa("cdn.test", "2001:db8::1")
    devdns.set_cname("www.customer.test", "edge.customer.test")
    devdns.set_cname("edge.customer.test", "cdn.test")
    devdns.set_cname("dangling.test", "cdn.elsewhere.test")
    devdns.set_txt("txtonly.test", "x")
    devdns.behave("slow.test", "timeout")
    async with resolver(devdns, timeout_s=0.2, tries=1) as r:
        direct = await r.addresses("cdn.test")
        alias = await r.addresses("www.customer.test")
        dangling = await r.addresses("dangling.test")
        missing = await r.addresses("missing.test")
        nodata = await r.addresses("txtonly.test")
        slow = await r.addresses("slow.test")
    assert direct == Lookup("cdn.test", "found", ("192.0.2.1", "192.0.2.2", "2001:db8::1"))
    assert alias.outcome == "found"
    assert alias.values == ("192.0.2.1", "192.0.2.2", "2001:db8::1", "edge.customer.test", "cdn.test")
    assert dangling == Lookup("dangling.test", "found", ("cdn.elsewhere.test",),
                              "via CNAME cdn.elsewhere.test")
    assert missing == Lookup("missing.test", "absent", (), "NXDOMAIN")
    assert nodata == Lookup("txtonly.test", "absent", (), "NODATA")
    assert slow.outcome == "unknown" and "timeout" in slow.detail


async def test_addresses_cname_loop(devdns: DevDns) -> None:
    devdns.set_cname("l1.test", "l2.test")
    devdns.set_cname("l2.test", "l1.test")
    async with resolver(devdns) as r:
        lookup = await r.addresses("l1.test")
    assert lookup.outcome == "unknown" and "CNAME loop" in lookup.detail


# -- life cycle ----------------------------------------------------------------------------


async def test_closed_resolver_refuses_work(devdns: DevDns) -> None:
    r = resolver(devdns)
    await r.close()
    await r.close()  # idempotent
    with pytest.raises(RuntimeError):
        await r.txt_many(["a.test"])
    with pytest.raises(RuntimeError):
        await r.addresses("a.test")


async def test_close_ends_pending_lookups(devdns: DevDns) -> None:
    names = [f"hole{i}.test" for i in range(5)]
    for name in names:
        devdns.behave(name, "timeout")
    r = resolver(devdns, timeout_s=10, tries=1)
    task = asyncio.create_task(r.txt_many(names))
    await wait_for(lambda: len(devdns.queried_names()) == 5)
    await r.close()
    result = await asyncio.wait_for(task, 5)
    assert {(lk.outcome, lk.detail) for lk in result.values()} == {("unknown", "cancelled")}


async def test_empty_batch(devdns: DevDns) -> None:
    assert await txt(devdns) == {}
    assert devdns.queries == 0

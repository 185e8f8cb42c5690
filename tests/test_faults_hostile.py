"""Hostile input (issue 6, items 6, 7 and 9): DNS faults, hostile parameters and
guids, and what must never be shown.

1. Hostile parameters, generated with hypothesis: validate() never raises (nor
   falls back to its "could not be checked" error), its messages are strings
   naming a parameter, bounded, without key material, and it is
   deterministic; every invalid instance gets a published error from the gate.
   technical_title() stays short, safe, stable and distinct; plan() gives odd
   guids their own titles and the store keeps them. One real tick
   (`cdnreq once`) with hostile customers next to good ones; and memory stays
   bounded when 100 customers send 1 MB values.
2. DNS faults from the loopback DNS server (DevDns): SERVFAIL, REFUSED,
   timeouts, CNAME loops and too-long chains, truncated UDP answers (retried
   over TCP), many TXT records on one name. No validated instance is lost, no
   pending one is validated wrongly.
3. Exposure: the logs, /metrics, /status, /instances/<guid>, `cdnreq
   status`/`explain` and the events table never hold the domain secret, the
   master's TLS client key or a customer's ssl_key. The master is the double
   served over HTTPS requiring a client certificate (trustme), so the key is
   really loaded.

The master double (bench/double/) is served from a thread of this process
where a test needs customers the control API cannot make (odd guids, any JSON
value); `cdnreq` itself always runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trustme
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.double import REQUESTER_GUID, Double, make_app
from devtools.devmaster import free_port
from devtools.devdns import DevDns
from cdnreq.dns.challenge import issue
from cdnreq.dns.resolver import Resolver
from cdnreq.model import Lookup
from cdnreq.model import Listing
from cdnreq.model import HostClaim, InstanceGuid, Phase, Record, SharedInstance, Title
from cdnreq.reconcile.domains import Domains
from cdnreq.decide.gate import DomainPolicy, Status
from cdnreq.decide.plan import Kind, Policy, plan, spec_hash
from cdnreq.decide.titles import HASH_CHARS, MAX_TITLE, is_safe, technical_title
from cdnreq.store import Store
from cdnreq.validate.quoting import masked_head
from cdnreq.validate.schema import KNOWN_PARAMETERS
from cdnreq.validate.verdict import validate

pytestmark = pytest.mark.faults

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
SR = "http://sr.invalid/rapid-cdn/software.cfg"
PREFIX = "cdnreq-"
LABEL = "_slapos-challenge"
FALLBACK = "parameters: could not be checked"
MB = 1 << 20
EXAMPLES = int(os.environ.get("CDNREQ_HYPOTHESIS_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
RUN: dict[str, int] = {}  # hypothesis examples run, per property


def counted(name: str) -> None:
    RUN[name] = RUN.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_examples() -> Iterator[None]:
    yield
    if RUN:
        print(f"\nhypothesis examples run: {sum(RUN.values())} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(RUN.items()))})")


# == 1. hostile parameters and guids =====================================================

chars = st.characters(codec="utf-8")  # any scalar value JSON can carry (no lone surrogate)
# control characters, bidi overrides, zero-width, several scripts, the characters that matter to hosts
odd = "\x00\x01\x07\t\n\r\x1b\x7f\u0085\u200b\u200d\u202e\u2066\ufeffaZ09-_.*:/@[]%?# \u00fc\u00e9\u03a9\u0416\u4f8b\u0627\U0001f600"
odd_text = st.text(alphabet=odd, max_size=40)
big_text = st.builds(
    lambda piece, n: piece * n,
    st.text(alphabet=chars, min_size=1, max_size=3),
    st.sampled_from([1, 60, 61, 253, 254, 256, 2049, 8193, 65537, 262145]),
)
texts = st.one_of(st.text(alphabet=chars, max_size=60), odd_text, big_text)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False, allow_infinity=False),  # what a JSON parser can hand over
    texts,
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
hostish = st.text(alphabet="abxyz019-_.*\u00fc\u4f8b \t\x00/:@", max_size=30)
host_lists = st.builds(" ".join, st.lists(hostish, max_size=5))
keys = st.one_of(st.sampled_from(sorted(KNOWN_PARAMETERS)), st.text(alphabet=chars, max_size=30), odd_text)
# any JSON in any field, plus values aimed at the checkers behind the schema
parameters = st.one_of(
    st.dictionaries(keys, json_values, max_size=8),
    st.fixed_dictionaries({}, optional={
        "url": st.one_of(texts, st.just("https://backend.example")),
        "custom_domain": st.one_of(hostish, json_values),
        "server-alias": st.one_of(host_lists, json_values),
        "url-netloc-list": host_lists,
        "https-url-netloc-list": st.one_of(host_lists, json_values),
        "ciphers": st.one_of(st.text(alphabet="ABCDEFGHIKLMNOPRSTUVWXYZ0123456789-: !+", max_size=60), json_values),
        "ssl_crt": texts, "ssl_key": texts, "ssl_ca_crt": json_values, "ssl_proxy_ca_crt": texts,
        "enable_cache": json_values, "virtualhostroot-http-port": json_values, "https-port": json_values,
    }),
)


def named(message: str, params: dict) -> bool:
    """The message starts with a parameter's name (as given, or as shown
    escaped, or quoted as JSON when it could not be read back unquoted; a
    URL's password in it masked, validate/quoting.masked_head)."""
    names = {n for k in params if isinstance(k, str) for n in (k, masked_head(k, bare=True))}
    if message.startswith('"'):
        try:
            quoted, end = json.JSONDecoder().raw_decode(message)
        except ValueError:
            return False
        return message[end:end + 1] == ":" and (quoted in params or quoted in names or any(
            quoted.endswith("...") and json.dumps(k)[1:-1].startswith(quoted[:-3])
            for k in names
        ))
    head = message.split(": ", 1)[0] if ": " in message else message.split(":", 1)[0]
    shown = {json.dumps(k)[1:-1] for k in names}
    return head in params or head in names or head in KNOWN_PARAMETERS or head in shown or head == "parameters" or any(
        s.endswith("...") and head.startswith(s[:-3]) for s in shown
    ) or any(head.endswith("...") and s.startswith(head[:-3]) for s in shown)


@pytest.mark.parametrize("key", [": ", "", " ", " a", "a:b", "a: b", ":", "x" * 10 + ": y"])
def test_a_parameter_name_holding_a_colon_or_blanks_is_named_unambiguously(key: str) -> None:
    """A name holding ": " (or empty, or blank at an end) was shown as is:
    ": : unknown parameter" named no parameter a customer could find."""
    (message,) = validate({key: None}).warnings
    assert message.startswith('"'), message
    quoted, end = json.JSONDecoder().raw_decode(message)
    assert message[end:] == ": unknown parameter, not forwarded to the CDN"
    assert quoted == key or (quoted.endswith("...") and key.startswith(quoted[:-3]))


@SETTINGS
@given(parameters)
@example({": ": None})
def test_validate_never_raises_names_a_parameter_and_is_deterministic(params: dict) -> None:
    counted("validate")
    verdict = validate(params)
    assert FALLBACK not in " ".join(verdict.errors), f"a checker raised on {params!r:.300}"
    for message in (*verdict.errors, *verdict.warnings):
        assert isinstance(message, str) and message
        assert len(message) <= 2000, f"{len(message)} characters: {message[:200]}"
    for message in verdict.errors:
        assert named(message, params), message
    for message in verdict.warnings:
        assert named(message, params) or message.startswith("... and "), message
    # no key material in any message (unless the same text is also another field's value)
    key = params.get("ssl_key")
    if isinstance(key, str) and len(key.strip()) >= 16:
        needle = key.strip()[:16]
        elsewhere = repr({k: v for k, v in params.items() if k != "ssl_key"})
        if needle not in elsewhere and json.dumps(needle)[1:-1] not in elsewhere:
            assert all(needle not in m and json.dumps(needle)[1:-1] not in m
                       for m in (*verdict.errors, *verdict.warnings))
    # deterministic: the same verdict from an equal copy, and from a second call
    assert validate(copy.deepcopy(params)) == verdict == validate(params)
    if verdict.ok and verdict.forward is not None:  # None: forwarded as listed
        json.dumps(dict(verdict.forward))  # what is forwarded is JSON


class NoDns:
    """A resolver that must not be asked: invalid instances need no lookup."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        names = list(names)
        self.asked += names
        return {n: Lookup(n, "absent") for n in names}

    async def addresses(self, name: str) -> Lookup:
        return Lookup(name, "absent")

    async def close(self) -> None:
        pass


@SETTINGS
@given(st.lists(parameters, min_size=1, max_size=4))
def test_every_invalid_instance_gets_a_published_error_and_the_others_are_unaffected(batch: list[dict]) -> None:
    counted("gate")
    good = SharedInstance.of("SOFTINST-good", {"url": "https://good.example"})
    instances = [SharedInstance.of(f"SOFTINST-h{n}", p) for n, p in enumerate(batch)] + [good]
    domains = Domains(policy=DomainPolicy(), secret=b"hostile-test-secret-0123456789", resolver=NoDns())
    step = asyncio.run(domains.step(instances, {}, 1_700_000_000.0, tick=1))
    assert step.gates[good.guid].status is Status.OK
    assert step.gates[good.guid].forward in (None, {"url": "https://good.example"})  # None: as listed
    for instance in instances[:-1]:
        gate, verdict = step.gates[instance.guid], validate(instance.parameters)
        if verdict.ok:
            assert gate.status in (Status.OK, Status.PENDING, Status.INVALID)
            continue
        assert gate.status is Status.INVALID and gate.forward is None
        shown = json.loads(gate.extras["request-error-list"])
        assert shown and all(isinstance(e, str) for e in shown) and tuple(shown[: len(verdict.errors)]) == verdict.errors
        assert gate.error and gate.error == gate.extras["message"]
        assert len(json.dumps(dict(gate.extras))) < 64 * 1024  # what the customer is shown stays small


guids = st.one_of(
    st.text(alphabet=chars, min_size=1, max_size=300),
    st.text(alphabet=odd, min_size=1, max_size=60),
    st.text(alphabet="_", min_size=1, max_size=8),
    st.builds(lambda s: f"{s}______1", st.text(alphabet="abc-_", max_size=20)),  # slapproxy's guids
    st.builds(lambda n: f"SOFTINST-{n}", st.integers(min_value=0)),
    st.builds(lambda c, n: c * n, st.sampled_from("a_-.\u00fc"), st.integers(min_value=150, max_value=400)),
)
prefixes = st.one_of(
    st.sampled_from(["cdnreq-", "", "cdn_", "_", "p" * 250, "ünï ", "-.-"]), st.text(alphabet=chars, max_size=30)
)


@SETTINGS
@given(prefixes, guids)
def test_technical_title_is_short_safe_and_stable(prefix: str, guid: str) -> None:
    counted("title")
    title = technical_title(prefix, guid)
    assert 0 < len(title) <= MAX_TITLE
    assert "___" not in title and not title.endswith("_") and is_safe(title)
    assert title == technical_title(prefix, guid)
    assert title.isascii()


@SETTINGS
@given(prefixes, st.lists(guids, min_size=2, max_size=30, unique=True))
def test_technical_titles_of_distinct_guids_differ(prefix: str, batch: list[str]) -> None:
    counted("titles distinct")
    titles = [technical_title(prefix, g) for g in batch]
    assert len(set(titles)) == len(batch)


def test_a_plain_guid_cannot_take_the_title_of_a_hashed_one() -> None:
    hashed = "a b"
    plain = "a-b-" + hashlib.sha256(hashed.encode()).hexdigest()[:HASH_CHARS]
    assert technical_title(PREFIX, hashed) != technical_title(PREFIX, plain), f"{hashed!r} and {plain!r} share a title"


NOW = 1_700_000_000.0
POLICY = Policy(request_prefix=PREFIX, spec_hash=spec_hash(SR, "default", {}))


@SETTINGS
@given(st.lists(guids, min_size=1, max_size=20, unique=True))
def test_plan_gives_odd_guids_their_own_titles_and_the_store_keeps_them(batch: list[str]) -> None:
    counted("plan")
    listing = Listing(tuple(SharedInstance.of(g, {"url": "https://b.example"}) for g in batch))
    domains = Domains(policy=DomainPolicy(), secret=b"hostile-test-secret-0123456789", resolver=NoDns())
    step = asyncio.run(domains.step(listing.instances, {}, NOW, tick=1))
    assert all(step.gates[g].ok for g in batch)
    the_plan = plan(listing, {}, NOW, POLICY, gates=step.gates, ownership=domains.index)
    assert [a.kind for a in the_plan.actions] == [Kind.REQUEST] * len(batch)
    assert {a.guid: a.record.title for a in the_plan.actions} == {g: technical_title(PREFIX, g) for g in batch}
    assert len({r.title for r in the_plan.updates}) == len(batch)
    assert {r.guid for r in the_plan.updates} == set(batch)

    async def round_trip() -> dict:
        store = await Store.open(STORE_DIR / f"plan-{hashlib.sha256(repr(batch).encode()).hexdigest()[:16]}.db")
        try:
            await store.commit(upserts=the_plan.updates)
            return await store.load()
        finally:
            await store.close()

    loaded = asyncio.run(round_trip())
    assert loaded == {r.guid: r for r in the_plan.updates}
    # the next tick, from what was stored: nothing new, the same titles
    again = plan(listing, loaded, NOW + 60, POLICY, gates=step.gates, ownership=domains.index)
    assert again.updates == () and {a.record.title for a in again.actions} == {r.title for r in the_plan.updates}


STORE_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / f"cdnreq-hostile-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def store_dir() -> Iterator[None]:
    STORE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for path in STORE_DIR.iterdir():
            path.unlink()
        STORE_DIR.rmdir()


# -- memory ------------------------------------------------------------------------------------


def test_validating_100_customers_with_1mb_values_stays_bounded() -> None:
    fields: list[Callable[[str], dict]] = [
        lambda v: {"url": "https://" + v}, lambda v: {"ssl_crt": v, "ssl_key": v},
        lambda v: {"custom_domain": v}, lambda v: {"server-alias": v},
        lambda v: {"url-netloc-list": v}, lambda v: {"ciphers": v},
        lambda v: {"unknown-field": v}, lambda v: {"enable_cache": {"deep": [v]}},
        lambda v: {"ssl_proxy_ca_crt": "-----BEGIN CERTIFICATE-----\n" + v}, lambda v: {v: "x"},
    ]
    inputs = []
    for n in range(100):
        value = chr(0x61 + n % 26) * (MB - 1) + chr(0x4E00 + n)  # 1 MB, distinct per customer
        params = fields[n % len(fields)](value)
        params.setdefault("url", "https://b.example")
        inputs.append(SharedInstance.of(f"SOFTINST-{n}", params))
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        domains = Domains(policy=DomainPolicy(), secret=b"hostile-test-secret-0123456789", resolver=NoDns())
        started = time.monotonic()
        step = asyncio.run(domains.step(inputs, {}, NOW, tick=1))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra_peak, extra_kept = (peak - base) / MB, (kept - base) / MB
    print(f"\n100 customers x 1 MB: peak +{extra_peak:.1f} MB, kept +{extra_kept:.1f} MB "
          f"(verdicts cached), {elapsed:.2f} s")
    assert extra_peak < 50 and extra_kept < 50
    statuses = {g.status for g in step.gates.values()}
    assert len(step.gates) == 100 and Status.INVALID in statuses
    for guid, gate in step.gates.items():
        if not gate.ok:
            assert len(json.dumps(dict(gate.extras))) < 16 * 1024, guid


# -- one real tick with hostile customers ------------------------------------------------


class ThreadedDouble:
    """The master double served from a thread of this process (any customer, any value)."""

    def __init__(self, double: Double, ssl_context: ssl.SSLContext | None = None):
        self.double = double
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port: int | None = None
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def run(self, fn: Callable[[], Any]) -> Any:
        """Call fn in the double's thread (between its requests)."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(30)

    def __enter__(self) -> ThreadedDouble:
        self.thread.start()

        async def start() -> int:
            self.runner = web.AppRunner(make_app(self.double), access_log=None, handle_signals=False)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
            await site.start()
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()



def run_once(config: Path) -> str:
    """`cdnreq once` on `config` as a new process; its log (stderr). A failed pass fails the test."""
    result = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def write_config(path: Path, master: dict, database: Path, dns: list[str] | None = None, **extra: dict) -> Path:
    config = {
        "master": {"instance_guid": REQUESTER_GUID, "timeout_s": 20.0, **master},
        "technical_cdn": {"software_release_uri": SR, "request_prefix": PREFIX},
        "daemon": {"database": str(database), "concurrency": 8, "tick_interval_s": 0.3,
                   "listen": f"127.0.0.1:{free_port()}"},
        "dns": {"nameservers": dns or ["127.0.0.1:9"], "timeout_s": 0.5, "tries": 1},
        "logging": {"format": "json"},
    }
    for section, values in extra.items():
        config[section] = values if isinstance(values, list) else {**config.get(section, {}), **values}
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


HOSTILE: dict[str, dict[str, Any]] = {
    "SOFTINST-h-1mb-url": {"url": "https://" + "a" * MB},
    "SOFTINST-h-nested": {"url": "https://b.example", "enable_cache": {"nested": {"deep": [1, 2, {"x": None}]}}},
    "SOFTINST-h-crlf-domain": {"url": "https://b.example", "custom_domain": "exa\x00mple.com\r\nX-Injected: 1"},
    "SOFTINST-h-huge-int": {"url": "https://b.example", "virtualhostroot-http-port": 10**18},
    "SOFTINST-h-alias-list": {"url": "https://b.example", "server-alias": ["not", "a", "string"]},
    "SOFTINST-h-crt-number": {"url": "https://b.example", "ssl_crt": 123, "ssl_key": 4.5},
    "SOFTINST-h-scripts": {"url": "https://\u0431\u0430\u043d\u043a.\u4f8b\u3048/\u202e", "enable_cache": "\u0434\u0430"},
    "SOFTINST-h-1mb-cert": {"url": "https://b.example", "ssl_proxy_ca_crt": "-----BEGIN CERTIFICATE-----\n" + "A" * MB},
    "SOFTINST-h-netloc": {"url": "https://b.example", "url-netloc-list": "example.com:abc [::1 \x00:0"},
    "SOFTINST-h-null": {"url": None, "custom_domain": None, "ciphers": False},
}
GOOD = {f"SOFTINST-good-{n}": {"url": f"https://good-{n}.example", "enable_cache": "true"} for n in range(5)}
ODD_GUIDS = {
    "customer______1": {"url": "https://odd-1.example"},  # slapproxy's kind
    "weird guid/\u00fc___x\x01\u202e": {"url": "https://odd-2.example"},
    "G" * 300: {"url": "https://odd-3.example"},
}


def test_one_tick_with_hostile_customers_next_to_good_ones(tmp_path: Path) -> None:
    double = Double(publish_after="immediately")
    for guid, params in {**GOOD, **HOSTILE, **ODD_GUIDS}.items():
        double.add(guid, params)
    # an entry whose parameters are not an object at all (the API says object)
    double.add("SOFTINST-h-not-an-object", {})
    double.customers["SOFTINST-h-not-an-object"]["parameters"] = ["not", "an", "object"]
    double.invalidate()
    with ThreadedDouble(double) as served:
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db")
        started = time.monotonic()
        result = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr[-3000:]
        again = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr[-3000:]
        technical, published, errors, calls = served.run(
            lambda: (dict(double.technical), dict(double.published), dict(double.errors), dict(double.calls)))
    summary = next(json.loads(l) for l in again.stderr.splitlines() if '"tick done"' in l)
    print(f"\nhostile tick: {len(GOOD)} good, {len(ODD_GUIDS)} odd guids, {len(HOSTILE)} hostile, 1 unusable: "
          f"exit 0 in {elapsed:.2f} s; second tick planned {summary['planned']}")

    for guid in {**GOOD, **ODD_GUIDS}:
        title = technical_title(PREFIX, guid)
        assert len(title) <= MAX_TITLE and "___" not in title
        assert title in technical, guid
        assert technical[title]["parameters"] == {**GOOD, **ODD_GUIDS}[guid]
        assert published[guid].get("domain"), published[guid]
        assert guid not in errors
    assert len(technical) == len(GOOD) + len(ODD_GUIDS)  # hostile ones are never requested
    for guid in HOSTILE:
        shown = published[guid]
        problems = json.loads(shown["request-error-list"])
        assert problems and all(isinstance(p, str) and len(p) < 1000 for p in problems), problems
        assert errors[guid] == shown["message"] and errors[guid].startswith("The CDN could not accept this entry")
        assert len(json.dumps(shown)) < 16 * 1024, guid  # a 1 MB value is not echoed back
        print(f"  {guid}: {problems}")
    # the unusable entry: neither requested nor destroyed, nor failing the tick; its customer
    # is told why (issue 10, item 1)
    assert json.loads(published["SOFTINST-h-not-an-object"]["request-error-list"]) == [
        "parameters: not a JSON object (got an array)"]
    assert summary["planned"].get("unusable") == 1
    # the second tick requests nothing again, and each error was published once
    assert "request" not in summary["planned"] and "update" not in summary["planned"]
    assert calls["slapos.post.v0.software_instance"] == len(GOOD) + len(ODD_GUIDS)
    assert calls["slapos.put.v0.software_instance_error"] == len(HOSTILE) + 1


@pytest.mark.slapproxy
def test_one_customer_with_infinity_in_its_parameters_does_not_stop_the_others(cdn_site, tmp_path: Path) -> None:
    from devtools.devmaster import write_config as slapproxy_config

    site = cdn_site
    good = [site.add_customer(f"good-{n}", {"url": f"https://good-{n}.example"}) for n in range(3)]
    # what a customer can send the master's JSON API: Python's json reads 1e400 as inf
    body = json.dumps({"title": "evil", "software_release_uri": site.requester_sr, "software_type": "default",
                       "shared": True, "state": "started",
                       "parameters": {"url": "https://evil.example", "virtualhostroot-http-port": "INF"}})
    body = body.replace('"INF"', "1e400")
    request = urllib.request.Request(f"{site.proxy.url}/slapos.post.v0.software_instance", data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        evil = json.loads(response.read().replace(b"Infinity", b"null"))["instance_guid"]
    listed = urllib.request.urlopen(urllib.request.Request(
        f"{site.proxy.url}/slapos.allDocs.v0.instance_node_instance_list",
        data=json.dumps({"instance_guid": site.requester_guid}).encode(),
        headers={"Content-Type": "application/json"}, method="POST"), timeout=30).read()
    assert b"Infinity" in listed  # the master lists it so

    config = slapproxy_config(tmp_path / "c.toml", site, database=tmp_path / "state" / "cdnreq.db",
                              domain={"retention_s": 0})
    result = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
    print(f"\nInfinity in one customer's parameters: exit {result.returncode}: "
          f"{(tick_error(result.stderr) or '')[:200]}")
    assert result.returncode == 0, result.stderr[-2000:]
    titles = {e["title"] for e in site.technical_entries()}
    assert {technical_title(PREFIX, g) for g in good} <= titles
    assert technical_title(PREFIX, evil) not in titles
    assert json.loads(site.customer(evil)["connection_parameters"]["request-error-list"])


def tick_error(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if '"tick failed"' in line:
            return json.loads(line).get("error")
    return None


# == 2. DNS faults ============================================================================

SECRET = b"dns-faults-test-secret-0123456789abcdef"
DAY = 86400.0
FAULT_POLICY = DomainPolicy(recheck_interval_s=DAY, grace_s=DAY, release_on_recheck_failure=True)


class Recording:
    def __init__(self, inner: Resolver) -> None:
        self.inner = inner
        self.txt: dict[str, Lookup] = {}

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        result = await self.inner.txt_many(list(names))
        self.txt.update(result)
        return result

    async def addresses(self, name: str) -> Lookup:
        return await self.inner.addresses(name)

    async def close(self) -> None:
        await self.inner.close()


def fault(devdns: DevDns, name: str, kind: str, token: str | None) -> None:
    """Make `name` fail in the way `kind` says, even though it holds `token`."""
    if kind == "cname-loop":
        devdns.set_cname(name, f"loop-a.{name}")
        devdns.set_cname(f"loop-a.{name}", f"loop-b.{name}")
        devdns.set_cname(f"loop-b.{name}", name)
        return
    if kind == "cname-too-long":  # 10 hops to the token: more than cdnreq follows
        for hop in range(10):
            devdns.set_cname(name if hop == 0 else f"hop{hop}.{name}", f"hop{hop + 1}.{name}")
        devdns.set_txt(f"hop10.{name}", token or "nothing")
        devdns.follow_cnames = False
        return
    if token is not None:
        devdns.set_txt(name, token)
    devdns.behave(name, kind)


FAULTS = ["servfail", "refused", "timeout", "cname-loop", "cname-too-long"]


@pytest.mark.parametrize("kind", FAULTS)
async def test_dns_fault_keeps_validated_instances_and_validates_no_pending_one(devdns: DevDns, kind: str) -> None:
    """V: validated long ago, its re-check due and past the grace period: it must stay.
    P: pending, its token IS behind the failing names: it must stay pending.
    C: pending, its token answers normally: validated in the same batch."""
    v, p, c = InstanceGuid("SOFTINST-V"), InstanceGuid("SOFTINST-P"), InstanceGuid("SOFTINST-C")
    challenges = {g: issue(SECRET, g, f"www.{g[-1].lower()}.example", NOW - 90 * DAY) for g in (v, p, c)}
    claim = HostClaim("www.v.example", v, "v.example", NOW - 90 * DAY, NOW - 2 * DAY, failing_since=NOW - 30 * DAY)
    for g in (v, p):
        domain = f"{g[-1].lower()}.example"
        fault(devdns, f"{LABEL}.www.{domain}", kind, challenges[g].token)
        fault(devdns, f"{LABEL}.{domain}", kind, challenges[g].token)
    devdns.set_txt(f"{LABEL}.www.c.example", challenges[c].token)
    resolver = Recording(Resolver(nameservers=[devdns.address], timeout_s=0.3, tries=1))
    domains = Domains(policy=FAULT_POLICY, secret=SECRET, resolver=resolver, hosts=[claim], challenges=challenges)
    instances = [SharedInstance.of(g, {"url": "https://b.example", "custom_domain": f"www.{g[-1].lower()}.example"})
                 for g in (v, p, c)]
    known = {v: Record(v, Title(technical_title(PREFIX, v)), Phase.LIVE, NOW - 90 * DAY, NOW - DAY,
                       served=("www.v.example",))}
    try:
        started = time.monotonic()
        out = await domains.step(instances, known, NOW, tick=1)
        elapsed = time.monotonic() - started
        # a second tick, still failing: still nothing lost, nothing gained
        again = await domains.step(instances, known, NOW + 3600, tick=2)
    finally:
        await resolver.close()
    for step in (out, again):
        assert step.gates[v].status is Status.OK, step.gates[v]
        assert step.gates[p].status is Status.PENDING, step.gates[p]
        assert "www.v.example" not in step.host_deletes and not [e for e in step.events if e.action == "release"]
        assert "www.p.example" not in step.host_upserts
    assert out.gates[c].status is Status.OK and "www.c.example" in out.host_upserts
    kept = domains.index.by_host["www.v.example"]  # its proof as it was; only asked again later
    assert (kept.guid, kept.proven_at, kept.failing_since) == (claim.guid, claim.proven_at, claim.failing_since)
    assert not domains.index.owns(p, "www.p.example")
    names = [f"{LABEL}.www.p.example", f"{LABEL}.p.example", f"{LABEL}.www.v.example"]
    assert {resolver.txt[n].outcome for n in names if n in resolver.txt} == {"unknown"}, {
        n: resolver.txt.get(n) for n in names}
    assert out.counts["dns_unknown"] >= 3 and out.counts["recheck_unknown"] == 1
    assert elapsed < 5, f"{kind}: the step took {elapsed:.1f} s"
    print(f"\n{kind}: V kept, P pending, C validated; "
          f"{out.counts['dns_unknown']} unknown lookups; {elapsed:.2f} s")


async def test_truncated_udp_answers_are_retried_over_tcp(devdns: DevDns) -> None:
    """A pending instance behind a truncating name is validated (over TCP), and a
    validated one's re-check passes, with 300 TXT records on the name around the token."""
    p, v = InstanceGuid("SOFTINST-P"), InstanceGuid("SOFTINST-V")
    challenges = {g: issue(SECRET, g, f"www.{g[-1].lower()}.example", NOW - 90 * DAY) for g in (p, v)}
    claim = HostClaim("www.v.example", v, "v.example", NOW - 90 * DAY, NOW - 2 * DAY)
    for g in (p, v):
        name = f"{LABEL}.www.{g[-1].lower()}.example"
        decoys = [f"v=spf1 include:decoy{n}.example -all" for n in range(299)]
        devdns.set_txt(name, *decoys[:150], challenges[g].token, *decoys[150:])
        devdns.behave(name, "truncate")
    resolver = Recording(Resolver(nameservers=[devdns.address], timeout_s=0.5, tries=2))
    domains = Domains(policy=FAULT_POLICY, secret=SECRET, resolver=resolver, hosts=[claim], challenges=challenges)
    instances = [SharedInstance.of(g, {"url": "https://b.example", "custom_domain": f"www.{g[-1].lower()}.example"})
                 for g in (p, v)]
    known = {v: Record(v, Title(technical_title(PREFIX, v)), Phase.LIVE, NOW - 90 * DAY, NOW - DAY,
                       served=("www.v.example",))}
    try:
        out = await domains.step(instances, known, NOW, tick=1)
    finally:
        await resolver.close()
    assert devdns.tcp_queries >= 2
    assert out.gates[p].status is Status.OK and "www.p.example" in out.host_upserts
    assert out.gates[v].status is Status.OK and out.host_upserts["www.v.example"].checked_at == NOW
    assert resolver.txt[f"{LABEL}.www.p.example"].outcome == "found"
    assert len(resolver.txt[f"{LABEL}.www.p.example"].values) == 300
    print(f"\ntruncate: {devdns.tcp_queries} TCP queries; 300 TXT records read; both validated")


async def test_many_txt_records_without_the_token_validate_nothing(devdns: DevDns) -> None:
    p, other = InstanceGuid("SOFTINST-P"), InstanceGuid("SOFTINST-O")
    challenge = issue(SECRET, p, "www.p.example", NOW)
    token = challenge.token
    near_misses = [
        token[:-1], token + "x", token.upper(), token + token, f"v=spf1 {token}", token[:20],
        issue(SECRET, other, "www.p.example", NOW).token,  # another instance's token for the same domain
        issue(b"another-secret-0123456789abcdef", p, "www.p.example", NOW).token,
        token.replace("cdnreq-", "cdnreq_"), "\x00" + token, token + "\x00",
    ]
    records = near_misses + [f"filler-{n}-" + "z" * 200 for n in range(200)] + ["y" * 2000]  # one record of 8 strings
    for name in (f"{LABEL}.www.p.example", f"{LABEL}.p.example"):
        devdns.set_txt(name, *records)
        devdns.behave(name, "truncate")  # too big for UDP anyway
    resolver = Recording(Resolver(nameservers=[devdns.address], timeout_s=0.5, tries=2))
    domains = Domains(policy=FAULT_POLICY, secret=SECRET, resolver=resolver, challenges={p: challenge})
    instance = SharedInstance.of(p, {"url": "https://b.example", "custom_domain": "www.p.example"})
    try:
        out = await domains.step([instance], {}, NOW, tick=1)
    finally:
        await resolver.close()
    assert out.gates[p].status is Status.PENDING and out.host_upserts == {}
    lookup = resolver.txt[f"{LABEL}.www.p.example"]
    assert lookup.outcome in ("found", "absent") and len(lookup.values) == len(records)
    assert "y" * 2000 in lookup.values  # the long record's strings joined back
    print(f"\nmany TXT: {len(records)} records, {len(near_misses)} near misses: still pending")


async def test_a_cname_to_the_token_is_followed(devdns: DevDns) -> None:
    """The counterpart of the loops: a legitimate CNAME on the challenge name validates."""
    p = InstanceGuid("SOFTINST-P")
    challenge = issue(SECRET, p, "www.p.example", NOW)
    devdns.follow_cnames = False  # cdnreq follows the chain itself
    devdns.set_cname(f"{LABEL}.www.p.example", "proofs.dns-provider.example")
    devdns.set_cname("proofs.dns-provider.example", "p.proofs.dns-provider.example")
    devdns.set_txt("p.proofs.dns-provider.example", challenge.token)
    resolver = Recording(Resolver(nameservers=[devdns.address], timeout_s=0.5, tries=1))
    domains = Domains(policy=FAULT_POLICY, secret=SECRET, resolver=resolver, challenges={p: challenge})
    try:
        out = await domains.step(
            [SharedInstance.of(p, {"url": "https://b.example", "custom_domain": "www.p.example"})], {}, NOW, tick=1)
    finally:
        await resolver.close()
    assert out.gates[p].status is Status.OK and "www.p.example" in out.host_upserts


# == 3. exposure ==============================================================================


def pem_body_lines(pem: bytes | str) -> list[str]:
    text = pem.decode() if isinstance(pem, bytes) else pem
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----")]


def http_get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except OSError as error:
        return None, str(error)


def test_secrets_never_appear_in_logs_metrics_status_or_events(tmp_path: Path, devdns: DevDns) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("cdnreq-requester.example")
    files = tmp_path / "tls"
    files.mkdir()
    ca.cert_pem.write_to_path(str(files / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(files / "client.pem"))
    client.private_key_pem.write_to_path(str(files / "client.key"))
    master_key = client.private_key_pem.bytes()

    site_cert = ca.issue_cert("shop-tls.example")  # a customer's own certificate and key
    customer_key = site_cert.private_key_pem.bytes().decode()
    customer_crt = site_cert.cert_chain_pems[0].bytes().decode()
    stray_key = ca.issue_cert("other.example").private_key_pem.bytes().decode()  # does not match
    secret = "exposure-secret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:32]
    (tmp_path / "domain-secret").write_text(secret + "\n")
    (tmp_path / "domain-secret").chmod(0o600)

    # the master: HTTPS, and only for a client with a certificate of this CA
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    double = Double(publish_after="immediately")
    customers = {
        "SOFTINST-tls": {"url": "https://b.example", "ssl_crt": customer_crt, "ssl_key": customer_key},
        "SOFTINST-stray": {"url": "https://b.example", "ssl_crt": customer_crt, "ssl_key": stray_key},
        "SOFTINST-keyfield": {"url": "https://b.example", "ssl_key": customer_key},  # no crt: refused
        "SOFTINST-domain": {"url": "https://b.example", "custom_domain": "www.shop.example"},
    }
    for guid, params in customers.items():
        double.add(guid, params)
    logs = tmp_path / "daemon.log"
    with ThreadedDouble(double, context) as served:
        config = write_config(
            tmp_path / "c.toml",
            {"url": served.url, "cert_file": str(files / "client.pem"), "key_file": str(files / "client.key"),
             "ca_file": str(files / "ca.pem")},
            tmp_path / "state" / "cdnreq.db", dns=[devdns.address],
            domain={"secret_file": str(tmp_path / "domain-secret")},
            logging={"level": "debug"},
        )
        base = "http://" + next(l.split('"')[1] for l in config.read_text().splitlines() if l.startswith("listen"))
        # a client without the certificate is refused: the key is what gets cdnreq in
        plain = ssl.create_default_context(cafile=str(files / "ca.pem"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(urllib.request.Request(f"{served.url}/x", data=b"{}"), context=plain, timeout=5)

        out = open(logs, "wb")
        daemon = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stdout=out, stderr=out)
        out.close()
        pages: dict[str, str] = {}
        try:
            deadline = time.monotonic() + 60

            def wait(what: str, done: Callable[[], bool]) -> None:
                while not done():
                    assert daemon.poll() is None, logs.read_text()[-3000:]
                    assert time.monotonic() < deadline, f"{what}\n{logs.read_text()[-3000:]}"
                    time.sleep(0.05)

            wait("the customer with a domain never got its token",
                 lambda: "txt_value" in served.run(lambda: double.published.get("SOFTINST-domain", {})))
            token = served.run(lambda: double.published["SOFTINST-domain"]["txt_value"])
            devdns.set_txt(f"{LABEL}.shop.example", token)
            wait("the proven domain was never requested",
                 lambda: served.run(lambda: technical_title(PREFIX, "SOFTINST-domain") in double.technical))
            wait("the TLS customer was never requested",
                 lambda: served.run(lambda: technical_title(PREFIX, "SOFTINST-tls") in double.technical))
            time.sleep(1.0)  # a few more ticks
            for path in ("/metrics", "/status", "/readyz", *(f"/instances/{urllib.parse.quote(g, safe='')}"
                                                             for g in customers)):
                code, pages[path] = http_get(base + path)
                assert code in (200, 503), (path, code, pages[path])
            for command in (["status", "--json", "--all"], *(["explain", g, "--json"] for g in customers)):
                result = subprocess.run([CDNREQ, *command, "--config", str(config)], capture_output=True,
                                        text=True, timeout=60)
                # status exits 1 while the daemon is not ready (/readyz 503 above)
                assert result.returncode in ((0, 1) if command[0] == "status" else (0,)), result.stderr
                assert "Traceback" not in result.stderr, result.stderr
                pages["cdnreq " + " ".join(command)] = result.stdout + result.stderr
            check = subprocess.run([CDNREQ, "check-config", "--config", str(config)], capture_output=True, text=True)
            pages["cdnreq check-config"] = check.stdout + check.stderr
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                assert daemon.wait(timeout=30) == 0
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
        technical = served.run(lambda: dict(double.technical))
        published = served.run(lambda: dict(double.published))

    database = tmp_path / "state" / "cdnreq.db"
    conn = sqlite3.connect(database)
    try:
        pages["events table"] = "\n".join(
            " ".join(map(str, row)) for row in conn.execute("SELECT * FROM events"))
        pages["ticks table"] = "\n".join(" ".join(map(str, row)) for row in conn.execute("SELECT * FROM ticks"))
        pages["instances table"] = "\n".join(" ".join(map(str, row)) for row in conn.execute("SELECT * FROM instances"))
    finally:
        conn.close()
    pages["stderr"] = logs.read_text(errors="replace")
    pages["database files"] = b"".join(
        p.read_bytes() for p in database.parent.iterdir() if p.name.startswith("cdnreq.db")).decode("latin-1")

    needles = {"domain secret": [secret, secret[:24]]}
    needles["master TLS key"] = pem_body_lines(master_key)
    needles["customer ssl_key"] = pem_body_lines(customer_key)
    needles["customer stray ssl_key"] = pem_body_lines(stray_key)
    found = [
        (what, where) for where, text in pages.items() for what, lines in needles.items()
        if any(line in text for line in lines)
    ]
    print(f"\nexposure: {sum(len(v) for v in needles.values())} secret lines looked for in {len(pages)} outputs "
          f"({sum(len(t) for t in pages.values()) // 1024} KB): {found or 'none found'}")
    assert found == []

    # the technical CDN does get the customer's key (it serves the site); the customer is not sent it back
    assert technical[technical_title(PREFIX, "SOFTINST-tls")]["parameters"]["ssl_key"] == customer_key
    shown = json.loads(pages["/instances/SOFTINST-tls"])
    assert "ssl_key" not in json.dumps(shown["published"]) and "ssl_key" not in published["SOFTINST-tls"]
    assert json.loads(published["SOFTINST-stray"]["request-error-list"]), published["SOFTINST-stray"]
    assert json.loads(published["SOFTINST-keyfield"]["request-error-list"]), published["SOFTINST-keyfield"]
    assert "master_calls" in pages["stderr"] and "tick done" in pages["stderr"]
    assert "cdnreq_ticks_total" in pages["/metrics"]

"""A master that misbehaves: cdnreq through a fault-injecting proxy (issue 6).

Every test runs the real `cdnreq` command in subprocesses against a real
slapproxy, through :class:`faultproxy.FaultProxy` on loopback, and judges the
outcome from what operators and customers see: cdnreq's store (instances,
events, ticks), slapproxy's own access log, the technical CDN's entries and
the connection parameters published to the customers. The whole module runs
on each store engine: SQLite, and PostgreSQL (one node; each deployment's
database a copy of the base state's, made with CREATE DATABASE ... TEMPLATE).

The deployment: ten customers without a custom_domain (nothing to prove by
DNS), ``retention_s = 0`` (a removal destroys at once), the default guards
(``max_destroy_fraction = 0.5``, ``allow_empty = false``), a 1 s timeout per
call and a near-zero retry backoff so recovery takes ticks, not minutes.

The base state, reached once and copied for each test (slapproxy's database
and cdnreq's): customers 0-7 and 9 live (the technical CDN answered and the
answer was relayed), customer 8 requested but not answered yet. Each scenario
then changes things so that one tick needs every kind of call: customers 10
and 11 are added (request, publish), customer 2 changes its parameters
(update), customer 9 leaves (destroy), and the technical CDN answers customer
8 (poll, publish). The same scenario is run once without faults: its end
state is the reference.

For each fault (on one call, for some customers or for every call), two ticks
run through the fault (the technical CDN answering in between), then the fault
is cleared and ticks run until quiet. After each tick through the fault:
  * no destroy beyond the guard: only customer 9, who left, may be destroyed
    (nothing at all while the listing is half or empty), and every other
    technical entry is still on the master;
  * no instance forgotten: the store keeps every customer still on the master;
  * no customer loses a published result: what each customer sees never goes
    from the CDN's answer to "in progress" or nothing, nor to anything else;
  * failures are counted: a listing that cannot be used fails the tick
    (`cdnreq once` exits 1, the ticks table says "failed", nothing changes),
    other calls fail their action, once per faulted call, in the tick summary;
  * what the proxy forwarded is exactly what slapproxy's log shows.
After recovery, the end state (technical entries and their parameters and
answers, the customers' connection parameters, the store's records) is the
reference's. `test_readyz_*` checks `/readyz` on a running `cdnreq run`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faultproxy import (
    GET,
    LIST,
    PUBLISH,
    REQUEST,
    Call,
    Fault,
    FaultProxy,
    drop_after_ok,
    duplicate,
    empty_list,
    half_list,
    hang,
    html200,
    other_instance,
    reset,
    status,
    trickle,
    truncate,
)

from devtools.devmaster import (
    CdnSite,
    Slapproxy,
    find_slapos,
    setup_cdn,
    write_config,
)
from cdnreq.model import Event, Phase, Record
from cdnreq.decide.transitions import IN_PROGRESS
from cdnreq.decide.titles import technical_title
from cdnreq.configfile import load_config
from cdnreq.service.opening import open_store
from tests import storeread
from tests.storeread import events_since

pytestmark = [pytest.mark.slapproxy, pytest.mark.faults]

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
PREFIX = "cdnreq-"
REQUESTER = "cdn-requester"  # slapproxy's technical guids: <title>___<requester title>___1
CUSTOMERS = 10
FAULT_TICKS = 2
SETTLE_TICKS = 8
WITHHELD = 8  # the customer whose technical answer is still pending in the base state
LEAVING = 9  # the customer who leaves in every scenario
ADDED = (10, 11)
UPDATED = 2

INJECTED: Counter[str] = Counter()  # fault name -> calls it was applied to, over the module
INJECTED_TIMED: Counter[str] = Counter()  # the same, by the daemon test (depends on its timing)


# -- the customers -------------------------------------------------------------------


def guid(i: int) -> str:
    return f"customer-{i}______1"


def title(i: int) -> str:
    return technical_title(PREFIX, guid(i))


def tech_guid(i: int) -> str:
    return f"{title(i)}___{REQUESTER}___1"


def parameters(i: int) -> dict[str, str]:
    if i == UPDATED:
        return {"url": f"https://backend-{i}-v2.example", "enable_cache": "false"}
    return {"url": f"https://backend-{i}.example", "enable_cache": "true"}


def first_parameters(i: int) -> dict[str, str]:
    return {"url": f"https://backend-{i}.example", "enable_cache": "true"}


def answer_of(entry_title: str) -> dict[str, str]:
    """What the technical CDN publishes on an entry once deployed."""
    return {"domain": f"{entry_title}.cdn.example", "replication": "1"}


PRESENT = tuple(i for i in range(CUSTOMERS) if i != LEAVING) + ADDED  # on the master after the changes


def rank(i: int, shown: dict[str, Any] | None) -> int:
    """How good what customer i sees is: 2 its CDN answer, 1 in progress, 0 nothing,
    -1 anything else (another customer's answer, an error...)."""
    if shown == answer_of(title(i)):
        return 2
    if shown == IN_PROGRESS:
        return 1
    if not shown:
        return 0
    return -1


# -- the deployment --------------------------------------------------------------------


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite database (WAL included)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@dataclass
class TickResult:
    process: subprocess.CompletedProcess
    calls: list[Call]  # what cdnreq sent through the proxy during the tick
    upstream: list[str]  # what slapproxy's access log shows for the same window
    row: dict[str, Any]  # the tick's row in the ticks table

    @property
    def faulted(self) -> list[Call]:
        return [c for c in self.calls if c.fault is not None]

    @property
    def failed_actions(self) -> int:
        results = (self.row.get("summary") or {}).get("results", {})
        return sum(n for key, n in results.items() if key.endswith(":failed"))


@dataclass
class EndState:
    tech: dict[str, tuple[dict, dict]]  # technical entry title -> (parameters, connection parameters)
    customers: dict[str, dict]  # customer guid -> connection parameters it sees
    records: dict[str, dict[str, Any]]  # customer guid -> the record's lasting fields


LASTING = (
    "phase", "title", "tech_guid", "param_hash", "requested_state", "spec_hash", "connection",
    "published", "published_error", "last_error", "failures",
)


@dataclass
class Deployment:
    site: CdnSite
    proxy: FaultProxy
    config: Path
    database: Path
    withheld: set[str] = field(default_factory=set)  # entry titles the CDN does not answer yet
    log_offset: int = 0

    # -- the parties ------------------------------------------------------------------

    def change(self) -> None:
        """The customers' side of the scenario."""
        for i in ADDED:
            self.site.add_customer(f"customer-{i}", parameters(i))
        self.site.add_customer(f"customer-{UPDATED}", parameters(UPDATED))
        self.site.remove_customer(f"customer-{LEAVING}")

    def cdn_step(self) -> int:
        """The technical CDN answers every entry it hosts that has no answer yet."""
        published = 0
        for entry in self.site.technical_entries():
            if entry["title"] in self.withheld:
                continue
            if not self.site.proxy.get(entry["instance_guid"])["connection_parameters"]:
                self.site.publish_as_cdn(entry["instance_guid"], answer_of(entry["title"]))
                published += 1
        return published

    # -- cdnreq -------------------------------------------------------------------------

    def tick(self) -> TickResult:
        mark = len(self.proxy.log)
        self.log_offset = self.site.proxy.log_path.stat().st_size
        process = subprocess.run(
            [CDNREQ, "once", "--config", str(self.config)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
        )
        calls = self.proxy.log[mark:]
        with open(self.site.proxy.log_path, "rb") as f:
            f.seek(self.log_offset)
            upstream = re.findall(r'POST /(slapos\.[a-zA-Z0-9_.]+) HTTP', f.read().decode("utf-8", "replace"))
        assert process.returncode in (0, 1), process.stderr[-3000:]
        return TickResult(process, calls, upstream, self.ticks()[-1])

    def settle(self) -> list[TickResult]:
        """Ticks (the CDN answering before each) until one lists and nothing else."""
        done: list[TickResult] = []
        for _ in range(SETTLE_TICKS):
            answered = self.cdn_step()
            result = self.tick()
            done.append(result)
            assert result.process.returncode == 0, result.process.stderr[-3000:]
            pending = {f"{t}___{REQUESTER}___1" for t in self.withheld}  # polled, unanswered: not news
            busy = [c.name for c in result.calls if c.name != LIST and not (c.name == GET and c.body.get("instance_guid") in pending)]
            if not answered and not busy:
                return done
        pytest.fail(f"not quiet after {SETTLE_TICKS} ticks; last: {done[-1].row}")

    # -- what there is to see ---------------------------------------------------------------

    def store(self) -> tuple[dict[str, Record], list[Event]]:
        async def go():
            store = await open_store(load_config(self.config), lock=False)
            try:
                return await store.load(), [e for _, e in await events_since(store, 0, 1_000_000)]
            finally:
                await store.close()

        return asyncio.run(go())

    def ticks(self) -> list[dict[str, Any]]:
        rows = storeread.query(self.config, "SELECT id, result, summary FROM ticks ORDER BY id")
        return [{"id": i, "result": r, "summary": json.loads(s) if s else None} for i, r, s in rows]

    def shown(self) -> dict[int, dict]:
        """What each present customer sees."""
        return {i: self.site.customer(guid(i))["connection_parameters"] for i in PRESENT}

    def end_state(self) -> EndState:
        tech = {}
        for entry in self.site.technical_entries():
            full = self.site.proxy.get(entry["instance_guid"])
            tech[entry["title"]] = (entry["parameters"], full["connection_parameters"])
        customers = {e["instance_guid"]: self.site.customer(e["instance_guid"])["connection_parameters"]
                     for e in self.site.customers()}
        records, _ = self.store()
        lasting = {g: {k: getattr(r, k) for k in LASTING} for g, r in records.items()}
        return EndState(tech, customers, lasting)


def _check_slapos() -> None:
    try:
        find_slapos()
    except FileNotFoundError as exc:
        pytest.fail(f"slapproxy is needed by this test and cannot be started: {exc}", pytrace=False)


class Engine:
    """Where a deployment's store lives: an SQLite file beside it, or a new
    PostgreSQL database, copied from the base state's as a template."""

    def __init__(self, name: str, server: Any = None):
        self.name, self.server = name, server

    def store(self, template: str | None = None) -> tuple[dict[str, Any], str | None]:
        """([store] of a new store, its PostgreSQL database name or None)."""
        if self.server is None:
            return {}, None
        database = f"faults_{uuid.uuid4().hex[:12]}"
        url = self.server.create_database(database, template=template)
        return {"url": url, "sslmode": "disable", "lease_s": 2.0, "renew_s": 0.5}, database


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each scenario on each store engine: nothing a faulty master does may differ by engine."""
    if request.param == "sqlite":
        return Engine("sqlite")
    return Engine("postgresql", request.getfixturevalue("pg_server"))


@dataclass
class Base:
    """The base state's files (its PostgreSQL database on that engine), and
    the reference end state of the scenario."""

    engine: Engine
    pg_database: str | None
    directory: Path
    requester_guid: str
    requester_partition: str
    cdn_guid: str
    cdn_partition: str
    reference: EndState | None = None
    reference_ticks: int = 0


class Deployments:
    """Starts deployments from the base state; stops them all at the end."""

    def __init__(self, base: Base):
        self.base = base
        self.counter = INJECTED
        self.running: list[tuple[Slapproxy, FaultProxy]] = []

    def restore(self, where: Path, **daemon: Any) -> Deployment:
        base = self.base
        copy_db(base.directory / "proxy.db", where / "slapproxy" / "proxy.db")
        store, _ = base.engine.store(template=base.pg_database)
        if base.pg_database is None:
            copy_db(base.directory / "cdnreq.db", where / "state" / "cdnreq.db")
        (where / "state").mkdir(parents=True, exist_ok=True)
        shutil.copy(base.directory / "domain-secret", where / "state" / "domain-secret")
        slapproxy = Slapproxy(where / "slapproxy")
        slapproxy.start()
        proxy = FaultProxy(slapproxy.url, requester=REQUESTER, host_partition=base.cdn_partition)
        self.running.append((slapproxy, proxy))
        proxy.start()
        site = CdnSite(slapproxy, base.requester_guid, base.requester_partition, base.cdn_guid, base.cdn_partition)
        return Deployment(site, proxy, *configure(where, site, proxy, store, **daemon))

    def stop(self) -> None:
        for slapproxy, proxy in self.running:
            try:
                for call in proxy.log:
                    if call.fault is not None:
                        self.counter[call.fault] += 1
                proxy.stop()
            finally:
                slapproxy.stop()
        self.running.clear()


def configure(where: Path, site: CdnSite, proxy: FaultProxy, store: dict[str, Any], **daemon: Any) -> tuple[Path, Path]:
    database = where / "state" / "cdnreq.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    config = write_config(
        where / "cdnreq.toml", site, database=database,
        master={"url": proxy.url, "timeout_s": 1},
        domain={"retention_s": 0},
        daemon={"retry_base_s": 0.01, "retry_max_s": 0.01, **daemon},
        **({"store": store} if store else {}),
    )
    return config, database


def run_scenario(dep: Deployment, on_tick: Callable[[int, TickResult], None] | None = None,
                 before_ticks: Callable[[], None] | None = None) -> list[TickResult]:
    """The customers change things, the CDN answers, two ticks (through the
    faults the caller injected), then the faults are cleared and ticks run
    until quiet. Returns the ticks through the faults."""
    dep.change()
    dep.withheld.clear()
    if before_ticks is not None:
        before_ticks()
    through: list[TickResult] = []
    for k in range(FAULT_TICKS):
        dep.cdn_step()
        result = dep.tick()
        through.append(result)
        if on_tick is not None:
            on_tick(k, result)
    dep.proxy.clear()
    dep.settle()
    return through


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Base]:
    """The base state, built once: ten customers, 0-7 and 9 live, 8 awaiting
    its answer; then the scenario without faults, for the reference."""
    _check_slapos()
    root = tmp_path_factory.mktemp("faults-base")
    slapproxy = Slapproxy(root / "build" / "slapproxy")
    slapproxy.start()
    try:
        site = setup_cdn(slapproxy)
        for i in range(CUSTOMERS):
            site.add_customer(f"customer-{i}", first_parameters(i))
        with FaultProxy(slapproxy.url, requester=REQUESTER, host_partition=site.cdn_partition) as proxy:
            store, pg_database = engine.store()
            config, database = configure(root / "build", site, proxy, store)
            building = Deployment(site, proxy, config, database, withheld={title(WITHHELD)})
            building.settle()
            records, _ = building.store()
            assert {g: r.phase for g, r in records.items()} == {
                guid(i): Phase.REQUESTED if i == WITHHELD else Phase.LIVE for i in range(CUSTOMERS)
            }
    finally:
        slapproxy.stop()
    snapshot = root / "snapshot"
    copy_db(slapproxy.database_path, snapshot / "proxy.db")
    if pg_database is None:
        copy_db(database, snapshot / "cdnreq.db")
    shutil.copy(database.parent / "domain-secret", snapshot / "domain-secret")
    made = Base(engine, pg_database, snapshot, site.requester_guid, site.requester_partition, site.cdn_guid, site.cdn_partition)

    deployments = Deployments(made)
    try:
        dep = deployments.restore(root / "reference")
        through = run_scenario(dep)
        assert [t.process.returncode for t in through] == [0] * FAULT_TICKS
        made.reference = dep.end_state()
        made.reference_ticks = len(dep.ticks())
        _check_reference(made.reference)
    finally:
        deployments.stop()
    yield made


def _check_reference(ref: EndState) -> None:
    """The scenario without faults ends where it should."""
    assert sorted(ref.tech) == sorted(title(i) for i in PRESENT)
    for i in PRESENT:
        assert ref.tech[title(i)] == (parameters(i), answer_of(title(i))), i
        assert ref.customers[guid(i)] == answer_of(title(i)), i
        record = ref.records[guid(i)]
        assert record["phase"] is Phase.LIVE and record["tech_guid"] == tech_guid(i), record
        assert record["failures"] == 0 and record["last_error"] is None, record
    assert set(ref.records) == {guid(i) for i in PRESENT}


@pytest.fixture
def deployments(base: Base) -> Iterator[Deployments]:
    made = Deployments(base)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module", autouse=True)
def fault_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """Says how many faults the module injected, by kind (the README reports it)."""
    yield
    line = f"test_faults_master: {sum(INJECTED.values())} faults injected (" + ", ".join(
        f"{name} {n}" for name, n in sorted(INJECTED.items())
    ) + f"), and {sum(INJECTED_TIMED.values())} by the daemon test"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        print(line)
        return
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        reporter.write_line("")
        reporter.write_line(line)


# -- the invariants ---------------------------------------------------------------------


def assert_same_end_state(dep: Deployment, reference: EndState) -> None:
    end = dep.end_state()
    assert end.tech == reference.tech, "technical entries differ from the run without faults"
    assert end.customers == reference.customers, "customers see something else than after the run without faults"
    assert sorted(end.records) == sorted(reference.records), "not the same instances in the store"
    # what is in effect first; then whether a recovered instance still says it fails
    for g in sorted(end.records):
        mine, theirs = end.records[g], reference.records[g]
        assert {k: v for k, v in mine.items() if k not in HEALTH} == {k: v for k, v in theirs.items() if k not in HEALTH}, (
            f"record of {g} differs from the run without faults")
    for g in sorted(end.records):
        mine, theirs = end.records[g], reference.records[g]
        assert {k: mine[k] for k in HEALTH} == {k: theirs[k] for k in HEALTH}, (
            f"{g} recovered but its record still says it fails")


HEALTH = ("last_error", "failures")


class Watch:
    """Checks the invariants after each tick through a fault."""

    def __init__(self, dep: Deployment, *, may_destroy: set[str], tick_fails: bool, action_fails: bool):
        self.dep = dep
        self.may_destroy = may_destroy
        self.tick_fails = tick_fails
        self.action_fails = action_fails
        self.records, self.events = dep.store()
        self.ranks: dict[int, int] = {}

    def start(self) -> None:
        """Right before the first tick through the fault: what customers see now."""
        self.records, self.events = self.dep.store()
        self.ranks = {i: rank(i, shown) for i, shown in self.dep.shown().items()}

    def __call__(self, k: int, result: TickResult) -> None:
        dep = self.dep
        records, events = dep.store()
        new = events[len(self.events):]
        stderr = result.process.stderr[-3000:]
        # the proxy forwarded exactly what slapproxy saw
        forwarded = [c.name for c in result.calls if c.forwarded]
        assert result.upstream == forwarded, (result.upstream, [(c.name, c.fault) for c in result.calls])

        # no destroy beyond the guard, on cdnreq's side and on the master's
        destroyed = {e.instance_guid for e in new if e.action == "destroy"}
        assert destroyed <= self.may_destroy, f"tick {k}: destroyed {destroyed - self.may_destroy}"
        titles = {e["title"] for e in dep.site.technical_entries()}
        survivors = {title(i) for i in range(CUSTOMERS) if i != LEAVING}
        assert survivors <= titles, f"tick {k}: technical entries gone: {survivors - titles}"
        if guid(LEAVING) not in self.may_destroy:
            assert title(LEAVING) in titles

        # no instance forgotten
        for i in range(CUSTOMERS):
            done = {(e.instance_guid, e.action, e.outcome) for e in events}
            if i == LEAVING and {(guid(i), "destroy", "ok"), (guid(i), "destroy", "confirmed")} & done:
                continue
            assert guid(i) in records, f"tick {k}: customer {i} forgotten"
        forgotten = {e.instance_guid for e in new if e.action == "forget"}
        assert forgotten <= {guid(LEAVING)}, forgotten

        # no customer loses its published result, nor gets something worse
        for i, shown in dep.shown().items():
            now = rank(i, shown)
            assert now >= 0, f"tick {k}: customer {i} sees {shown}"
            assert now >= self.ranks.get(i, 0), f"tick {k}: customer {i} went from rank {self.ranks.get(i)} to {shown}"
            self.ranks[i] = now

        # failures are counted
        if self.tick_fails:
            assert result.process.returncode == 1, stderr
            assert result.row["result"] == "failed", result.row
            assert "tick failed" in stderr and LIST in result.row["summary"]["error"], result.row
            assert new == [] and records == self.records, "a failed tick changed the store"
        else:
            assert result.process.returncode == 0, stderr
            assert result.row["result"] == "ok", result.row
            if self.action_fails:
                assert result.failed_actions == len(result.faulted), (result.row, [(c.name, c.fault) for c in result.faulted])
                failing = {e.instance_guid for e in new if e.outcome == "failed"}
                assert len(failing) == len({c.body.get("title") or c.body.get("instance_guid") for c in result.faulted})
        self.records, self.events = records, events


# -- the fault matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    call: str
    fault: Fault
    victims: tuple[int, ...] | None = None  # customers whose calls get the fault; None: every call
    tick_fails: bool = False  # the listing cannot be used: the tick fails
    action_fails: bool = False  # each faulted call fails its action
    no_destroy: bool = False  # not even the leaving customer may be destroyed meanwhile
    marks: tuple = ()

    def match(self) -> Callable[[dict[str, Any]], bool] | None:
        if self.victims is None:
            return None
        if self.call == REQUEST:
            wanted = {title(i) for i in self.victims}
            return lambda body: body.get("title") in wanted
        if self.call == GET:
            wanted = {tech_guid(i) for i in self.victims}
        else:
            wanted = {guid(i) for i in self.victims}
        return lambda body: body.get("instance_guid") in wanted


ON_REQUESTS = (UPDATED, LEAVING, ADDED[0])  # an update, a destroy, a first request
ON_ANSWERS = (WITHHELD, *ADDED)  # polled, and published to

CASES = [
    # the listing: the tick fails, or is read with care
    Case("list-503", LIST, status(503), tick_fails=True),
    Case("list-reset", LIST, reset, tick_fails=True),
    Case("list-hang", LIST, hang, tick_fails=True),
    Case("list-trickle", LIST, trickle(200), tick_fails=True),
    Case("list-truncate", LIST, truncate, tick_fails=True),
    Case("list-html200", LIST, html200, tick_fails=True),
    Case("list-half", LIST, half_list, no_destroy=True),
    Case("list-empty", LIST, empty_list, no_destroy=True),
    Case("list-duplicate", LIST, duplicate),
    # requests, updates and destroys on the technical CDN
    Case("request-500", REQUEST, status(500), ON_REQUESTS, action_fails=True),
    Case("request-reset", REQUEST, reset, ON_REQUESTS, action_fails=True),
    Case("request-hang", REQUEST, hang, (UPDATED, LEAVING), action_fails=True),  # 1 s each: fewer victims
    Case("request-trickle", REQUEST, trickle(200), (LEAVING, ADDED[0]), action_fails=True),
    Case("request-truncate", REQUEST, truncate, ON_REQUESTS, action_fails=True),
    # reading the technical CDN's answer
    Case("get-502", GET, status(502), ON_ANSWERS, action_fails=True),
    Case("get-reset", GET, reset, ON_ANSWERS, action_fails=True),
    Case("get-truncate", GET, truncate, ON_ANSWERS, action_fails=True),
    # publishing to the customer
    Case("publish-500", PUBLISH, status(500), ON_ANSWERS, action_fails=True),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_fault_then_recovery(case: Case, deployments: Deployments, base: Base, tmp_path: Path):
    dep = deployments.restore(tmp_path)
    may_destroy = set() if case.no_destroy else {guid(LEAVING)}
    watch = Watch(dep, may_destroy=may_destroy, tick_fails=case.tick_fails, action_fails=case.action_fails)
    dep.proxy.inject(case.call, case.fault, times=None, match=case.match())
    through = run_scenario(dep, on_tick=watch, before_ticks=watch.start)

    assert all(t.faulted for t in through), "some tick through the fault met no fault: nothing was tested"
    ticks = dep.ticks()
    failed = [t for t in ticks if t["result"] == "failed"]
    assert len(failed) == (FAULT_TICKS if case.tick_fails else 0), failed
    assert ticks[-1]["result"] == "ok"
    if case.no_destroy:
        for t in through:
            assert "removals held" in t.process.stderr, t.process.stderr[-2000:]
            assert t.row["summary"].get("hold_reason"), t.row
    assert_same_end_state(dep, base.reference)


# -- acknowledged but lost ----------------------------------------------------------------------


def test_request_acknowledged_but_lost_is_requested_again(deployments: Deployments, base: Base, tmp_path: Path):
    """slapproxy may answer 200 to a request and not keep it. The next tick
    polls the entry, cannot read it back (403), and requests it again."""
    dep = deployments.restore(tmp_path)
    lost = ADDED[0]
    watch = Watch(dep, may_destroy={guid(LEAVING)}, tick_fails=False, action_fails=False)
    dep.proxy.inject(REQUEST, drop_after_ok, times=1, match=lambda body: body.get("title") == title(lost))
    seen: list[list[tuple[str, str]]] = []

    def on_tick(k: int, result: TickResult) -> None:
        watch(k, result)
        _, events = dep.store()
        seen.append([(e.action, e.outcome) for e in events if e.instance_guid == guid(lost) and e.tick == result.row["id"]])
        titles = {e["title"] for e in dep.site.technical_entries()}
        if k == 0:
            # the tick believes it requested it; slapproxy never saw the request
            assert [c.fault for c in result.calls if c.body.get("title") == title(lost)] == ["drop_after_ok"]
            sent = [c.name for c in result.calls].count(REQUEST)
            assert result.upstream.count(REQUEST) == sent - 1, "slapproxy's log shows the dropped request"
            assert title(lost) not in titles
            records, _ = dep.store()
            assert records[guid(lost)].phase is Phase.REQUESTED
            assert records[guid(lost)].tech_guid == tech_guid(lost)
            assert dep.site.customer(guid(lost))["connection_parameters"] == IN_PROGRESS
        else:
            assert title(lost) in titles, "the lost request was not requested again"

    through = run_scenario(dep, on_tick=on_tick, before_ticks=watch.start)
    assert seen[0] == [("request", "ok"), ("publish", "ok")], seen
    assert seen[1] == [("poll", "lost"), ("request", "ok")], seen
    polls = [c for c in through[1].calls if c.name == GET and c.body.get("instance_guid") == tech_guid(lost)]
    assert [c.status for c in polls] == [403]
    assert len(dep.proxy.calls(name=REQUEST)) >= 1 and dep.proxy.injected == 1
    assert_same_end_state(dep, base.reference)


def test_update_acknowledged_but_lost_is_sent_again(deployments: Deployments, base: Base, tmp_path: Path):
    dep = deployments.restore(tmp_path)
    dep.proxy.inject(REQUEST, drop_after_ok, times=1, match=lambda body: body.get("title") == title(UPDATED))
    shown: list[dict] = []
    run_scenario(dep, on_tick=lambda k, result: shown.append(dep.site.customer(guid(UPDATED))["connection_parameters"]))
    assert dep.proxy.injected == 1
    (entry,) = [e for e in dep.site.technical_entries() if e["title"] == title(UPDATED)]
    assert entry["parameters"] == parameters(UPDATED), "the lost update was never sent again"
    assert shown == [answer_of(title(UPDATED))] * FAULT_TICKS, "the customer lost its live connection parameters"
    assert_same_end_state(dep, base.reference)


def test_destroy_acknowledged_but_lost_is_sent_again(deployments: Deployments, base: Base, tmp_path: Path):
    dep = deployments.restore(tmp_path)
    dep.proxy.inject(REQUEST, drop_after_ok, times=1, match=lambda body: body.get("title") == title(LEAVING))
    run_scenario(dep)
    assert dep.proxy.injected == 1
    titles = {e["title"] for e in dep.site.technical_entries()}
    assert title(LEAVING) not in titles, "the technical entry of the customer who left is still on the CDN"
    assert_same_end_state(dep, base.reference)


# -- an answer for another instance -----------------------------------------------------------------


def test_answer_for_another_instance_is_not_trusted(deployments: Deployments, base: Base, tmp_path: Path):
    dep = deployments.restore(tmp_path)
    victim, other = ADDED[0], 0
    dep.proxy.inject(REQUEST, other_instance(tech_guid(other)), times=None,
                     match=lambda body: body.get("title") == title(victim))
    watch = Watch(dep, may_destroy={guid(LEAVING)}, tick_fails=False, action_fails=False)
    run_scenario(dep, on_tick=watch, before_ticks=watch.start)
    assert dep.proxy.injected >= 1
    assert dep.site.customer(guid(victim))["connection_parameters"] == answer_of(title(victim))
    assert_same_end_state(dep, base.reference)


def test_answer_for_an_unknown_instance_is_repaired(deployments: Deployments, base: Base, tmp_path: Path):
    """The answer names an instance no master knows: the poll cannot read it
    back and cdnreq requests the entry again."""
    dep = deployments.restore(tmp_path)
    victim = ADDED[0]
    dep.proxy.inject(REQUEST, other_instance(), times=1, match=lambda body: body.get("title") == title(victim))
    watch = Watch(dep, may_destroy={guid(LEAVING)}, tick_fails=False, action_fails=False)
    run_scenario(dep, on_tick=watch, before_ticks=watch.start)
    _, events = dep.store()
    mine = [(e.action, e.outcome) for e in events if e.instance_guid == guid(victim)]
    assert ("poll", "lost") in mine and mine[mine.index(("poll", "lost")) + 1] == ("request", "ok"), mine
    assert_same_end_state(dep, base.reference)


# -- /readyz through a running daemon --------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, no proxy


def http_get(url: str) -> tuple[int, Any] | None:
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with _OPENER.open(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_for(predicate: Callable[[], Any], what: str, process: subprocess.Popen, stderr: Path, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"cdnreq exited {process.returncode} while waiting for {what}:\n{stderr.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{stderr.read_text()[-3000:]}")
        time.sleep(0.05)


def test_readyz_reflects_failed_ticks_then_recovers(deployments: Deployments, base: Base, tmp_path: Path):
    deployments.counter = INJECTED_TIMED
    dep = deployments.restore(tmp_path, tick_interval_s=0.3)
    listen = tomllib.loads(dep.config.read_text())["daemon"]["listen"]
    endpoint = "http://127.0.0.1:" + listen.rpartition(":")[2]
    before, events_before = dep.store()
    shown_before = {i: dep.site.customer(guid(i))["connection_parameters"] for i in range(CUSTOMERS)}
    dep.proxy.inject(LIST, status(503), times=None)
    stderr = tmp_path / "daemon.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen([CDNREQ, "run", "--config", str(dep.config)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _, reason = wait_for(
            lambda: (r := http_get(endpoint + "/readyz")) and r[0] == 503 and "failed" in r[1].get("reason", "") and r,
            "/readyz 503 after failed ticks", process, stderr)
        assert reason["ready"] is False
        assert "tick(s) failed" in reason["reason"] and "master" in reason["reason"], reason
        status_code, state = http_get(endpoint + "/status")
        assert status_code == 200 and state["consecutive_failed_ticks"] >= 1, state
        with _OPENER.open(endpoint + "/metrics", timeout=5) as answer:
            metrics = answer.read().decode()
        failed_total = re.search(r'^cdnreq_ticks_total\{result="failed"\} (\S+)$', metrics, re.MULTILINE)
        assert failed_total and float(failed_total.group(1)) >= 1, metrics[:2000]
        failing = len(dep.proxy.calls(name=LIST))
        assert failing >= 1 and {c.status for c in dep.proxy.calls(name=LIST)} <= {503, None}
        # meanwhile nothing is requested, destroyed or forgotten, and customers keep what they see
        during, events_during = dep.store()
        assert during == before and events_during == events_before
        assert [c.name for c in dep.proxy.log] == [LIST] * len(dep.proxy.log)

        dep.proxy.clear()
        wait_for(lambda: (r := http_get(endpoint + "/readyz")) and r[0] == 200 and r, "/readyz 200 after recovery",
                 process, stderr)
        status_code, state = http_get(endpoint + "/status")
        assert state["consecutive_failed_ticks"] == 0 and state["ready"] is True, state
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    results = [t["result"] for t in dep.ticks()]
    assert "failed" in results and results[-1] == "ok", results
    first_failed = results.index("failed")
    assert set(results[first_failed: first_failed + failing]) == {"failed"}, results
    after, _ = dep.store()
    assert set(after) == set(before)
    for i in range(CUSTOMERS):
        if shown_before[i] == answer_of(title(i)):
            assert dep.site.customer(guid(i))["connection_parameters"] == shown_before[i]

"""A tick in stages: requests go out while DNS still runs, never before
their instance's proof is in, and always after what they rely on is stored.

An in-process Reconciler with a real store, a master double in memory and a
resolver whose answers for chosen names wait until the test releases them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import pytest

import cdnreq.reconcile.domains as stages_module  # the chunk sizes it uses (decided in decide/asking.py)
from cdnreq.config import Config
from cdnreq.dns.challenge import issue, load_secret
from cdnreq.model import Lookup
from cdnreq.model import Listing
from cdnreq.model import HostClaim, InstanceAnswer, InstanceGuid, Phase, Record, SharedInstance, Title
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store

L = "_slapos-challenge"


class Master:
    """Lists `instances`; on each request, notes what the store held then."""

    def __init__(self, store: Store, instances: Iterable[SharedInstance]):
        self.store = store
        self.instances = tuple(instances)
        self.calls: Counter = Counter()
        self.requests: list[tuple[str, str]] = []  # (title, state)
        self.seen_in_store: dict[str, tuple[Record | None, set[str]]] = {}
        self.requested = asyncio.Event()

    async def list_hosted(self, guid: str) -> Listing:
        return Listing(self.instances)

    async def request_instance(self, *, title: str, state: str, **_: Any) -> InstanceAnswer:
        records = await self.store.load()
        hosts = await self.store.load_hosts()
        guid = next((g for g, r in records.items() if r.title == title), None)
        self.seen_in_store[title] = (records.get(guid) if guid else None, set(hosts))
        self.requests.append((title, state))
        self.requested.set()
        await asyncio.sleep(0)
        return InstanceAnswer(guid=f"tech-{title}", connection_parameters={"url": "https://cdn"}, state=state)

    async def get_instance(self, instance_guid: str) -> InstanceAnswer:
        destroyed = {f"tech-{t}" for t in self.titles("destroyed")} | {f"tech-{t[7:]}" for t in self.titles("destroyed")}
        state = "destroyed" if instance_guid in destroyed else "started"  # live() records: tech-<guid>
        return InstanceAnswer(guid=instance_guid, connection_parameters={"url": "https://cdn"}, state=state)

    async def publish_connection(self, instance_guid: str, parameters: Any) -> None:
        await asyncio.sleep(0)

    async def publish_error(self, instance_guid: str, message: str) -> None:
        await asyncio.sleep(0)

    def titles(self, state: str = "started") -> list[str]:
        return [t for t, s in self.requests if s == state]


class Counter(dict):
    def __missing__(self, key: str) -> int:
        return 0


class Dns:
    """TXT answers from a dict; a batch asking a name in `hold` waits for `release`."""

    def __init__(self, txt: dict[str, str], hold: Iterable[str] = ()):
        self.txt = txt
        self.hold = set(hold)
        self.release = asyncio.Event()
        self.asked: list[str] = []

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        names = list(names)
        self.asked += names
        await asyncio.sleep(0)
        if self.hold & set(names):
            await self.release.wait()
        return {n: Lookup(n, "found", (self.txt[n],)) if n in self.txt else Lookup(n, "absent") for n in names}

    async def addresses(self, name: str) -> Lookup:
        return Lookup(name, "absent")

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def one_group_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages_module, "CHUNK_NAMES", 1)


@pytest.fixture
async def opened() -> AsyncIterator[list[Store]]:
    stores: list[Store] = []
    yield stores
    for store in stores:
        await store.close()


def config(tmp_path: Path, **domain: Any) -> Config:
    return Config.model_validate({
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
        "daemon": {"database": str(tmp_path / "cdnreq.db"), "max_destroy_fraction": 0.5},
        "domain": {"secret_file": str(tmp_path / "domain-secret"), "retention_s": 0, **domain},
    })


def customer(guid: str, domain: str | None = None) -> SharedInstance:
    parameters: dict[str, Any] = {"url": f"https://{guid.lower()}.backend.example"}
    if domain:
        parameters["custom_domain"] = domain
    return SharedInstance.of(guid, parameters)


async def reconciler(opened: list[Store], cfg: Config, instances: list[SharedInstance], dns: Dns, *,
                     proven: Iterable[str] = (), records: Iterable[Record] = (),
                     hosts: Iterable[HostClaim] = ()) -> tuple[Reconciler, Master]:
    """Challenges issued for every custom_domain; TXT at the host for those in `proven`."""
    store = await Store.open(cfg.daemon.database)
    opened.append(store)
    secret = load_secret(cfg.secret_path())
    challenges = {}
    for instance in instances:
        domain = instance.parameters.get("custom_domain")
        if domain:
            challenges[instance.guid] = issue(secret, instance.guid, domain, time.time())
            if instance.guid in proven:
                dns.txt[f"{L}.{domain}"] = challenges[instance.guid].token
    await store.commit(upserts=list(records), host_upserts=list(hosts), challenge_upserts=list(challenges.values()))
    master = Master(store, instances)
    reconciler = Reconciler(config=cfg, store=store, master=master, resolver=dns)  # type: ignore[arg-type]
    await reconciler.load()
    return reconciler, master


def title(guid: str) -> str:
    return f"cdnreq-{guid}"


async def test_requests_start_before_dns_ends_but_not_for_instances_still_waiting(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({}, hold={f"{L}.www.b.example"})
    instances = [customer("PLAIN"), customer("B", "www.b.example"), customer("C", "www.c.example")]
    r, master = await reconciler(opened, config(tmp_path), instances, dns, proven={"B", "C"})
    tick = asyncio.create_task(r.tick())
    for _ in range(200):
        if {title("PLAIN"), title("C")} <= set(master.titles()):
            break
        await asyncio.sleep(0.01)
    # requests went out while B's proof was still being resolved, and none for B
    assert {title("PLAIN"), title("C")} <= set(master.titles())
    assert f"{L}.www.b.example" in dns.asked and not tick.done()
    assert title("B") not in master.titles()
    dns.release.set()
    report = await asyncio.wait_for(tick, 10)
    assert report.ok, report.error
    assert sorted(master.titles()) == sorted(title(g) for g in ("PLAIN", "B", "C"))
    assert report.planned["gate_ok"] == 3 and report.planned["request"] == 3


async def test_an_instance_whose_proof_is_absent_is_never_requested(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({})
    instances = [customer("A", "www.a.example"), customer("B", "www.b.example")]
    r, master = await reconciler(opened, config(tmp_path), instances, dns, proven={"A"})
    report = await r.tick()
    assert report.ok, report.error
    assert master.titles() == [title("A")]
    assert report.planned["gate_pending"] == 1 and report.planned["publish"] == 1
    # the host's own name first; its parent only where that did not prove it
    assert sorted(dns.asked) == sorted([f"{L}.www.a.example", f"{L}.www.b.example", f"{L}.b.example"])


async def test_title_and_proven_host_are_stored_before_the_request(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({})
    instances = [customer("A", "www.a.example"), customer("PLAIN")]
    r, master = await reconciler(opened, config(tmp_path), instances, dns, proven={"A"})
    assert (await r.tick()).ok
    for guid in ("A", "PLAIN"):
        record, _ = master.seen_in_store[title(guid)]
        assert record is not None and record.last_action == "requesting"
    assert "www.a.example" in master.seen_in_store[title("A")][1]


def live(guid: str, *, phase: Phase = Phase.LIVE, served: tuple[str, ...] | None = None,
         gone_at: float | None = None) -> Record:
    now = time.time() - 100
    return Record(InstanceGuid(guid), Title(title(guid)), phase, now, now, param_hash="old", spec_hash="old",
                  tech_guid=f"tech-{guid}", connection={"url": "https://cdn"}, served=served, gone_at=gone_at)


async def test_instances_waiting_for_dns_count_as_listed_for_the_removal_guard(tmp_path: Path, opened: list[Store]) -> None:
    # X and Y wait for DNS (new custom domains, answers held); Z is gone. One of
    # three known gone is within max_destroy_fraction = 0.5; were X and Y taken
    # for gone, the removal would be held, and X and Y destroyed later.
    dns = Dns({}, hold={f"{L}.www.x.example", f"{L}.www.y.example"})
    instances = [customer("X", "www.x.example"), customer("Y", "www.y.example")]
    records = [live("X"), live("Y"), live("Z")]
    r, master = await reconciler(opened, config(tmp_path), instances, dns, records=records)
    tick = asyncio.create_task(r.tick())
    await asyncio.wait_for(master.requested.wait(), 10)
    assert master.titles("destroyed") == [title("Z")]  # decided from the whole listing, at once
    dns.release.set()
    report = await asyncio.wait_for(tick, 10)
    assert report.ok and report.hold_reason is None
    assert master.titles("destroyed") == [title("Z")] and master.titles() == []
    assert report.planned["gate_pending"] == 2


async def test_a_retained_entry_losing_its_host_to_a_new_proof_is_destroyed_in_the_same_tick(tmp_path: Path, opened: list[Store]) -> None:
    """Issue 10, property 8: the new owner is requested only once the old
    entry reads back destroyed; meanwhile it is told why it waits."""
    dns = Dns({})
    gone = live("OLD", phase=Phase.RETAINED, served=("www.r.example",), gone_at=time.time() - 10)
    owned = HostClaim("www.r.example", InstanceGuid("OLD"), "r.example", 1.0, time.time())
    r, master = await reconciler(opened, config(tmp_path, retention_s=86400), [customer("NEW", "www.r.example")], dns,
                                 proven={"NEW"}, records=[gone], hosts=[owned])
    for _ in range(2):  # retained for fewer than confirm_ticks (3) ticks: still OLD's
        report = await r.tick()
        assert report.ok, report.error
        assert master.requests == [] and (await r.store.load_hosts())["www.r.example"].guid == "OLD"
    report = await r.tick()
    assert report.ok, report.error
    assert master.titles() == [] and master.titles("destroyed") == [title("OLD")]
    assert r.known is not None and r.known[InstanceGuid("OLD")].served == ("www.r.example",), "not read back yet"
    assert (await r.store.load_hosts())["www.r.example"].guid == "NEW"
    for _ in range(2):  # the destroy is read back, then the new owner is requested
        report = await r.tick()
        assert report.ok, report.error
    assert master.titles() == [title("NEW")]
    assert master.titles("destroyed") == [title("OLD")]
    old = r.known[InstanceGuid("OLD")]
    assert old.phase is Phase.RETAINED and old.tech_guid is None and old.served is None


async def test_a_shutdown_does_not_wait_for_dns_nobody_needs(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({}, hold={f"{L}.www.b.example"})  # never answered
    instances = [customer("PLAIN"), customer("B", "www.b.example")]
    r, master = await reconciler(opened, config(tmp_path), instances, dns, proven={"B"})
    stop = asyncio.Event()
    tick = asyncio.create_task(r.tick(stop))
    await asyncio.wait_for(master.requested.wait(), 10)
    stop.set()
    report = await asyncio.wait_for(tick, 5)
    assert report.interrupted and not report.ok, report  # B's proof was never decided (tests/test_interrupted.py)
    assert report.error.startswith("interrupted"), report.error
    assert master.titles() == [title("PLAIN")]


async def test_a_guid_listed_first_as_destroyed_is_destroyed_not_requested(tmp_path: Path, opened: list[Store]) -> None:
    dns = Dns({})
    again = customer("X", "www.x.example")
    gone = SharedInstance.of("X", again.parameters, state="destroyed")
    listed = [gone, again, customer("Y"), customer("Z")]  # Y, Z keep the removal under max_destroy_fraction
    r, master = await reconciler(
        opened, config(tmp_path), listed, dns, proven={"X"}, records=[live("X"), live("Y"), live("Z")]
    )
    report = await r.tick()
    assert report.ok, report.error
    assert master.titles("destroyed") == [title("X")] and title("X") not in master.titles()
    assert report.planned["duplicate"] == 1

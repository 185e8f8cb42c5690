"""A long-running Reconciler (the daemon's tick, its memory kept between
ticks) beside `cdnreq plan`'s dry tick on a snapshot of the same store, on
an in-memory master and DNS: what the plan shows, against what the next
real tick hands to its executor."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from cdnreq.commands.plan import Stages, document
from cdnreq.config import Config
from cdnreq.master import MasterRejected
from cdnreq.model import InstanceAnswer, Listing, SharedInstance
from cdnreq.reconcile.dry import ActionLog, DryStore, ReadOnlyMaster, read_secret
from cdnreq.reconcile.execute import execute
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from tests.test_decisions import Zone

L = "_slapos-challenge"


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class FakeMaster:
    """Lists `instances`; keeps technical entries by title and what each
    customer was published; counts every call."""

    def __init__(self, instances: Iterable[SharedInstance] = ()):
        self.instances: list[SharedInstance] = list(instances)
        self.entries: dict[str, dict[str, Any]] = {}  # title: {guid, parameters, state, connection}
        self.shown: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.calls: Counter = Counter()
        self.in_flight = 0
        self.anonymous = 0

    async def list_hosted(self, guid: str) -> Listing:
        self.calls["list"] += 1
        return Listing(tuple(self.instances), anonymous=self.anonymous)

    async def request_instance(self, *, title: str, parameters: Any, state: str, **_: Any) -> InstanceAnswer:
        self.calls["request"] += 1
        entry = self.entries.setdefault(title, {"guid": f"tech-{title}", "connection": {}})
        entry["state"] = state
        if parameters is not None:
            entry["parameters"] = dict(parameters)
        return InstanceAnswer(guid=entry["guid"], connection_parameters=dict(entry["connection"]), state=state)

    async def get_instance(self, instance_guid: str) -> InstanceAnswer:
        self.calls["get"] += 1
        for entry in self.entries.values():
            if entry["guid"] == instance_guid:
                return InstanceAnswer(guid=instance_guid, connection_parameters=dict(entry["connection"]),
                                      state=entry["state"], parameters=entry.get("parameters"))
        if any(i.guid == instance_guid for i in self.instances):
            return InstanceAnswer(guid=instance_guid, connection_parameters=dict(self.shown.get(instance_guid, {})),
                                  state="started")
        raise MasterRejected("get", "HTTP 404: not found", status=404)

    async def publish_connection(self, instance_guid: str, parameters: Any) -> None:
        self.calls["publish_connection"] += 1
        self.shown[instance_guid] = dict(parameters)

    async def publish_error(self, instance_guid: str, message: str) -> None:
        self.calls["publish_error"] += 1
        self.errors[instance_guid] = message

    async def close(self) -> None:
        pass

    def answer_all(self) -> None:
        for title, entry in self.entries.items():
            if entry["state"] != "destroyed" and not entry["connection"]:
                entry["connection"] = {"domain": f"{title}.cdn.example"}


class Dns(Zone):
    """TXT answers from a dict (empty unless given), counting what is asked."""

    def __init__(self, txt: dict[str, str] | None = None):
        super().__init__(txt if txt is not None else {})


def config(tmp_path: Path, daemon: dict[str, Any] | None = None, **domain: Any) -> Config:
    return Config.model_validate({
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
        "daemon": {"database": str(tmp_path / "cdnreq.db"), "concurrency": 1, **(daemon or {})},
        "domain": {"secret_file": str(tmp_path / "domain-secret"), "retention_s": 0, **domain},
    })


def customer(guid: str, domain: str | None = None, url: str | None = None, state: str = "started") -> SharedInstance:
    parameters: dict[str, Any] = {"url": url or f"https://{guid.lower()}.backend.example"}
    if domain:
        parameters["custom_domain"] = domain
    return SharedInstance.of(guid, parameters, state=state)


class Recording:
    """The real executor, keeping each action it is handed."""

    def __init__(self) -> None:
        self.actions: list[Any] = []

    async def __call__(self, feed: Any, **kw: Any) -> int:
        from cdnreq.reconcile.execute import Feed

        inner = Feed()

        async def pump() -> None:
            while (action := await feed.next()) is not None:
                self.actions.append(action)
                inner.extend([action])
            inner.close()

        pumping = asyncio.create_task(pump())
        try:
            return await execute(inner, **kw)
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)


def pairs(actions: Iterable[Any]) -> Counter:
    return Counter((a.counted_as, a.guid) for a in actions)


class Daemon:
    """The daemon's reconciler, kept between ticks; restart() makes a new one on the same store."""

    def __init__(self, cfg: Config, master: FakeMaster, dns: Dns, clock: Clock):
        self.cfg, self.master, self.dns, self.clock = cfg, master, dns, clock
        self.store: Store | None = None
        self.r: Reconciler | None = None
        self.recording = Recording()

    async def start(self) -> None:
        self.store = await Store.open(self.cfg.daemon.database)
        self.recording = Recording()
        self.r = Reconciler(config=self.cfg, store=self.store, master=self.master, resolver=self.dns,  # type: ignore[arg-type]
                            clock=self.clock, executor=self.recording)
        await self.r.load()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def tick(self, at_once: bool = False) -> tuple[Any, list[Any]]:
        assert self.r is not None
        before = len(self.recording.actions)
        report = await self.r.tick(at_once=at_once)
        return report, self.recording.actions[before:]


async def dry_plan(cfg: Config, master: FakeMaster, dns: Dns, clock: Clock) -> tuple[list[Any], Any, Any, DryStore, dict]:
    """What `cdnreq plan` runs (commands/plan._plan_on), with our master and DNS."""
    snapshot = await Store.open_snapshot(cfg.daemon.database)
    dry = DryStore(snapshot)
    stages, log = Stages(), ActionLog()
    ro = ReadOnlyMaster(master)  # type: ignore[arg-type]
    r = Reconciler(config=cfg, store=dry, master=ro, resolver=dns, executor=log, on_stage=stages,  # type: ignore[arg-type]
                   read_secret=read_secret, clock=clock)
    try:
        await r.load()
        report = await r.tick()
    finally:
        await dry.close()
    assert not ro.refused, ro.refused
    doc = document(log.actions, stages, dry, report, r.known or {}, clock(), cfg.daemon.confirm_ticks,
                   r.admission.queue.left)
    return log.actions, stages, report, dry, doc


async def dump(path: Path) -> dict[str, list[Any]]:
    """Every row of every table."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        conn.close()

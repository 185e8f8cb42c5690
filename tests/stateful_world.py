"""A world for stateful attacks over many ticks (tests/test_attack_stateful.py):
the real Reconciler and store, a real DNS server on loopback (DevDns, asked
through cdnreq's own Resolver), and a master double in memory that keeps the
customers' listing, the technical entries, what each customer was shown,
and can lie or fail once on chosen calls.

No sleeps; the clock is the test's.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdnreq.config import Config
from cdnreq.dns.resolver import Resolver
from cdnreq.master import MasterMalformed, MasterRejected, MasterUnavailable
from cdnreq.model import InstanceAnswer, Listing, SharedInstance
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from cdnreq.validate.hosts import overlaps
from devtools.devdns import DevDns

L = "_slapos-challenge"
PREFIX = "cdnreq-"


def cdn_answer(title: str) -> dict[str, Any]:
    return {"url": f"https://{title.lower()}.cdn.example", "site": title}


@dataclass
class Entry:
    """One technical entry, as the master keeps it."""

    title: str
    state: str
    parameters: dict[str, Any]
    connection: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)  # the parameters it held before its last request

    @property
    def guid(self) -> str:
        return f"tech-{self.title}"


class Master:
    """The master: lists customers, keeps technical entries by title, keeps
    what each customer was shown. Faults are one-shot: `fail[call]` fails the
    next `n` such calls unapplied (a 5xx), `applied_then_fail[call]` applies
    then times out, `dropped[call]` answers 200 and does not apply,
    `echoed[call]` answers 200 with the parameters sent and does not apply;
    `deploying[call]` answers the next `n` requests before the CDN
    published its answer: the answer, and the entry's next read-back, are
    empty; `listing_fault` changes the next listing only. `clashes`: each request
    applied while another entry not destroyed served one of its hosts
    (two entries serving one host, if only for a moment within a tick)."""

    def __init__(self) -> None:
        self.listed: list[SharedInstance] = []
        self.entries: dict[str, Entry] = {}
        self.published: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.fail: Counter = Counter()
        self.applied_then_fail: Counter = Counter()
        self.dropped: Counter = Counter()
        self.echoed: Counter = Counter()
        self.clashes: list[str] = []
        self.reject: Counter = Counter()  # 4xx "no"
        self.deploying: Counter = Counter()
        self.withheld: set[str] = set()  # titles whose next read-back has no answer yet (deploying)
        self.listing_fault: tuple[str, Any] | None = None
        self.read_back_fault: str | None = None  # "empty" | "lost" | "other" | "stale" for the next read-back
        self.read_back_target: str | None = None  # of this title only (a restarted daemon may read others first)
        self.writes: list[tuple[str, str, Any]] = []  # (call, title or guid, what) this tick
        self.calls: Counter = Counter()
        self.in_flight = 0

    def snapshot(self) -> "Master":
        other = copy.deepcopy(self)
        other.writes = []
        return other

    def _fault(self, call: str, table: Counter) -> None:
        if table[call] > 0:
            table[call] -= 1
            raise MasterUnavailable(call, "HTTP 503: Service Unavailable", status=503)

    async def list_hosted(self, guid: str) -> Listing:
        self.calls["list"] += 1
        self._fault("list", self.fail)
        fault, self.listing_fault = self.listing_fault, None
        listed = list(self.listed)
        if fault is None:
            return Listing(tuple(listed))
        kind, arg = fault
        if kind == "empty":
            return Listing(())
        if kind == "missing":
            return Listing(tuple(i for i in listed if i.guid != arg))
        if kind == "unusable":
            return Listing(tuple(i for i in listed if i.guid != arg),
                           unusable={arg: "parameters: not valid UTF-8 at byte 3"} if any(i.guid == arg for i in listed) else {})
        if kind == "anonymous":
            return Listing(tuple(listed), anonymous=1)
        raise AssertionError(kind)

    async def request_instance(self, *, title: str, state: str, parameters=None, **_: Any) -> InstanceAnswer:
        call = "destroy" if state == "destroyed" else "request"
        self.calls[call] += 1
        self._fault(call, self.fail)
        if self.reject[call] > 0:
            self.reject[call] -= 1
            raise MasterRejected(call, "HTTP 403: Forbidden, no more entries", status=403, title="no more entries")
        if self.dropped[call] > 0:  # answered as the entry stands, not applied
            self.dropped[call] -= 1
            held = self.entries.get(title)
            return InstanceAnswer(guid=f"tech-{title}", connection_parameters=dict(held.connection) if held else {},
                                  state=state, title=title)
        if self.echoed[call] > 0:  # answered as if applied, not applied
            self.echoed[call] -= 1
            return InstanceAnswer(guid=f"tech-{title}", connection_parameters=cdn_answer(title), state=state,
                                  title=title, parameters=dict(parameters or {}))
        self.writes.append((call, title, None if parameters is None else dict(parameters)))
        entry = self.entries.get(title)
        if entry is None:
            entry = self.entries[title] = Entry(title, state, {})
        entry.state = state
        if parameters is not None:
            entry.before, entry.parameters = entry.parameters, dict(parameters)
        entry.connection = {} if state == "destroyed" else cdn_answer(title)
        self.withheld.discard(title)
        if state != "destroyed" and self.deploying[call] > 0:
            self.deploying[call] -= 1
            self.withheld.add(title)
        if state != "destroyed":
            self._clash(title)
        self._fault(call, self.applied_then_fail)
        answered = {} if title in self.withheld else dict(entry.connection)
        return InstanceAnswer(guid=entry.guid, connection_parameters=answered, state=state,
                              title=title, parameters=dict(entry.parameters))

    async def get_instance(self, instance_guid: str) -> InstanceAnswer:
        self.calls["get"] += 1
        self._fault("get", self.fail)
        if instance_guid.startswith("tech-"):
            title = instance_guid.removeprefix("tech-")
            fault = self.read_back_fault if self.read_back_target in (None, title) else None
            if fault is not None:
                self.read_back_fault = None
            entry = self.entries.get(title)
            if fault == "lost" or entry is None:
                raise MasterRejected("get", "HTTP 404: not found", status=404, title="not found")
            if fault == "other":
                raise MasterMalformed("get", f"answer is for 'tech-other', not {instance_guid!r}")
            deploying = entry.title in self.withheld
            self.withheld.discard(entry.title)
            connection = {} if fault == "empty" or deploying else dict(entry.connection)
            held = entry.before if fault == "stale" else entry.parameters
            return InstanceAnswer(guid=instance_guid, connection_parameters=connection, state=entry.state,
                                  title=entry.title, parameters=dict(held))
        listed = {i.guid: i for i in self.listed}
        if instance_guid not in listed:
            raise MasterRejected("get", "HTTP 404: not found", status=404, title="not found")
        return InstanceAnswer(guid=instance_guid, connection_parameters=dict(self.published.get(instance_guid, {})),
                              state=listed[instance_guid].state.value, parameters=dict(listed[instance_guid].parameters))

    async def publish_connection(self, instance_guid: str, parameters: Any) -> None:
        self.calls["publish"] += 1
        self._fault("publish", self.fail)
        self.writes.append(("publish", instance_guid, dict(parameters)))
        self.published[instance_guid] = dict(parameters)

    async def publish_error(self, instance_guid: str, message: str) -> None:
        self.calls["error"] += 1
        self.writes.append(("error", instance_guid, message))
        self.errors[instance_guid] = message

    async def close(self) -> None:
        pass

    def _clash(self, title: str) -> None:
        serving = self.serving()
        mine = serving.get(title, ())
        for other, hosts in serving.items():
            both = [(x, y) for x in mine for y in hosts if overlaps(x, y)] if other != title else []
            if both:
                self.clashes.append(f"{title} requested while {other} serves {both}")

    def serving(self) -> dict[str, tuple[str, ...]]:
        """Title -> hosts of every entry not destroyed."""
        out = {}
        for title, entry in self.entries.items():
            if entry.state != "destroyed":
                p = entry.parameters
                hosts = [p.get("custom_domain") or "", *str(p.get("server-alias") or "").split()]
                out[title] = tuple(h for h in hosts if h)
        return out


def config(tmp: Path, dns: DevDns, **sections: dict[str, Any]) -> Config:
    base: dict[str, dict[str, Any]] = {
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn", "request_prefix": PREFIX},
        "daemon": {"database": str(tmp / "cdnreq.db"), "max_destroy_fraction": 0.5, "verify_interval_s": 1800,
                   "retry_base_s": 60, "retry_max_s": 600, "concurrency": 4},
        "domain": {"secret_file": str(tmp / "domain-secret"), "retention_s": 3600, "recheck_interval_s": 3600,
                   "grace_s": 7200},
        "dns": {"nameservers": [dns.address], "timeout_s": 0.2, "tries": 1},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Config.model_validate(base)


class World:
    """The reconciler, its store, the master, the DNS and a clock, on one event loop."""

    def __init__(self, tmp: Path, **sections: dict[str, Any]) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.dns = DevDns().start()
        self.txt: dict[str, set[str]] = {}
        self.cfg = config(tmp, self.dns, **sections)
        self.master = Master()
        self.now = 1_800_000_000.0
        self.r: Reconciler | None = None
        self.run(self._open())

    def clock(self) -> float:
        return self.now

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> None:
        store = await Store.open(self.cfg.daemon.database)
        resolver = Resolver(nameservers=[self.dns.address], timeout_s=0.2, tries=1)
        self.r = Reconciler(config=self.cfg, store=store, master=self.master, resolver=resolver,  # type: ignore[arg-type]
                            clock=self.clock)
        await self.r.load()

    async def _close(self) -> None:
        if self.r is not None:
            await self.r.store.close()
            await self.r.resolver.close()
            self.r = None

    def restart(self) -> None:
        self.run(self._close())
        self.run(self._open())

    def close(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.dns.stop()
            self.loop.close()

    def fork(self, name: str) -> "Reconciler":
        """A daemon started now on a copy of the store, with a copy of the
        master (the DNS is shared: a tick only reads it)."""
        assert self.r is not None
        dest = self.tmp / name
        copy_world_db(self.cfg.daemon.database.parent, dest)
        daemon = self.cfg.daemon.model_copy(update={"database": dest / self.cfg.daemon.database.name})
        cfg = self.cfg.model_copy(update={"daemon": daemon})

        async def open_() -> Reconciler:
            store = await Store.open(cfg.daemon.database)
            resolver = Resolver(nameservers=[self.dns.address], timeout_s=0.2, tries=1)
            r = Reconciler(config=cfg, store=store, master=self.master.snapshot(), resolver=resolver,  # type: ignore[arg-type]
                           clock=self.clock)
            await r.load()
            return r

        return self.run(open_())

    def drop(self, r: Reconciler) -> None:
        async def close() -> None:
            await r.store.close()
            await r.resolver.close()

        self.run(close())
        shutil.rmtree(r.config.daemon.database.parent, ignore_errors=True)

    def tick(self):  # type: ignore[no-untyped-def]
        assert self.r is not None
        self.master.writes = []
        self.now += 60
        return self.run(self.r.tick())

    # -- DNS ----------------------------------------------------------------------------

    def token(self, guid: str) -> tuple[str, str] | None:
        """The guid's challenge (domain, token) as stored."""
        assert self.r is not None
        challenge = self.run(self.r.store.challenge_of(guid))  # type: ignore[attr-defined]
        return None if challenge is None else (challenge.domain, challenge.token)

    def publish_txt(self, host: str, token: str) -> None:
        name = f"{L}.{host.removeprefix('*.')}"
        self.txt.setdefault(name, set()).add(token)
        self.dns.set_txt(name, *sorted(self.txt[name]))

    def withdraw_txt(self, host: str, token: str) -> None:
        name = f"{L}.{host.removeprefix('*.')}"
        self.txt.get(name, set()).discard(token)
        if self.txt.get(name):
            self.dns.set_txt(name, *sorted(self.txt[name]))
        else:
            self.dns.remove(name)

    # -- checks -------------------------------------------------------------------------

    def overlapping(self) -> list[tuple[str, str, str, str]]:
        serving = self.master.serving()
        titles = sorted(serving)
        out = []
        for i, a in enumerate(titles):
            for b in titles[i + 1:]:
                out += [(a, x, b, y) for x in serving[a] for y in serving[b] if overlaps(x, y)]
        return out

    def store_matches_memory(self) -> list[str]:
        """What the daemon holds in memory and what its store would reload differ."""
        r = self.r
        assert r is not None and r.known is not None and r.domains is not None
        problems = []
        awake = self.run(r.store.load(awake_only=True))
        stored = self.run(r.store.load())  # one woken without a write keeps its sleep mark: a restart wakes it again
        for guid in set(awake) | set(r.known):
            if stored.get(guid) != r.known.get(guid):
                problems.append(f"record {guid}: memory {r.known.get(guid)} store {stored.get(guid)}")
        hosts = self.run(r.store.load_hosts())
        held = dict(r.domains.index.by_host)
        for host in set(hosts) | set(held):
            if hosts.get(host) != held.get(host):
                problems.append(f"host {host}: memory {held.get(host)} store {hosts.get(host)}")
        return problems


def copy_world_db(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.name.startswith("cdnreq.db"):
            shutil.copy2(path, dest / path.name)

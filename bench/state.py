"""The idle tick in one process, without a master or a name server: where
the time and the memory of 100,000 instances go.

``python -m bench.state --size 100000`` builds the state the daemon holds
after a first reconcile against the bench's customers (90% proven and live,
10% pending), then times an idle tick's pure steps (parsing the listing, the
domain step, planning) and reports the resident memory each part adds, and
the bytes per instance held once the settled, idle instances fall asleep. It is
an investigation tool, quicker to iterate with than the full benchmark; the
figures the README quotes come from ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import gc
import sys
import time
from typing import Iterable

import orjson

from cdnreq.dns.challenge import issue
from cdnreq.model import Lookup
from cdnreq.listing import read_listing
from cdnreq.model import InstanceGuid
from cdnreq.reconcile.domains import Domains
from cdnreq.decide.gate import DomainPolicy
from cdnreq.decide.actions import IdleCache
from cdnreq.decide.dormancy import rest
from cdnreq.decide.plan import Policy, new_record, plan, spec_hash
from cdnreq.heap import collector_paused
from cdnreq.decide.transitions import compose, polled, published, requested
from cdnreq.model import InstanceAnswer

from bench.double.customers import customer_guid, customer_parameters
from bench.nsd import LABEL
from bench.scenarios import MISSING

SECRET = b"s" * 32
PREFIX = "cdn-"


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def listing_body(size: int) -> bytes:
    return orjson.dumps(
        {
            "result_list": [
                {
                    "title": f"customer-{i}",
                    "instance_guid": customer_guid(i),
                    "software_type": "default",
                    "state": "started",
                    "parameters": customer_parameters(i, with_domains=True),
                    "compute_partition_id": "slappart0",
                }
                for i in range(size)
            ]
        }
    )


class ZoneResolver:
    """Answers as the bench's zone does: tokens for 90%, nothing for the rest."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        out = {}
        for name in names:
            token = self.tokens.get(name)
            out[name] = Lookup(name, "found", (token,)) if token else Lookup(name, "absent")
        return out

    async def addresses(self, name: str) -> Lookup:
        return Lookup(name, "absent")

    async def close(self) -> None:
        pass


def deep_size(obj: object, seen: set[int]) -> int:
    """Bytes reachable from obj and not already counted (sys.getsizeof, walked)."""
    if id(obj) in seen or isinstance(obj, (type, enum.Enum)) or obj is None:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(type(obj), "__slots__"):
        size += sum(deep_size(getattr(obj, n), seen) for n in type(obj).__slots__ if hasattr(obj, n))
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


async def build(size: int) -> tuple[bytes, Policy, Domains, dict]:
    """The state after a first reconcile: the listing's body, the policy, the domain step, the records."""
    base = rss_mb()
    now = time.time() - 3600
    challenges = {
        InstanceGuid(customer_guid(i)): issue(SECRET, customer_guid(i), f"www.d{i}.example", now)
        for i in range(size)
    }
    tokens = {
        f"{LABEL}.www.d{i}.example": challenges[InstanceGuid(customer_guid(i))].token
        for i in range(size)
        if i % MISSING != MISSING - 1
    }
    body = listing_body(size)
    print(f"process after imports: {base:.0f} MB; listing body {len(body) / 1e6:.1f} MB")

    policy = Policy(request_prefix=PREFIX, spec_hash=spec_hash("sr", "default", {}))
    domains = Domains(policy=DomainPolicy(label=LABEL), secret=SECRET, resolver=ZoneResolver(tokens), challenges=challenges)
    listing = read_listing(body)
    step = await domains.step(listing.instances, {}, now, 1)
    known = {}
    for instance in listing.instances:
        gate = step.gates[instance.guid]
        record = new_record(instance.guid, PREFIX, now)
        if gate.ok:
            tech = f"TECH-{instance.guid}"
            host = instance.parameters["custom_domain"]
            answer = InstanceAnswer(tech, {"domain": host, "url": f"https://{host}", "secure_access": f"https://{host}"})
            record = requested(record, instance, gate, answer, policy.spec_hash, "request", now)
            record = polled(record, answer, now)
            record = published(record, compose(record.connection, gate, True), None, now)
        else:
            record = published(record, compose(None, gate, False), gate.error, now)
        known[instance.guid] = record
    del listing, step
    gc.collect()
    gc.freeze()
    state = rss_mb()
    print(f"RSS with the state built: {state:.0f} MB")
    return body, policy, domains, known


async def idle_ticks(body: bytes, policy: Policy, domains: Domains, known: dict):
    """Three idle ticks' pure steps, timed; what the last one keeps."""
    idle = IdleCache()
    for tick in range(3):
        with collector_paused():
            t0 = time.perf_counter()
            listing = read_listing(body)
            t1 = time.perf_counter()
            step = await domains.step(listing.instances, known, time.time(), 2 + tick)
            t2 = time.perf_counter()
            the_plan = plan(listing, known, time.time(), policy, gates=step.gates, ownership=domains.index, idle=idle)
            idle = the_plan.idle
            t3 = time.perf_counter()
        print(
            f"idle tick {tick}: parse {t1 - t0:.2f} s, domains {t2 - t1:.2f} s,"
            f" plan {t3 - t2:.2f} s, total {t3 - t0:.2f} s; actions {len(the_plan.actions)},"
            f" RSS {rss_mb():.0f} MB"
        )
        if tick < 2:
            del listing, step, the_plan
    return idle, listing


def report(size: int, known: dict, domains: Domains, idle: IdleCache, listing) -> None:
    """Bytes per instance of each part of the state."""
    print("bytes per instance (objects reachable, each counted once, in this order):")
    seen: set[int] = set()
    parts = [
        ("records (known)", known),
        ("challenges", domains.challenges),
        ("host index", domains.index),
        ("gate cache (settled)", domains._settled),
        ("verdict cache and lookup schedule", (domains._verdicts, domains.schedule.next_lookup)),
        ("idle cache", idle.entries),
        ("one tick's listing (transient)", listing),
    ]
    for name, part in parts:
        print(f"  {name:36} {deep_size(part, seen) / size:7.0f}")


def asleep(size: int, known: dict, domains: Domains, idle: IdleCache, listing) -> None:
    """The same state once the settled, idle instances fell asleep
    (decide/dormancy.py, as reconcile/sleepers.py does it in the daemon)."""
    decided = rest(listing.instances, {}, idle, known, domains.settled, (), time.time(), rules="bench",
                   same_rules=True)
    for guid in decided.sleep:
        del known[guid]
    domains.sleep(decided.sleep)
    left = IdleCache({g: e for g, e in idle.entries.items() if g not in decided.sleep}, idle.policy)
    del listing
    gc.collect()
    print(f"asleep: {len(decided.sleep):,} of {size:,}; bytes per instance held between ticks:")
    seen: set[int] = set()
    parts = [
        ("sleepers", decided.sleep),
        ("host index", domains.index),
        ("records of the instances awake", known),
        ("their challenges", domains.challenges),
        ("their gates, verdicts, lookup schedule", (domains.settled, domains._verdicts, domains.schedule.next_lookup)),
        ("their idle cache", left.entries),
    ]
    total = 0
    for name, part in parts:
        held = deep_size(part, seen) / size
        total += held
        print(f"  {name:36} {held:7.0f}")
    print(f"  {'all':36} {total:7.0f}")


async def main(size: int) -> None:
    body, policy, domains, known = await build(size)
    idle, listing = await idle_ticks(body, policy, domains, known)
    report(size, known, domains, idle, listing)
    asleep(size, known, domains, idle, listing)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().size))

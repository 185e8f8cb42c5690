"""Lookups leave no cyclic garbage: a tick runs with the collector paused
(cdnreq/heap.py), so whatever a lookup leaves in a reference cycle stays in
memory until the tick ends, then costs the collector a pass over it. With
tens of thousands of pending proofs answered NXDOMAIN each tick, that was
the largest part of the tick's end."""

from __future__ import annotations

import gc

from devtools.devdns import DevDns
from cdnreq.dns.resolver import Resolver

LOOKUPS = 200


async def _garbage_of(devdns: DevDns, names: list[str]) -> int:
    async with Resolver(nameservers=[devdns.address], timeout_s=0.5, tries=2) as resolver:
        await resolver.txt_many(names[:5])  # the channel and its first allocations
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            found = await resolver.txt_many(names)
            assert len(found) == len(names)
            return gc.collect()
        finally:
            if enabled:
                gc.enable()


async def test_absent_names_leave_no_cycles(devdns: DevDns) -> None:
    names = [f"_slapos-challenge.missing{i}.test" for i in range(LOOKUPS)]
    unreachable = await _garbage_of(devdns, names)
    assert unreachable < LOOKUPS, f"{unreachable} objects in cycles after {LOOKUPS} NXDOMAIN lookups"


async def test_found_names_leave_no_cycles(devdns: DevDns) -> None:
    for i in range(LOOKUPS):
        devdns.set_txt(f"_slapos-challenge.found{i}.test", f"token-{i}")
    names = [f"_slapos-challenge.found{i}.test" for i in range(LOOKUPS)]
    unreachable = await _garbage_of(devdns, names)
    assert unreachable < LOOKUPS, f"{unreachable} objects in cycles after {LOOKUPS} lookups"

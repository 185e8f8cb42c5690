"""``python -m bench.legacy``: importing the cron requester's state at scale.

Builds the old requester's three databases for `--size` customers (a
quarter proven with custom_domain + alias, the rest plain; each live under
its legacy title), the master's listing and the technical CDN's entries as
they would come back, then times what `cdnreq import-legacy` does with
them: reading the databases (from copies), deciding (cdnreq.legacy.adopt)
and the one transaction into an empty store. Reports seconds per step and
the peak RSS. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from cdnreq.model import TechnicalEntry
from cdnreq.legacy.adopt import AdoptPolicy, adopt
from cdnreq.legacy.read import read_legacy
from cdnreq.model import SharedInstance
from cdnreq.store import Store
from cdnreq.store import imports

PREFIX = "_cdnreq_"
INSTANCE = (
    "CREATE TABLE instance (reference VARCHAR(255), json_parameters TEXT, json_error TEXT,"
    " hash VARCHAR(255), timestamp VARCHAR(255), valid_parameter VARCHAR(255), PRIMARY KEY (reference))"
)
DOMAINS = (
    "CREATE TABLE domain_validation (instance_reference VARCHAR(255) unique, domain VARCHAR(255),"
    " token VARCHAR(255), validated BOOLEAN, timestamp VARCHAR(255), PRIMARY KEY (instance_reference))"
)


def parameters(i: int) -> dict:
    p = {"url": f"https://backend-{i}.example.net"}
    if i % 4 == 0:
        p.update({"custom_domain": f"site-{i}.test", "server-alias": f"www.site-{i}.test"})
    return p


def build(folder: Path, size: int) -> tuple[dict, dict]:
    listed, entries = {}, {}
    conns = {name: sqlite3.connect(folder / f"{name}.db") for name in ("validated", "requested", "domains")}
    conns["validated"].execute(INSTANCE)
    conns["requested"].execute(INSTANCE)
    conns["domains"].execute(DOMAINS)
    for i in range(size):
        ref, p = f"SOFTINST-{i}", parameters(i)
        text = json.dumps(p, sort_keys=True)
        conns["validated"].execute("INSERT INTO instance VALUES (?, ?, '{}', '', '1700000000', 'valid')", (ref, text))
        conns["requested"].execute("INSERT INTO instance VALUES (?, ?, ?, '', '1700000000', 'valid')",
                                   (ref, text, json.dumps({"site_url": f"https://{i}.cdn.test"})))
        if "custom_domain" in p:
            conns["domains"].execute("INSERT INTO domain_validation VALUES (?, ?, ?, 1, '1700000000')",
                                     (ref, p["custom_domain"], f"{i:064x}"))
        listed[ref] = SharedInstance.of(ref, p)
        entries[PREFIX + ref] = TechnicalEntry(PREFIX + ref, f"TECH-{i}", p, "started")
    for conn in conns.values():
        conn.commit()
        conn.close()
    return listed, entries


async def main(size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-legacy-") as tmp:
        folder = Path(tmp)
        (folder / "old").mkdir()
        listed, entries = build(folder / "old", size)
        figures: dict = {"size": size}
        began = time.perf_counter()
        state = read_legacy([folder / "old"])
        figures["read_s"] = round(time.perf_counter() - began, 2)
        began = time.perf_counter()
        out = adopt(state, listed, entries, AdoptPolicy(PREFIX, "guid", "cdnreq-", "spec"), time.time())
        figures["decide_s"] = round(time.perf_counter() - began, 2)
        store = await Store.open(folder / "store" / "cdnreq.db")
        began = time.perf_counter()
        await store.commit(upserts=out.records, host_upserts=out.claims, challenge_upserts=out.challenges,
                           shown=out.shown, events=out.events,
                           also=imports.steps(time.time(), "bench", dict(out.counts), out.findings))
        figures["write_s"] = round(time.perf_counter() - began, 2)
        await store.close()
        figures["counts"] = dict(out.counts)
        figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.legacy")
    parser.add_argument("--size", type=int, default=100_000)
    figures = asyncio.run(main(parser.parse_args().size))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")

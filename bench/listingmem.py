"""What one tick's listing costs in memory: ``python -m bench.listingmem N``.

Issue 14, item 2: the transient listing must not cost several times its
body. In a fresh process, the master double's own body for N customers (with
custom domains, as the benchmark lists them) is read as the daemon reads it
(cdnreq.listing.read_listing on the bytearray the master client fills, with
the default parameters cap) in a fresh process holding only the body, and
its RSS is read before and after (the peak, VmHWM, reset between by
/proc/self/clear_refs). The customers' guids are interned first, as a
daemon holds them once it has read its store (cdnreq.store.rows interns
them; cdnreq.listing then takes the stored guid for a listed one): a
listed guid costs the listing no string of its own, as in an idle tick.
Printed as JSON:
the body, the peak above the process with the body alone, and what the
parsed Listing keeps, in MB and per instance.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.child import ROOT
from bench.double.customers import Customers, customer_guid
from cdnreq.listing import read_listing

CAP = 65536  # [validation].max_parameters_bytes's default


def _status() -> dict[str, int]:
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(customers: int) -> dict[str, Any]:
    """The double's body for `customers`, read in a fresh process (its heap
    holds nothing but the body: what building the body left behind would
    otherwise be reused by the listing and hide its cost)."""
    double = Customers(with_domains=True)
    double.populate(customers)
    with tempfile.NamedTemporaryFile(prefix="cdnreq-listing-", suffix=".json") as body:
        body.write(double.body())
        body.flush()
        del double
        done = subprocess.run([sys.executable, "-m", "bench.listingmem", "--read", body.name,
                               "--known", str(customers)],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"reading the listing failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read(path: str, known: int = 0) -> dict[str, Any]:
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    body = len(raw)
    stored = [sys.intern(customer_guid(i)) for i in range(known)]  # the store's guids (see above)
    gc.collect()
    before = _status()["VmRSS"]
    exact = _reset_peak()
    started = time.perf_counter()
    listing = read_listing(raw, CAP)
    seconds = time.perf_counter() - started
    after = _status()
    count = len(listing.instances)
    mb = 1 << 20
    return {
        "instances": count,
        "body_mb": round(body / mb, 1),
        "seconds": round(seconds, 3),
        "transient_peak_mb": round((after["VmHWM"] - before) / mb, 1),
        "transient_per_body": round((after["VmHWM"] - before) / body, 2),
        "held_mb": round((after["VmRSS"] - before) / mb, 1),
        "held_bytes_per_instance": round((after["VmRSS"] - before) / max(count, 1)),
        "peak_exact": exact,  # False: /proc/self/clear_refs refused, the peak counts the body's reading
        "known_guids": len(stored),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("customers", type=int, nargs="?")
    parser.add_argument("--read", help="(internal) the body to read, in this process")
    parser.add_argument("--known", type=int, default=0, help="(internal) customers whose guids the store holds")
    options = parser.parse_args()
    print(json.dumps(read(options.read, options.known) if options.read else measure(options.customers or 100_000)))

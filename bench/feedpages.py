"""``python -m bench feed``: paging through a million changes in bounded memory (issue 16).

Writes N changes (1,000,000 by default) into a fresh store, the way ticks
write them (commits of 10,000), starts ``cdnreq run`` on it against an empty
master double, then reads the whole feed through GET /changes, page after
page (limit 1000), as a consumer catching up would. Reported: the pages and
their time, and the daemon's resident memory before and at its peak while
serving them (VmHWM, reset before paging): the feed is read one page at a
time, so the peak must not grow with N. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.daemonproc import cdnreq_command, daemon_config, memory_kb, reset_peak
from bench.double.process import DoubleProcess

BATCH = 10_000
PAGE = 1000
TOKEN = "t" * 32


async def _write(database: Path, events: int) -> float:
    from cdnreq.decide.changes import ChangeEvent
    from cdnreq.model import ChangeKind
    from cdnreq.store import Store

    began = time.perf_counter()
    store = await Store.open(database)
    try:
        kinds = list(ChangeKind)
        for start in range(0, events, BATCH):
            await store.commit(changes=[
                ChangeEvent(f"SOFTINST-{i % 100_000}", kinds[i % len(kinds)], 1.8e9 + i,
                            {"title": f"cdnreq-SOFTINST-{i % 100_000}", "n": i})
                for i in range(start, min(events, start + BATCH))])
    finally:
        await store.close()
    return time.perf_counter() - began


def _get(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _ready(base: str, daemon: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert daemon.poll() is None, log.read_text()[-2000:]
        try:
            _get(f"{base}/changes?limit=1")
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the daemon did not answer /changes")


def run(events: int, workdir: Path) -> dict[str, Any]:
    database = workdir / "cdnreq.db"
    wrote_s = asyncio.run(_write(database, events))
    (workdir / "token").write_text(TOKEN)
    (workdir / "token").chmod(0o600)
    with DoubleProcess(customers=0) as double:
        config = daemon_config(workdir / "cdnreq.toml", master_url=double.url, database=database,
                               nameserver="127.0.0.1:9", concurrency=8, tick_interval_s=5.0,
                               extra={"daemon": {"token_file": str(workdir / "token")}})
        base = "http://" + next(l.split('"')[1] for l in config.read_text().splitlines() if l.startswith("listen"))
        log = workdir / "cdnreq.log"
        daemon = subprocess.Popen([*cdnreq_command(), "run", "--config", str(config)],
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        try:
            _ready(base, daemon, log)
            before = memory_kb(daemon.pid)["VmRSS"]
            reset_peak(daemon.pid)
            began, after, pages, seen = time.perf_counter(), 0, 0, 0
            while True:
                page = _get(f"{base}/changes?after={after}&limit={PAGE}")
                if not page["changes"]:
                    break
                pages, seen, after = pages + 1, seen + len(page["changes"]), page["next"]
            took = time.perf_counter() - began
            memory = memory_kb(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    return {"events": events, "write_s": round(wrote_s, 1), "pages": pages, "read": seen,
            "paging_s": round(took, 1), "pages_per_s": round(pages / took, 1) if took else None,
            "rss_before_mb": round(before / 1024), "peak_rss_paging_mb": round(memory["VmHWM"] / 1024)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench feed", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdnreq-bench-feed-") as tmp:
        found = run(args.events, Path(tmp))
    print(f"{found['read']} of {found['events']} changes read in {found['pages']} pages of {PAGE} in "
          f"{found['paging_s']} s ({found['pages_per_s']} pages/s); daemon RSS {found['rss_before_mb']} MB before, "
          f"peak {found['peak_rss_paging_mb']} MB while paging (writing them took {found['write_s']} s)")
    if args.out is not None:
        args.out.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    return 0 if found["read"] == found["events"] else 1


if __name__ == "__main__":
    sys.exit(main())

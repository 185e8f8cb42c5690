"""``python -m bench webhooks``: webhook delivery throughput and lag (issue 16).

The master double serves N customers (10,000 by default); ``cdnreq run``
requests them all, and the tick that reads their answers back makes every
one of them live: N changes in one tick, each to be POSTed to one consumer,
a receiver on loopback (an aiohttp server in this process that answers 204
at once, so what is measured is cdnreq's side). Reported: how long the
deliveries took from the first change written to the last one received, the
throughput over that span, and each change's lag (received minus written),
its median, 95th percentile and maximum, for each `concurrency` asked.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web

from bench.daemonproc import cdnreq_command, daemon_config
from bench.double.process import DoubleProcess
from devtools.slapproxy import free_port

SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


class Receiver:
    """Takes every POST at once (204), noting when each change arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrived: dict[int, tuple[float, float]] = {}  # change id -> (received, written)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()

    async def _hook(self, request: web.Request) -> web.Response:
        data = json.loads(await request.read())["data"]
        self.arrived.setdefault(data["id"], (time.time(), data["at"]))
        return web.Response(status=204)


def _feed_last(base: str, token: str) -> int:
    request = urllib.request.Request(f"{base}/changes?limit=1", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(json.loads(answer.read())["last"])
    except OSError:
        return 0


def one_run(customers: int, concurrency: int, workdir: Path, timeout_s: float) -> dict[str, Any]:
    receiver = Receiver()
    token = "t" * 32
    (workdir / "token").write_text(token)
    (workdir / "token").chmod(0o600)
    (workdir / "hook.whsec").write_text(SECRET)
    (workdir / "hook.whsec").chmod(0o600)
    with DoubleProcess(customers=customers) as double:
        database = workdir / "cdnreq.db"
        config = daemon_config(workdir / "cdnreq.toml", master_url=double.url, database=database,
                               nameserver="127.0.0.1:9", concurrency=8, tick_interval_s=1.0,
                               extra={"daemon": {"token_file": str(workdir / "token")}})
        consumer = {"name": "bench", "url": f"http://127.0.0.1:{receiver.port}/hook",
                    "secret_file": str(workdir / "hook.whsec"), "concurrency": concurrency}
        with open(config, "a", encoding="utf-8") as f:
            f.write("\n" + tomli_w.dumps({"webhooks": {"allow_networks": ["127.0.0.0/8"]}, "consumer": [consumer]}))
        base = "http://" + next(l.split('"')[1] for l in config.read_text().splitlines() if l.startswith("listen"))
        log = open(workdir / "cdnreq.log", "wb")
        daemon = subprocess.Popen([*cdnreq_command(), "run", "--config", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while len(receiver.arrived) < customers and time.monotonic() < deadline:
                assert daemon.poll() is None, (workdir / "cdnreq.log").read_text()[-2000:]
                time.sleep(0.2)
            written = _feed_last(base, token)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    return _figures(receiver, customers, concurrency, written)


def _figures(receiver: Receiver, customers: int, concurrency: int, written: int) -> dict[str, Any]:
    arrived = sorted(receiver.arrived.values())
    lags = sorted(received - at for received, at in arrived)
    span = arrived[-1][0] - min(at for _, at in arrived) if arrived else None
    return {
        "customers": customers, "concurrency": concurrency, "changes_written": written,
        "delivered": len(arrived), "span_s": None if span is None else round(span, 2),
        "deliveries_per_s": None if not span else round(len(arrived) / span),
        "lag_median_s": round(statistics.median(lags), 3) if lags else None,
        "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3) if lags else None,
        "lag_max_s": round(lags[-1], 3) if lags else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench webhooks", description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="changes in one tick (one per customer)")
    parser.add_argument("--concurrency", type=int, action="append", help="[[consumer]].concurrency (repeatable;"
                        " default 4 and 16)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    for concurrency in args.concurrency or [4, 16]:
        with tempfile.TemporaryDirectory(prefix="cdnreq-bench-webhooks-") as tmp:
            found = one_run(args.customers, concurrency, Path(tmp), args.timeout)
        results.append(found)
        print(f"{found['delivered']} of {found['customers']} changes delivered at concurrency {concurrency}: "
              f"{found['deliveries_per_s']}/s over {found['span_s']} s; lag median {found['lag_median_s']} s, "
              f"p95 {found['lag_p95_s']} s, max {found['lag_max_s']} s", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["delivered"] >= r["customers"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""A local demo: cdnreq reconciling against a real slapproxy on loopback.

It starts slapproxy and a small DNS server (both on 127.0.0.1), creates the
requester, the technical CDN host and a few customer shared instances, and
runs `cdnreq run` on them. It then plays the other parties: the customers,
who publish their challenge tokens in DNS when asked; the technical CDN,
which publishes each entry's answer after it is requested; and a customer
who tries to take a host that is already someone else's. Finally it adds,
changes and removes customers so every path shows in the logs.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, Slapproxy, setup_cdn, write_config

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Above the daemon's own [daemon].shutdown_timeout_s default, so it finishes its calls in flight.
DAEMON_STOP_S = 60.0

PARAMETERS = [
    {"url": "https://shop-backend.example", "custom_domain": "shop.example.com", "enable_cache": "true"},
    {"url": "https://blog-backend.example", "custom_domain": "blog.example.org", "server-alias": "www.blog.example.org"},
    {"url": "https://api-backend.example", "custom_domain": "api.example.net", "https-only": "false"},
    {"url": "https://docs-backend.example", "type": "zope", "path": "/docs"},
    {"url": "https://media-backend.example", "server-alias": "", "enable-http3": "false"},
]


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def play_cdn(site: CdnSite, published: set[str]) -> int:
    """Publish an answer for every technical entry that has none yet."""
    count = 0
    for entry in site.technical_entries():
        guid = entry["instance_guid"]
        if guid in published:
            continue
        name = entry["title"].lower()
        site.publish_as_cdn(
            guid,
            {
                "domain": f"{name}.cdn.example",
                "site_url": f"https://{name}.cdn.example",
                "secure_access": f"https://{name}.cdn.example",
            },
        )
        published.add(guid)
        count += 1
    return count


def wait_live(site: CdnSite, guids: list[str], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if all("domain" in site.customer(g)["connection_parameters"] for g in guids):
            return True
        time.sleep(0.5)
    return False


def play_customers(site: CdnSite, dns: DevDns, proven: set[str]) -> int:
    """Each customer asked for a proof publishes its token where it was told."""
    count = 0
    for entry in site.customers():
        shown = site.customer(entry["instance_guid"])["connection_parameters"]
        record, token = shown.get("txt_record"), shown.get("txt_value")
        if record and token and record not in proven:
            dns.set_txt(record, token)
            proven.add(record)
            say(f"{entry['title']} published its token at {record}")
            count += 1
    return count


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the demo; everything it started is being stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ignore_stop_signals() -> None:
    """Once stopping has begun, a second Ctrl-C must not cut it short (and leave a process)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _interrupt(signum: int, _frame: object) -> None:
    """The first SIGINT/SIGTERM stops the demo; later ones are ignored while it cleans up."""
    _ignore_stop_signals()
    raise Interrupted(signum)


@contextlib.contextmanager
def _deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while starting processes, so none is left running unknown to
    the demo (a Popen cut short after its fork); the signal lands right after."""
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _f: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            _interrupt(caught[0], None)


def _stop_daemon(daemon: subprocess.Popen, signum: int) -> None:
    """Forward the stop signal to the daemon (its own session: a terminal's Ctrl-C
    reaches only the demo) and wait for it; SIGKILL if it hangs."""
    if daemon.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(signum)
        try:
            daemon.wait(timeout=DAEMON_STOP_S)
        except subprocess.TimeoutExpired:
            say(f"the daemon did not stop within {DAEMON_STOP_S:.0f} s; killing it")
            daemon.kill()
            daemon.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("demo-run"), help="where to keep everything (wiped first)")
    parser.add_argument("--customers", type=int, default=len(PARAMETERS))
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    args = parser.parse_args(argv)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        return _run(args)
    except Interrupted as stop:
        say(f"{stop} received: stopped everything")
        return 128 + stop.signum


def _run(args: argparse.Namespace) -> int:
    workdir = args.dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        with _deferred_signals():
            proxy, dns = Slapproxy(workdir / "slapproxy"), DevDns()
            stack.callback(dns.stop)
            stack.callback(proxy.stop)
            stack.callback(_ignore_stop_signals)  # callbacks run last in, first out
            proxy.start()
            dns.start()
        site = setup_cdn(proxy)
        guids = [
            site.add_customer(f"customer-{i}", PARAMETERS[i % len(PARAMETERS)])
            for i in range(args.customers)
        ]
        config = write_config(
            workdir / "cdnreq.toml",
            site,
            database=workdir / "cdnreq.db",
            daemon={"tick_interval_s": 3.0},
            dns={"nameservers": [dns.address], "timeout_s": 1.0, "tries": 2},
            domain={"retention_s": 0},
            logging={"format": "console"},
        )
        say(f"slapproxy (the master) on {proxy.url}, log in {proxy.log_path}")
        say(f"DNS server for the customers' domains on {dns.address}")
        say(f"{len(guids)} customer shared instances hosted by {site.requester_guid}")
        say(f"configuration: {config}")
        say(f"look at it with: cdnreq status --config {config}")
        say("Ctrl-C stops the daemon, slapproxy and the DNS server")
        signum = signal.SIGTERM
        with _deferred_signals():
            daemon = subprocess.Popen(
                [str(Path(sys.executable).with_name("cdnreq")), "run", "--config", str(config)],
                start_new_session=True,
            )
        try:
            return _story(site, dns, guids, daemon, args.duration)
        except Interrupted as stop:
            signum = stop.signum
            raise
        finally:
            _ignore_stop_signals()
            _stop_daemon(daemon, signum)
            say(f"the database stays in {workdir / 'cdnreq.db'}")


def _story(site: CdnSite, dns: DevDns, guids: list[str], daemon: subprocess.Popen, duration: float) -> int:
    end = time.monotonic() + duration if duration else float("inf")
    published: set[str] = set()
    proven: set[str] = set()
    deadline = time.monotonic() + 90
    while len(site.technical_entries()) < len(guids):
        if daemon.poll() is not None or time.monotonic() > deadline:
            say("the daemon did not request the entries; see its log above")
            return 1
        play_customers(site, dns, proven)
        time.sleep(0.5)
    say("every customer is requested on the technical CDN; playing the CDN: publishing answers")
    play_cdn(site, published)
    if not wait_live(site, guids, time.monotonic() + 60):
        say("the answers were not relayed to the customers in time")
        return 1
    say("every customer received the CDN's answer")
    say("someone tries to take shop.example.com, which customer-0 proved: refused")
    site.add_customer("hijacker", {"url": "https://evil.example", "custom_domain": "SHOP.example.com."})
    say("a new customer arrives, one changes its backend, one leaves")
    guids.append(site.add_customer("customer-new", {"url": "https://new-backend.example"}))
    site.add_customer("customer-0", dict(PARAMETERS[0], url="https://shop-backend-v2.example"))
    site.remove_customer("customer-3")
    while time.monotonic() < end:
        if daemon.poll() is not None:
            say(f"the daemon exited with {daemon.returncode}")
            return daemon.returncode or 1
        if play_cdn(site, published):
            say("published the CDN's answer for the new entry")
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

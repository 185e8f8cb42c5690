"""nsd on a loopback port with a generated zone, for benchmarks ONLY.

The benchmark needs a real authoritative DNS server holding the customers'
challenge records: nsd (Debian package ``nsd``), run as a child process in
the foreground with its own configuration in a temporary directory, never
the system's.

* :func:`zone_text` writes one zone, ``example.``, holding a TXT record per
  challenge (``_slapos-challenge.www.d<i>.example``, the token as value).
  Every record has TTL 0 and the SOA minimum is 0, so no resolver cache
  (c-ares keeps answers for their TTL) hides a lookup: each one reaches nsd.
* :func:`nsd_conf_text` is the configuration: listens only on
  ``127.0.0.1@PORT``, no privilege drop, no chroot, every file in the work
  directory, no database, no remote control, and no response rate limiting
  (by default nsd drops answers past 200 a second to one /24).
* :func:`ensure_nsd` installs the package with apt-get when it is missing
  (root only); :class:`Nsd` starts and stops the server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from bench import child

__all__ = [
    "ZONE", "Nsd", "NsdUnavailable", "challenge_name", "parent_challenge_name", "ensure_nsd", "nsd_conf_text",
    "nsd_version", "write_zone", "zone_text",
]

ZONE = "example"
LABEL = "_slapos-challenge"


class NsdUnavailable(RuntimeError):
    """nsd is not installed and could not be installed."""


def challenge_name(index: int, label: str = LABEL) -> str:
    """The TXT record customer `index` publishes (its custom_domain is www.d<index>.example)."""
    return f"{label}.www.d{index}.{ZONE}"


def parent_challenge_name(index: int) -> str:
    """The other proof name the daemon asks for www.d<i>.example: at the registrable domain."""
    return f"{LABEL}.d{index}.example"


def _txt_value(value: str) -> str:
    if any(c in value for c in '"\\\n') or not value.isascii():
        raise ValueError(f"not a plain TXT value: {value!r}")
    return f'"{value}"'


def zone_text(records: Iterable[tuple[str, str]], *, serial: int = 1) -> str:
    """The zone file of ``example.``: SOA, NS, and one TXT record per (name, value).

    Names are absolute (a trailing dot is added) and must be under example.
    """
    lines = [
        f"$ORIGIN {ZONE}.",
        "$TTL 0",
        f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. {serial} 3600 600 86400 0",
        f"@ IN NS ns.{ZONE}.",
        "ns IN A 127.0.0.1",
    ]
    suffix = f".{ZONE}"
    for name, value in records:
        name = name.rstrip(".").lower()
        if not name.endswith(suffix):
            raise ValueError(f"{name!r} is not in the zone {ZONE}.")
        lines.append(f"{name}. 0 IN TXT {_txt_value(value)}")
    return "\n".join(lines) + "\n"


def write_zone(path: Path, records: Iterable[tuple[str, str]]) -> Path:
    path = Path(path)
    path.write_text(zone_text(records), encoding="ascii")
    return path


def nsd_conf_text(workdir: Path, port: int, zonefile: str = f"{ZONE}.zone", *,
                  verbosity: int = 1, server_count: int = 1) -> str:
    """nsd.conf for a foreground nsd on 127.0.0.1:`port`, all its files in `workdir`."""
    w = Path(workdir).resolve()
    return f"""# written by bench/nsd.py for one benchmark run
server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    do-ip4: yes
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{w}"
    pidfile: "{w}/nsd.pid"
    xfrdfile: "{w}/xfrd.state"
    xfrdir: "{w}"
    zonelistfile: "{w}/zone.list"
    database: ""
    logfile: "{w}/nsd.log"
    verbosity: {verbosity}
    server-count: {server_count}
    hide-version: yes
    zonefiles-write: 0
    # response rate limiting would drop the benchmark's answers (200 qps per /24 by default)
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0

remote-control:
    control-enable: no

zone:
    name: "{ZONE}"
    zonefile: "{zonefile}"
"""


def find_nsd() -> str | None:
    return shutil.which("nsd") or next(
        (p for p in ("/usr/sbin/nsd", "/usr/local/sbin/nsd") if os.access(p, os.X_OK)), None)


def ensure_nsd(*, install: bool = True, log=print) -> str:
    """The nsd executable; installs the Debian package when missing (root only)."""
    found = find_nsd()
    if found or not install:
        if not found:
            raise NsdUnavailable("nsd is not installed")
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise NsdUnavailable("nsd is not installed, and apt-get cannot be used here (not root, or no apt)")
    log("nsd is missing: apt-get update && apt-get install -y nsd ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "nsd"]):
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise NsdUnavailable(f"{' '.join(command)} failed ({done.returncode}): {' / '.join(tail)}")
    found = find_nsd()
    if not found:
        raise NsdUnavailable("apt-get installed nsd, but no nsd executable was found")
    return found


def nsd_version(executable: str) -> str:
    done = subprocess.run([executable, "-v"], capture_output=True, text=True)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no free loopback port for nsd")


class Nsd:
    """A foreground nsd (``nsd -d -c conf``) serving the zone file in `workdir`."""

    def __init__(self, workdir: Path, *, executable: str | None = None, port: int | None = None):
        self.workdir = Path(workdir)
        self.executable = executable or find_nsd()
        if self.executable is None:
            raise NsdUnavailable("nsd is not installed")
        self.port = port
        self.process: subprocess.Popen | None = None
        self.conf_path = self.workdir / "nsd.conf"
        self.log_path = self.workdir / "nsd.log"
        self.zone_path = self.workdir / f"{ZONE}.zone"

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None
        return "127.0.0.1", self.port

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120, probe: str | None = None) -> Self:
        """Start nsd and wait until it answers `probe` (a name in the zone; the apex by default)."""
        from dnslib import DNSRecord

        if self.process is not None and self.process.poll() is None:
            return self
        if not self.zone_path.exists():
            raise FileNotFoundError(f"write the zone first: {self.zone_path}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = _free_port()
        self.conf_path.write_text(nsd_conf_text(self.workdir, self.port))
        self.process = child.spawn([self.executable, "-d", "-c", str(self.conf_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        question = DNSRecord.question(probe or f"{ZONE}.", "TXT" if probe else "SOA")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    sock.sendto(question.pack(), self.address)
                    answer = DNSRecord.parse(sock.recvfrom(65535)[0])
                except OSError:
                    time.sleep(0.05)
                    continue
                if answer.header.rcode == 0 and answer.rr:
                    return self
                time.sleep(0.05)
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"nsd did not answer on {self.nameserver}; its log:\n{log}")

    def stop(self) -> None:
        process, self.process = self.process, None
        child.stop(process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A real SlapOS master on loopback, for the integration tests and the local demo.

cdnreq talks to the SlapOS master's JSON API. Rather than mocking that API,
the integration tests and the demo run *slapproxy* (``slapos proxy start``,
the development master shipped with slapos.core) on 127.0.0.1 and drive it
through this module: :class:`Slapproxy` starts and stops the process and
makes plain synchronous API calls; :func:`setup_cdn` formats a computer,
supplies a requester and a technical CDN software release and requests one
instance of each; the returned :class:`CdnSite` plays the other parties (the
customers, who order shared instances hosted by the requester, and the
technical CDN, which publishes connection parameters to the shared instances
the requester ordered from it); :func:`write_config` writes a cdnreq
configuration pointing at that site.

It deliberately does not import :mod:`cdnreq.master`: tests use it as an
independent second client to check what cdnreq did.

Every call is made one at a time, and callers must keep it that way:
slapproxy answers 200 to concurrent shared-instance requests but keeps only
some of them (a read-modify-write race on the hosting partition's list).
For the same reason :func:`write_config` sets ``concurrency = 1``.

Other slapproxy behaviour this module works around or that tests rely on:

* guids are ``<title>___<requested_by>___<0|1>`` and slapproxy splits them
  from the left, so its JSON API answers 403 "not handled" to get/publish on
  a shared instance whose title contains ``___``. cdnreq never produces such
  titles (:mod:`cdnreq.decide.titles` turns an unsafe guid into a slug
  plus a hash), so this module simply calls the JSON API;
* requesting a shared instance with ``state = "destroyed"`` removes it from
  its host's list (the answer still says ``started``); ``get`` on its guid
  then fails with 500, and the row and its connection parameters survive:
  requested again, it comes back with the connection parameters it had.

Synchronous; standard library plus tomli-w.
"""

from __future__ import annotations

import contextlib
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

__all__ = [
    "MasterLog",
    "COMPUTER_ID", "REQUESTER_SR", "CDN_SR", "DevMasterError", "Slapproxy", "CdnSite",
    "free_port", "find_slapos", "setup_cdn", "split_guid", "write_config",
]

COMPUTER_ID = "local_computer"
REQUESTER_SR = "http://sr.invalid/cdn-requester/software.cfg"
CDN_SR = "http://sr.invalid/rapid-cdn/software.cfg"
REQUESTER_TITLE = "cdn-requester"
CDN_TITLE = "cdn-tech"

_POLL_INTERVAL_S = 0.05
_STOP_GRACE_S = 10.0


class DevMasterError(RuntimeError):
    """A non-2xx answer from slapproxy (or a failure to start it)."""

    def __init__(self, status: int, title: str, body: Any = None):
        super().__init__(f"{status}: {title}" if status else title)
        self.status, self.title, self.body = status, title, body


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_slapos() -> str:
    """The ``slapos`` executable: next to sys.executable first, then PATH."""
    candidate = Path(sys.executable).parent / "slapos"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    if found := shutil.which("slapos"):
        return found
    raise FileNotFoundError(
        f"the 'slapos' executable was not found next to {sys.executable} nor on PATH; "
        "install the devmaster extra: "
        "pip install 'slapos.core>=1.26' 'slapos.libnetworkcache>=0.30'"
    )


def split_guid(instance_guid: str) -> tuple[str, str, bool]:
    """(title, requested_by, shared) of a slapproxy guid ``<title>___<requested_by>___<0|1>``.

    Split from the right, so it also works for titles containing ``___``.
    """
    parts = instance_guid.rsplit("___", 2)
    if len(parts) != 3 or parts[2] not in ("0", "1"):
        raise ValueError(f"not a slapproxy instance guid: {instance_guid!r}")
    return parts[0], parts[1], parts[2] == "1"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


class Slapproxy:
    """A slapproxy process on 127.0.0.1, and a synchronous client for it."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.computer_id = COMPUTER_ID
        self.cfg_path = self.workdir / "slapos.cfg"
        self.log_path = self.workdir / "slapproxy.log"
        self.database_path = self.workdir / "proxy.db"
        self.process: subprocess.Popen | None = None
        self.start_duration_s: float | None = None
        self._log_file = None

    # -- process -------------------------------------------------------------

    def _write_cfg(self) -> None:
        roots = {name: self.workdir / name for name in ("instance", "software")}
        for root in roots.values():
            root.mkdir(parents=True, exist_ok=True)
        self.cfg_path.write_text(
            f"[slapos]\ninstance_root = {roots['instance']}\n"
            f"software_root = {roots['software']}\ncomputer_id = {self.computer_id}\n\n"
            f"[slapproxy]\nhost = {self.host}\nport = {self.port}\n"
            f"database_uri = {self.database_path}\n"
        )

    def _answers(self) -> bool:
        try:
            self.call("slapos.allDocs.v0.instance_tree_list", {}, timeout=2)
        except (DevMasterError, OSError, ValueError):
            return False
        return True

    def _start_failed(self, what: str) -> DevMasterError:
        return DevMasterError(0, f"slapproxy {what} (log {self.log_path}):\n{_tail(self.log_path)}")

    def start(self, timeout_s: float = 60) -> "Slapproxy":
        """Launch slapproxy and wait until it answers; raise with the log tail otherwise."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_cfg()
        executable = find_slapos()
        self._log_file = open(self.log_path, "ab")
        began = time.monotonic()
        self.process = subprocess.Popen(
            [executable, "proxy", "start", "--cfg", str(self.cfg_path)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True,
        )
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise self._start_failed(f"exited with status {code} while starting")
            if self._answers():
                self.start_duration_s = time.monotonic() - began
                return self
            if time.monotonic() >= began + timeout_s:
                self.stop()
                raise self._start_failed(f"did not answer on {self.url} within {timeout_s} s")
            time.sleep(_POLL_INTERVAL_S)

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL after 10 s. Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # slapos proxy start may run the server in a child: signal the
            # whole process group it was started in (start_new_session).
            self._signal(process, signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait()
        self._close_log()

    @staticmethod
    def _signal(process: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> "Slapproxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- API -----------------------------------------------------------------

    def call(
        self, name: str, body: dict, *, partition: str | None = None, timeout: float = 30
    ) -> dict:
        """POST ``body`` to ``<url>/<name>``; the partition header when ``partition`` is given."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if partition is not None:
            headers["Authorization"] = (
                f"X-SlapPartition computer_id={self.computer_id}, "
                f"computer_partition_id={partition}"
            )
        req = urllib.request.Request(
            f"{self.url}/{name}", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            title = payload.get("title", exc.reason) if isinstance(payload, dict) else exc.reason
            raise DevMasterError(exc.code, f"{name}: {title}", payload) from None
        return json.loads(raw) if raw else {}

    def format(self, partitions: int = 4) -> dict:
        def partition(i: int) -> dict:
            ip = {"ip-address": f"127.0.1.{i + 1}", "network-interface": "lo",
                  "netmask": "255.0.0.0"}
            return {"partition_id": f"slappart{i}", "ip_list": [ip]}

        return self.call(
            "slapos.put.v0.compute_node_format",
            {"computer_guid": self.computer_id,
             "compute_partition_list": [partition(i) for i in range(partitions)]},
        )

    def supply(self, software_release_uri: str) -> dict:
        return self.call(
            "slapos.post.v0.software_installation",
            {"computer_guid": self.computer_id, "software_release_uri": software_release_uri},
        )

    def request(
        self, title: str, software_release_uri: str, *, software_type: str = "default",
        parameters: dict | None = None, shared: bool = False, state: str = "started",
        partition: str | None = None, sla: dict | None = None,
    ) -> dict:
        body: dict[str, Any] = {
            "title": title, "software_release_uri": software_release_uri,
            "software_type": software_type, "shared": shared, "state": state,
        }
        if parameters is not None:
            body["parameters"] = parameters
        if sla:
            body["sla_parameters"] = sla
        return self.call("slapos.post.v0.software_instance", body, partition=partition)

    def hosted(self, instance_guid: str) -> list[dict]:
        """The shared instances hosted by ``instance_guid``."""
        name = "slapos.allDocs.v0.instance_node_instance_list"
        return list(self.call(name, {"instance_guid": instance_guid}).get("result_list", []))

    def get(self, instance_guid: str) -> dict:
        """``slapos.get.v0.software_instance`` (403 for a title containing ``___``)."""
        return self.call("slapos.get.v0.software_instance", {"instance_guid": instance_guid})

    def publish(self, instance_guid: str, params: dict, *, partition: str) -> None:
        """Publish connection parameters to ``instance_guid`` as ``partition``."""
        self.call(
            "slapos.put.v0.software_instance_connection_parameter",
            {"instance_guid": instance_guid, "connection_parameter_dict": params},
            partition=partition,
        )


@dataclass
class CdnSite:
    """A formatted slapproxy with a requester instance and a technical CDN host."""

    proxy: Slapproxy
    requester_guid: str
    requester_partition: str
    cdn_guid: str
    cdn_partition: str
    requester_sr: str = REQUESTER_SR
    cdn_sr: str = CDN_SR

    def add_customer(self, name: str, parameters: dict, state: str = "started") -> str:
        """A customer orders a shared instance of the requester SR; returns its instance_guid."""
        answer = self.proxy.request(name, self.requester_sr, parameters=parameters,
                                    shared=True, state=state)
        return answer["instance_guid"]

    def remove_customer(self, name: str) -> None:
        """The customer destroys its shared instance (same title, state destroyed)."""
        self.proxy.request(name, self.requester_sr, shared=True, state="destroyed")

    def customers(self) -> list[dict]:
        """The shared instances hosted by the requester."""
        return self.proxy.hosted(self.requester_guid)

    def technical_entries(self) -> list[dict]:
        """The shared instances hosted by the technical CDN host."""
        return self.proxy.hosted(self.cdn_guid)

    def publish_as_cdn(self, tech_guid: str, params: dict) -> None:
        """Publish connection parameters to a technical shared instance, as the CDN partition."""
        self.proxy.publish(tech_guid, params, partition=self.cdn_partition)

    def customer(self, guid: str) -> dict:
        return self.proxy.get(guid)


class MasterLog:
    """slapproxy's own access log: the calls a client really made since mark()."""

    def __init__(self, site: CdnSite):
        self.path = site.proxy.log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def calls(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        return re.findall(r'"POST /(slapos\.[a-zA-Z0-9_.]+) HTTP', text)


def setup_cdn(proxy: Slapproxy) -> CdnSite:
    """Format, supply both SRs, request the requester and the technical CDN host."""
    proxy.format()
    proxy.supply(REQUESTER_SR)
    proxy.supply(CDN_SR)
    requester = proxy.request(REQUESTER_TITLE, REQUESTER_SR)
    cdn = proxy.request(CDN_TITLE, CDN_SR)
    return CdnSite(proxy, requester["instance_guid"], requester["compute_partition_id"],
                   cdn["instance_guid"], cdn["compute_partition_id"])


def write_config(
    path: Path, site: CdnSite, *, database: Path | str, request_prefix: str = "cdnreq-",
    **sections: dict,
) -> Path:
    """Write a cdnreq TOML configuration (docs/config-spec.md) for ``site``.

    ``sections`` override or add keys per section, e.g. ``daemon={"allow_empty": True}``;
    a new section name adds a table. A value of ``None`` removes that key.
    """
    path = Path(path)
    tables: dict[str, dict[str, Any]] = {
        "master": {
            "url": site.proxy.url, "instance_guid": site.requester_guid,
            "computer_id": site.proxy.computer_id, "partition_id": site.requester_partition,
            "timeout_s": 10.0,
        },
        "technical_cdn": {
            "software_release_uri": site.cdn_sr, "software_type": "default",
            "request_prefix": request_prefix,
        },
        "daemon": {
            "database": os.fspath(database),
            "concurrency": 1,  # slapproxy drops concurrent shared-instance requests
            "tick_interval_s": 2.0, "listen": f"127.0.0.1:{free_port()}",
        },
        # Never the system resolver from a test or the demo: a dead loopback
        # port unless the caller passes its own DNS server.
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout_s": 0.5, "tries": 1},
        "logging": {"format": "json"},
    }
    for section, overrides in sections.items():
        merged = {**tables.get(section, {}), **(overrides or {})}
        tables[section] = {key: value for key, value in merged.items() if value is not None}
    tables = json.loads(json.dumps(tables, default=os.fspath))  # paths (even nested) to str
    header = "# cdnreq configuration written by devtools.devmaster.write_config\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(tables), encoding="utf-8")
    return path

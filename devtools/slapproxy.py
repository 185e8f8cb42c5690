"""slapproxy (``slapos proxy start``) on 127.0.0.1, and a plain synchronous client for it.

:class:`Slapproxy` starts and stops the process (its own process group: it
may run the server in a child) and makes the JSON API calls one at a time.
Callers must keep it that way: slapproxy answers 200 to concurrent
shared-instance requests but keeps only some of them (a read-modify-write
race on the hosting partition's list). What to request is
:mod:`devtools.devmaster`'s business.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["COMPUTER_ID", "DevMasterError", "Slapproxy", "find_slapos", "free_port"]

COMPUTER_ID = "local_computer"

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
        self._port_chosen = port is None  # another may be taken if someone binds this one first
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
        """Launch slapproxy and wait until it answers; raise with the log tail otherwise.
        A port this object chose that another process bound between the
        choice and slapproxy's bind (parallel test workers) is chosen again,
        before its first start only: a restart keeps its address."""
        for _ in range(3):
            try:
                return self._start(timeout_s)
            except DevMasterError as error:
                if not (self._port_chosen and "Address already in use" in str(error)):
                    raise
                self.port = free_port()
                self.url = f"http://{self.host}:{self.port}"
        return self._start(timeout_s)

    def _start(self, timeout_s: float) -> "Slapproxy":
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
                self._port_chosen = False  # started: a restart keeps its address
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

"""A throw-away PostgreSQL server on loopback for the tests and the bench.

`initdb` in a temporary directory, then `postgres` listening on 127.0.0.1
on a free port, stopped (and its directory removed) by `stop()`. PostgreSQL
refuses to run as root: as root, both run as an unprivileged user (the
`postgres` account Debian's package creates, else `nobody`). The server
binaries come from Debian's postgresql package (/usr/lib/postgresql/N/bin);
scripts/test.sh installs it when missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devtools.slapproxy import free_port

SUPERUSER = "cdnreq_admin"


class PgServerError(RuntimeError):
    pass


def find_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise FileNotFoundError("no PostgreSQL server (initdb) found: install Debian's postgresql package "
                            "(bash scripts/test.sh does, as root)")


def _runner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgServerError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


class PgServer:
    """One PostgreSQL cluster on 127.0.0.1:`port`, superuser SUPERUSER (trust auth on loopback)."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None):
        self.bin = find_bin()
        self.port = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.settings = settings or {}
        self.user = _runner()
        self.root = Path(tempfile.mkdtemp(prefix="cdnreq-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.process: subprocess.Popen | None = None
        if self.user is not None:
            os.chmod(self.root, 0o755)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        done = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            capture_output=True, text=True, cwd=self.root, **self._as_user(),
        )
        if done.returncode != 0:
            raise PgServerError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self, timeout_s: float = 30.0) -> "PgServer":
        options = {
            "listen_addresses": self.host, "port": str(self.port), "unix_socket_directories": str(self.root),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "400",
            **self.settings,
        }
        argv = [str(self.bin / "postgres"), "-D", str(self.data)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        log = open(self.log, "ab")
        if self.user is not None:
            os.chown(self.log, self.user.pw_uid, self.user.pw_gid)
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                        **self._as_user())
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PgServerError(f"postgres exited ({self.process.returncode}): {self.tail()}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.05)
        raise PgServerError(f"postgres not ready after {timeout_s} s: {self.tail()}")

    def stop(self, *, fast: bool = True) -> None:
        """Stop the server (SIGINT: fast shutdown, open sessions are cut)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(2 if fast else 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def tail(self, size: int = 2000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [str(self.bin / "psql"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise PgServerError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str, owner: str = SUPERUSER, template: str | None = None) -> str:
        """A new database, empty or a copy of `template` (which nobody may be
        connected to); the URL cdnreq's [store].url takes for it."""
        copy = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"{copy}')
        return self.url(name, owner)

    def url(self, database: str, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

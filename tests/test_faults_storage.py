"""Storage faults (issue 6, item 5): the database on a full disk, read-only,
corrupted, or written by a newer cdnreq.

Each case runs the real `cdnreq` command in a subprocess, against the master
double (bench/double/) in its own process: it is fast, and slapproxy would
add nothing here since nothing in these cases depends on the master's
behaviour. What every case must show: a clear error naming the problem, the
documented exit code, and no partial write (the tables compared row by row
before and after; a corrupted file compared byte for byte). A full disk must
also be survivable: once space is freed, the next tick succeeds.

The full-disk and read-only cases mount a small tmpfs / a read-only bind
mount, which needs root; without root, the full-disk cases are skipped (with a
message) and the read-only ones fall back to permission bits (which root
would bypass).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bench.double import REQUESTER_GUID, DoubleProcess, customer_guid
from cdnreq.decide.titles import technical_title
from devtools.devmaster import free_port
from cdnreq.store.migrations import LATEST

pytestmark = pytest.mark.faults

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
SR = "http://sr.invalid/rapid-cdn/software.cfg"
PREFIX = "cdnreq-"
CUSTOMERS = 200
ROOT = os.geteuid() == 0
TABLES = ("instances", "events", "hosts", "challenges", "ticks", "schema_version", "migrations")


class KnownBug(AssertionError):
    """The failure a strict xfail below expects; any other failure is a real one."""


def known_bug(condition: object, message: str) -> None:
    if not condition:
        raise KnownBug(message)


# -- helpers ------------------------------------------------------------------------------



def write_config(path: Path, master_url: str, database: Path) -> Path:
    config = {
        "master": {"url": master_url, "instance_guid": REQUESTER_GUID, "timeout_s": 10.0},
        "technical_cdn": {"software_release_uri": SR, "request_prefix": PREFIX},
        "daemon": {
            "database": str(database),
            "concurrency": 8,
            "tick_interval_s": 0.3,
            "listen": f"127.0.0.1:{free_port()}",
            "retry_base_s": 0.5,
            "retry_max_s": 2.0,
        },
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout_s": 0.5, "tries": 1},
        # the domain secret away from the database's directory, so that a read-only
        # or full database directory is the only fault
        "domain": {"retention_s": 0, "secret_file": str(path.parent / "domain-secret")},
        # no scheduled backup: the database is the only file written
        "store": {"backup_interval_s": 0},
        "logging": {"format": "json"},
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def cdnreq(command: str, config: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CDNREQ, command, "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=timeout)


def tick_line(stderr: str) -> dict | None:
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") in ("tick done", "tick failed"):
                return entry
    return None


def assert_clear_failure(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit `code`, a message naming the problem, and no Python traceback."""
    text = result.stderr
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    lowered = text.lower()
    assert any(word.lower() in lowered for word in words), f"no word of {words} in:\n{text[-3000:]}"
    return text


def snapshot(database: Path) -> dict[str, list[tuple]]:
    """Every row of every table, read without writing anything."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {t: list(conn.execute(f"SELECT * FROM {t} ORDER BY rowid")) for t in TABLES}
    finally:
        conn.close()


def integrity(database: Path) -> str:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return ";".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_files(directory: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(directory.iterdir()) if p.name.startswith("cdnreq.db")}


def run_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root only), unmounted afterwards."""
    if not ROOT:
        pytest.skip("a full filesystem needs a tmpfs mount, which needs root: skipped")
    path.mkdir(parents=True, exist_ok=True)
    mounted = run_cmd("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): skipped")
    try:
        yield path
    finally:
        if run_cmd("umount", str(path)).returncode != 0:
            run_cmd("umount", "-l", str(path))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """`path` (a file or a directory) read-only for cdnreq: a read-only bind mount
    when root (root ignores permission bits), else chmod. Yields how."""
    if ROOT:
        bound = run_cmd("mount", "--bind", str(path), str(path))
        if bound.returncode == 0:
            remount = run_cmd("mount", "-o", "remount,bind,ro", str(path))
            try:
                if remount.returncode != 0:
                    pytest.skip(f"cannot remount read-only ({remount.stderr.strip()}): skipped")
                yield "read-only bind mount"
            finally:
                if run_cmd("umount", str(path)).returncode != 0:
                    run_cmd("umount", "-l", str(path))
            return
        pytest.skip(f"root without mount permission ({bound.stderr.strip()}): permission bits would not stop it")
    # without root: permission bits, on the directory and everything in it (as a
    # read-only mount would be), or on the file alone
    targets = [path, *(sorted(path.iterdir()) if path.is_dir() else ())]
    modes = {p: p.stat().st_mode for p in targets}
    for p in targets:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield "chmod"
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of `directory`, then free `leave` bytes; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if len(block) == 512:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


# -- a real database, made once -------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database after two real ticks over 200 customers (all live), closed cleanly."""
    where = tmp_path_factory.mktemp("golden")
    with DoubleProcess(customers=CUSTOMERS, publish_after="next_read") as double:
        config = write_config(where / "c.toml", double.url, where / "state" / "cdnreq.db")
        for _ in range(2):
            result = cdnreq("once", config)
            assert result.returncode == 0, result.stderr[-3000:]
    database = where / "state" / "cdnreq.db"
    assert not Path(f"{database}-wal").exists()
    rows = snapshot(database)
    assert len(rows["instances"]) == CUSTOMERS and all(r[2] == "live" for r in rows["instances"])
    return database


@pytest.fixture
def double() -> Iterator[DoubleProcess]:
    with DoubleProcess(customers=CUSTOMERS, publish_after="next_read") as process:
        yield process


def install(golden: Path, database: Path) -> Path:
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(golden, database)
    return database


# -- a full disk -------------------------------------------------------------------------------


def request_events_match_records(rows: dict[str, list[tuple]]) -> None:
    """Each transaction whole: a record marked requested has its request event, and back."""
    requested = {r[0] for r in rows["instances"] if r[5] is not None}  # param_hash
    with_event = {e[3] for e in rows["events"] if e[4] in ("request", "update") and e[5] == "ok"}
    assert requested == with_event


@pytest.mark.parametrize(
    "leave",
    [0, 64 * 1024, 512 * 1024],
    ids=["nothing-free", "64KB-free", "512KB-free"],
)
def test_full_disk_fails_cleanly_writes_nothing_half_and_recovers(
    tmp_path: Path, golden: Path, double: DoubleProcess, leave: int
) -> None:
    with tmpfs(tmp_path / "fs", "4m") as fs:
        database = install(golden, fs / "cdnreq.db")
        config = write_config(tmp_path / "c.toml", double.url, database)
        # (reading the rows leaves SQLite's -shm file beside the database, so cdnreq
        # opens it and fails at its first write; opening on a full disk is the next test)
        before = snapshot(database)
        double.control("add", {"count": 1000, "start": CUSTOMERS})  # 1,000 new customers: much to write
        double.control("reset_counts")
        filler = fill(fs, leave)

        failed = cdnreq("once", config)
        calls = double.control("counts", method="GET")["calls"]
        sent = calls.get("slapos.post.v0.software_instance", 0)
        filler.unlink()  # space again: nothing else changed the files
        after = snapshot(database)

        assert failed.returncode in (1, 3), failed.stderr[-3000:]
        assert "Traceback" not in failed.stderr
        assert "full" in failed.stderr.lower() or "i/o error" in failed.stderr.lower(), failed.stderr[-3000:]
        line = tick_line(failed.stderr)
        where = "before the tick" if line is None else ("before any request" if not sent else f"after {sent} requests")
        print(f"\n{leave} bytes free: exit {failed.returncode} {where}: "
              f"{(line or {}).get('error') or failed.stderr.strip().splitlines()[-1]}")
        assert integrity(database) == "ok"
        if not sent:
            # nothing was sent, nothing may have changed: all the rows as they were
            # (but a failed tick's own line in the ticks table)
            for table in TABLES:
                if table != "ticks":
                    assert after[table] == before[table], table
            assert after["ticks"][: len(before["ticks"])] == before["ticks"]
            assert len(after["ticks"]) - len(before["ticks"]) <= 1
            assert all(t[3] in (None, "failed") for t in after["ticks"][len(before["ticks"]):])
        else:
            # some requests went out: committed batches are whole, the old rows intact
            old = {r[0]: r for r in before["instances"]}
            assert all(old[r[0]] == r for r in after["instances"] if r[0] in old)
            assert after["events"][: len(before["events"])] == before["events"]
        request_events_match_records(after)

        # space again: the next tick succeeds and catches up
        recovered = cdnreq("once", config)
        assert recovered.returncode == 0, recovered.stderr[-3000:]
        rows = snapshot(database)
        assert len(rows["instances"]) == CUSTOMERS + 1000
        new = {customer_guid(i) for i in range(CUSTOMERS, CUSTOMERS + 1000)}
        requested = {r[0]: r for r in rows["instances"] if r[0] in new}
        assert set(requested) == new and all(r[5] is not None for r in requested.values())
        assert all(r[1] == technical_title(PREFIX, g) for g, r in requested.items())
        request_events_match_records(rows)
        assert integrity(database) == "ok"
        # this double never saw the golden database's 200 (live) entries: only the new ones, once each
        technical = double.control("technical_count", method="GET")
        assert technical["technical"] == 1000 and technical["destroyed"] == 0


def test_full_disk_at_open_is_not_called_a_foreign_database(
    tmp_path: Path, golden: Path, double: DoubleProcess
) -> None:
    with tmpfs(tmp_path / "fs", "4m") as fs:
        database = install(golden, fs / "cdnreq.db")
        config = write_config(tmp_path / "c.toml", double.url, database)
        assert not Path(f"{database}-shm").exists()  # SQLite must create it: the first thing to fail
        filler = fill(fs, 0)
        result = cdnreq("once", config)
        filler.unlink()
    print(f"\nfull disk at open: exit {result.returncode}: {result.stderr.strip()}")
    assert result.returncode == 3, result.stderr
    known_bug("not a cdnreq database" not in result.stderr, result.stderr)


def http_get(url: str) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except (OSError, ValueError):
        return None, None


def test_daemon_survives_a_full_disk_and_recovers(tmp_path: Path, golden: Path, double: DoubleProcess) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        database = install(golden, fs / "cdnreq.db")
        config = write_config(tmp_path / "c.toml", double.url, database)
        base = "http://" + next(l.split('"')[1] for l in config.read_text().splitlines() if l.startswith("listen"))
        log = open(tmp_path / "daemon.log", "wb")
        daemon = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stdout=log, stderr=log)
        log.close()
        filler = None
        try:
            deadline = time.monotonic() + 30
            while http_get(f"{base}/readyz")[0] != 200:
                assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
                time.sleep(0.05)
            filler = fill(fs, 0)
            double.control("add", {"count": 1000, "start": CUSTOMERS})
            # a few tick intervals on a full disk: the ticks fail, the daemon stays
            deadline = time.monotonic() + 3
            reason = None
            while time.monotonic() < deadline:
                known_bug(daemon.poll() is None,
                          "the daemon exited on a full disk:\n" + (tmp_path / "daemon.log").read_text()[-2000:])
                code, body = http_get(f"{base}/readyz")
                if code == 503:
                    reason = body.get("reason")
                time.sleep(0.1)
            assert reason is not None and "database" in reason, reason
            filler.unlink()
            filler = None
            deadline = time.monotonic() + 30
            # this double never held the golden deployment's entries: count the new ones
            while double.control("technical_count", method="GET")["technical"] < 1000:
                assert daemon.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            while http_get(f"{base}/readyz")[0] != 200:
                assert daemon.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            if filler is not None:
                filler.unlink()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        assert integrity(database) == "ok"


# -- read-only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["directory", "file"])
def test_read_only_database_is_refused_and_left_alone(
    tmp_path: Path, golden: Path, double: DoubleProcess, what: str
) -> None:
    state = tmp_path / "state"
    database = install(golden, state / "cdnreq.db")
    config = write_config(tmp_path / "c.toml", double.url, database)
    # the lock file exists already (a previous run), as it would on a real host
    (state / "cdnreq.db.lock").touch()
    before, files = snapshot(database), db_files(state)
    double.control("reset_counts")
    with read_only(state if what == "directory" else database) as how:
        once = cdnreq("once", config)
        run = cdnreq("run", config, timeout=60)
    if what == "directory":
        # issue 11: refused before anything starts, as check-config refuses it (exit 2, naming the key)
        for result in (once, run):
            text = assert_clear_failure(result, 2, "read-only", "not writable")
            assert "[daemon].database:" in text and str(state) in text, text
    else:  # the file itself: the store refuses it when it opens it (exit 3)
        assert_clear_failure(once, 3, "read-only", "readonly", "permission denied")
        assert_clear_failure(run, 3, "read-only", "readonly", "permission denied")
    print(f"\nread-only {what} ({how}): once -> {once.stderr.strip().splitlines()[-1]}")
    # nothing asked of the master, nothing written
    calls = double.control("counts", method="GET")["calls"]
    assert set(calls) <= {"slapos.allDocs.v0.instance_node_instance_list"}
    assert not calls.get("slapos.post.v0.software_instance")
    assert snapshot(database) == before
    after = db_files(state)
    assert after["cdnreq.db"] == files["cdnreq.db"]


def test_status_reads_a_database_in_a_read_only_directory(tmp_path: Path, golden: Path, double: DoubleProcess) -> None:
    state = tmp_path / "state"
    database = install(golden, state / "cdnreq.db")
    config = write_config(tmp_path / "c.toml", double.url, database)
    with read_only(state):
        status = cdnreq("status", config, "--json")
    # read with mode=ro or immutable=1: SQLite cannot add its -shm file there
    assert status.returncode == 1 and "not a cdnreq database" not in status.stderr, status.stderr  # no daemon
    assert len(json.loads(status.stdout)["instances"]) == CUSTOMERS


# -- corrupted ----------------------------------------------------------------------------------


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 256)


def truncate_to(size: int | str):
    def cut(path: Path) -> None:
        length = path.stat().st_size
        os.truncate(path, length // 2 if size == "half" else (length - 4096 if size == "-1page" else size))
    return cut


@pytest.mark.parametrize(
    "damage",
    [garbage, truncate_to(100), truncate_to(4096), truncate_to("half"), truncate_to("-1page")],
    ids=["garbage", "truncated-to-100-bytes", "truncated-to-one-page", "truncated-to-half", "last-page-cut"],
)
def test_corrupted_database_is_refused_with_exit_3_and_left_alone(
    tmp_path: Path, golden: Path, double: DoubleProcess, damage, request: pytest.FixtureRequest
) -> None:
    state = tmp_path / "state"
    database = install(golden, state / "cdnreq.db")
    damage(database)
    config = write_config(tmp_path / "c.toml", double.url, database)
    digest = sha256(database)
    double.control("reset_counts")
    once = cdnreq("once", config)
    run = cdnreq("run", config, timeout=60)
    status = cdnreq("status", config)
    for result in (once, run, status):
        assert_clear_failure(result, 3, "not a database", "not a cdnreq database", "malformed")
        assert str(database) in result.stderr
    print(f"\n{request.node.callspec.id}: {once.stderr.strip().splitlines()[-1]}")
    assert sha256(database) == digest, "cdnreq wrote into a corrupted database"
    assert double.control("counts", method="GET")["total"] == 0, "the master was called with an unusable database"


# -- from a newer cdnreq -------------------------------------------------------------------------


def test_database_from_a_newer_schema_is_refused_with_exit_3_and_left_alone(
    tmp_path: Path, golden: Path, double: DoubleProcess
) -> None:
    state = tmp_path / "state"
    database = install(golden, state / "cdnreq.db")
    conn = sqlite3.connect(database)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
        conn.execute("CREATE TABLE from_the_future (x)")
    conn.close()
    config = write_config(tmp_path / "c.toml", double.url, database)
    before = snapshot(database)
    double.control("reset_counts")
    for command in ("once", "run", "status"):
        result = cdnreq(command, config, timeout=60)
        text = assert_clear_failure(result, 3, "newer")
        assert f"schema version {LATEST + 1}" in text and f"({LATEST})" in text, text
    print(f"\nnewer schema: {text.strip().splitlines()[-1]}")
    assert snapshot(database) == before
    assert double.control("counts", method="GET")["total"] == 0

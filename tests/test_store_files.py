"""Issue 10, properties 16 and 19: the store's identity and its files.

16: the lock is an flock on the resolved database file, so a daemon started
through a symlink and one on the real path, or one started after the pid file
was deleted, cannot both write; a database file deleted or replaced under a
running daemon fails the tick and stops the daemon (exit 3).
19: the database, its -wal and -shm, the pid file, the state directory and
the backups are created 0600/0700 whatever the umask.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdnreq.store import Store, StoreLocked, StoreLost

CHILD = """
import asyncio, sys
from cdnreq.store import Store
async def main():
    store = await Store.open(sys.argv[1])
    await store.begin_tick(1.0)
    print("locked", flush=True)
    sys.stdin.readline()
    await store.close()
asyncio.run(main())
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_symlink_and_the_real_path_lock_the_same_database_across_processes(tmp_path):
    real = tmp_path / "real" / "cdnreq.db"
    link = tmp_path / "link.db"
    (tmp_path / "real").mkdir()
    link.symlink_to(real)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(link)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLocked, match=rf"another cdnreq is using {real}.*pid {child.pid}"):
            await Store.open(real)
        with pytest.raises(StoreLocked):
            await Store.open(link)
        (tmp_path / "real" / "cdnreq.db.lock").unlink()  # the pid file is only a courtesy
        with pytest.raises(StoreLocked, match="pid unknown"):
            await Store.open(real)
        reader = await Store.open(real, lock=False)  # SQLite itself is not in the way
        assert (await reader.last_ticks())[0]["started_at"] == 1.0
        await reader.close()
    finally:
        child.communicate("\n", timeout=30)
    assert child.returncode == 0
    store = await Store.open(real)  # released at the holder's exit
    await store.begin_tick(2.0)
    await store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced", "relinked"])
async def test_a_database_file_deleted_or_replaced_is_noticed_before_the_next_tick(tmp_path, how):
    db = tmp_path / "cdnreq.db"
    link = tmp_path / "via.db"
    link.symlink_to(db)
    store = await Store.open(link)
    try:
        assert store.lost() is None
        await store.begin_tick(1.0)
        if how == "deleted":
            db.unlink()
        elif how == "replaced":
            (tmp_path / "other.db").write_bytes(b"")
            os.replace(tmp_path / "other.db", db)
        else:  # the symlink now points elsewhere: a restart would open another store
            (tmp_path / "other.db").write_bytes(b"")
            link.unlink()
            link.symlink_to(tmp_path / "other.db")
        why = store.lost()
        assert why is not None and str(link) in why and ("deleted" in why or "replaced" in why)
        with pytest.raises(StoreLost, match="since cdnreq opened it"):
            await store.begin_tick(2.0)
    finally:
        await store.close()


def test_a_database_path_that_is_no_regular_file_is_refused_at_once(tmp_path):
    """Issue 10 #16 (attack): a FIFO put at the database's path froze the
    daemon at start (its open for reading waits for a writer, for ever);
    what is not a regular file is refused, naming the path."""
    import asyncio
    import threading

    from cdnreq.store import StoreError

    db = tmp_path / "cdnreq.db"
    os.mkfifo(db)
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            store = asyncio.run(Store.open(db))
            asyncio.run(store.close())
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - reported below
            outcome.append(error)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(timeout=20)
    try:
        assert not thread.is_alive(), "Store.open froze on a FIFO"
        assert isinstance(outcome[0], StoreError) and str(db) in str(outcome[0]), outcome
        assert "not a regular file" in str(outcome[0])
    finally:
        if thread.is_alive():  # release the frozen open
            os.close(os.open(db, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(timeout=20)


# -- the real daemon ------------------------------------------------------------------------


def _daemon(tmp_path: Path, database: Path, **extra):
    from bench.double import Double
    from test_faults_hostile import ThreadedDouble, write_config

    double = Double(publish_after="immediately")
    for n in range(3):
        double.add(f"SOFTINST-files-{n}", {"url": f"https://files-{n}.example"})
    served = ThreadedDouble(double).__enter__()
    config = write_config(tmp_path / "c.toml", {"url": served.url}, database, **extra)
    return served, config


def _wait(predicate, process, logs: Path, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert process.poll() is None or what == "exit", logs.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}:\n{logs.read_text()[-3000:]}"
        time.sleep(0.05)
    return result


def _ticks(logs: Path) -> list[dict]:
    found = []
    for line in logs.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") in ("tick done", "tick failed"):
            found.append(entry)
    return found


def test_a_running_daemon_stops_when_its_database_file_is_deleted(tmp_path):
    from test_faults_hostile import CDNREQ

    database = tmp_path / "state" / "cdnreq.db"
    served, config = _daemon(tmp_path, database, store={"backup_interval_s": 0})
    logs = tmp_path / "daemon.log"
    try:
        with open(logs, "wb") as out:
            daemon = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stdout=out, stderr=out)
        try:
            _wait(lambda: any(t["event"] == "tick done" for t in _ticks(logs)), daemon, logs, "a first tick")
            # a second daemon through a symlink to the state directory is refused
            alias = tmp_path / "alias"
            alias.symlink_to(tmp_path / "state")
            other = config.read_text().replace(str(database), str(alias / "cdnreq.db"))
            (tmp_path / "other.toml").write_text(other)
            second = subprocess.run([CDNREQ, "once", "--config", str(tmp_path / "other.toml")],
                                    capture_output=True, text=True, timeout=60)
            assert second.returncode == 3 and "another cdnreq" in second.stderr, second.stderr[-2000:]
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            code = _wait(lambda: daemon.poll(), daemon, logs, "exit")
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
    finally:
        served.__exit__(None, None, None)
    assert code == 3, logs.read_text()[-3000:]
    failed = [t for t in _ticks(logs) if t["event"] == "tick failed"]
    assert failed and f"database file {database} was deleted" in failed[-1]["error"], failed
    assert "the database is gone; saving what it held and exiting" in logs.read_text()
    assert "Traceback" not in logs.read_text()
    # what the unlinked file held was saved, and a restart refuses the empty store
    saved = list((database.parent / "backups").glob("cdnreq-*.db"))
    assert len(saved) == 1, logs.read_text()[-3000:]
    with sqlite3.connect(saved[0]) as copy:
        assert copy.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 3
    again = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 3 and "restore" in again.stderr, again.stderr[-2000:]


def test_files_are_private_whatever_the_umask(tmp_path):
    from test_faults_hostile import CDNREQ

    state = tmp_path / "new" / "state"
    database = state / "cdnreq.db"
    backups = tmp_path / "far" / "backups"
    served, config = _daemon(tmp_path, database, store={"backup_interval_s": 1, "backup_dir": str(backups)})
    logs = tmp_path / "daemon.log"
    try:
        with open(logs, "wb") as out:
            daemon = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stdout=out, stderr=out,
                                      preexec_fn=lambda: os.umask(0))
        try:
            _wait(lambda: backups.is_dir() and list(backups.glob("cdnreq-*.db")), daemon, logs, "a backup")
            files = {p: mode(p) for p in (database, Path(f"{database}-wal"), Path(f"{database}-shm"),
                                          Path(f"{database}.lock"), *backups.iterdir())}
            dirs = {p: mode(p) for p in (state, state.parent, backups, backups.parent)}
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    finally:
        served.__exit__(None, None, None)
    assert {str(p): oct(m) for p, m in files.items() if m != 0o600} == {}
    assert {str(p): oct(m) for p, m in dirs.items() if m != 0o700} == {}
    assert "readable by others" not in logs.read_text()


async def test_a_wider_existing_database_is_named_in_a_warning(tmp_path):
    from structlog.testing import capture_logs

    db = tmp_path / "cdnreq.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    with capture_logs() as logged:
        store = await Store.open(db)
        await store.close()
    warnings = [e for e in logged if e["log_level"] == "warning"]
    assert warnings and str(db) in warnings[0]["files"][0]
    assert mode(db) == 0o644  # left as the operator set it

"""Losing the store, and getting it back (issue 6, item 10).

Unit tests (no server) of cdnreq.store.backup, backupdir, verify, restoring
and Store.backup: consistency under a concurrent writer, naming, pruning,
the secret beside the backups, restore's refusals and what it keeps, the
start-up refusal. Then the command
line without a master, and end to end against a real slapproxy and DevDns:
a deployment of 500 customers loses its database, is refused, restored, and
carries on without a new challenge, a destroy or a single request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, MasterLog, Slapproxy, write_config
from cdnreq.model import Challenge, Event, HostClaim, InstanceGuid, Phase, Record, Title
from cdnreq.decide.titles import technical_title
from cdnreq.store import (
    SchemaTooNew,
    Store,
    StoreError,
    StoreLocked,
    restore,
    take_backup,
)
from cdnreq.store.backupdir import (
    SECRET_NAME,
    backup_name,
    backup_time,
    copy_secret,
    last_backup,
    list_backups,
    prune,
)
from cdnreq.store.restoring import restore_secret, start_refusal
from cdnreq.store.verify import inspect
from cdnreq.store.migrations import LATEST
from tests.storeread import events_since

CDNREQ = str(Path(sys.executable).with_name("cdnreq"))
LIST = "slapos.allDocs.v0.instance_node_instance_list"
REQUEST = "slapos.post.v0.software_instance"
GET = "slapos.get.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"
LABEL = "_slapos-challenge"
NAME = re.compile(r"cdnreq-[0-9]{8}T[0-9]{6}Z\.db")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


# -- helpers -----------------------------------------------------------------------


def rec(guid: str, **kw: Any) -> Record:
    base: dict[str, Any] = {
        "guid": InstanceGuid(guid), "title": Title(f"cdn-{guid}"), "phase": Phase.NEW,
        "created_at": 1.0, "updated_at": 2.0,
    }
    base.update(kw)
    return Record(**base)


def event(guid: str, action: str = "request") -> Event:
    return Event(instance_guid=guid, action=action, outcome="ok", at=3.0)


def counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("instances", "events", "hosts", "challenges")
        }
    finally:
        conn.close()


async def make_db(path: Path, guids: list[str], *, hosts: bool = True) -> None:
    async with await Store.open(path) as store:
        await store.commit(
            upserts=[rec(g, phase=Phase.LIVE) for g in guids],
            events=[event(g) for g in guids],
            host_upserts=[HostClaim(f"{g}.example.com", InstanceGuid(g), "example.com", 1.0, 1.0) for g in guids]
            if hosts
            else (),
            challenge_upserts=[Challenge(InstanceGuid(g), f"{g}.example.com", "salt", f"token-{g}", 1.0) for g in guids],
        )


def content(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, but the change feed's count and the gap a
    restore records (a restore moves the feed past the ids the replaced
    store gave: cdnreq.store.feedgaps)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables
                if t != "feed_state" and t != "guards"} | {
            "guards": sorted(conn.execute("SELECT * FROM guards WHERE name <> 'feed-restored'").fetchall())}
    finally:
        conn.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# -- Store.backup ------------------------------------------------------------------------


async def test_backup_is_one_private_self_contained_checked_file(tmp_path: Path):
    db = tmp_path / "state" / "cdnreq.db"
    await make_db(db, ["a", "b", "c"])
    backups = tmp_path / "backups"
    async with await Store.open(db) as store:
        path = await store.backup(backups, now=T0 + 61)
    assert path == backups / "cdnreq-20260101T000101Z.db" and NAME.fullmatch(path.name)
    assert sorted(os.listdir(backups)) == [path.name], "no -wal, -shm or temporary file beside it"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert path.read_bytes()[18:20] == b"\x01\x01", "rollback journal: needs no -wal to be read"
    info = inspect(path)
    assert (info.schema_version, info.instances, info.hosts, info.challenges) == (LATEST, 3, 3, 3)
    assert not info.empty
    # and the store opens it as it is
    async with await Store.open(path, lock=False) as copy:
        assert set(await copy.load()) == {"a", "b", "c"}
        assert set(await copy.load_hosts()) == {"a.example.com", "b.example.com", "c.example.com"}


async def test_backup_while_a_writer_commits_is_a_commit_boundary(tmp_path: Path):
    """The daemon commits through its store while backups are taken, both
    through that same store and through a second connection (`cdnreq backup`
    next to a running daemon). Every copy passes integrity_check and holds a
    whole number of transactions."""
    db = tmp_path / "state" / "cdnreq.db"
    batch = 7
    writer = await Store.open(db)
    other = await Store.open(db, lock=False)
    stop = asyncio.Event()
    written = 0

    async def write() -> None:
        nonlocal written
        while not stop.is_set() and written < 5000:
            guids = [f"g{written}-{j}" for j in range(batch)]
            await writer.commit(
                upserts=[rec(g) for g in guids],
                events=[event(g) for g in guids],
                host_upserts=[HostClaim(f"{g}.example.com", InstanceGuid(g), "example.com", 1.0, 1.0) for g in guids],
            )
            written += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(write())
    taken: list[Path] = []
    try:
        while written < 3:
            await asyncio.sleep(0.001)
        for n in range(10):
            store = (writer, other)[n % 2]
            taken.append(await store.backup(tmp_path / "backups", now=T0 + n))
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task
        await other.close()
        await writer.close()
    seen = []
    for path in taken:
        inspect(path)  # integrity_check included
        rows = counts(path)
        assert rows["instances"] % batch == 0, rows
        assert rows["instances"] == rows["events"] == rows["hosts"], rows
        seen.append(rows["instances"])
    assert seen == sorted(seen) and len(set(seen)) >= 2, f"the copies did not see the writer at work: {seen}"
    assert 0 < seen[0] and seen[-1] <= written * batch
    assert leftovers(tmp_path / "backups") == []


async def test_backup_of_a_closed_store_or_into_a_file_fails_cleanly(tmp_path: Path):
    db = tmp_path / "cdnreq.db"
    await make_db(db, ["a"])
    store = await Store.open(db)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="backup directory"):
        await store.backup(blocker)
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.backup(tmp_path / "backups")
    assert list_backups(tmp_path / "backups") == [] and leftovers(tmp_path / "backups") == []


def test_names_sort_by_time_and_parse_back():
    assert backup_name(T0) == "cdnreq-20260101T000000Z.db"
    assert backup_time(backup_name(T0 + 3723)) == T0 + 3723
    assert backup_time("cdnreq-20260101T000000Z.db.tmp") is None
    assert backup_time("cdnreq-2026010T000000Z.db") is None
    assert backup_time("cdnreq-20261399T000000Z.db") is None  # month 13: not a backup


def test_list_and_prune_keep_the_newest(tmp_path: Path):
    d = tmp_path / "backups"
    assert list_backups(d) == [] and last_backup(d) is None  # missing directory: none
    d.mkdir()
    names = [backup_name(T0 + 86400 * i) for i in range(6)]
    for name in reversed(names):
        (d / name).write_text(name)
    (d / SECRET_NAME).write_text("s" * 64)
    (d / "notes.txt").write_text("mine")
    (d / "cdnreq-20260101T000000Z.db-wal").write_text("stray")
    old_tmp, new_tmp = d / ".cdnreq-backup-old.tmp", d / ".cdnreq-backup-new.tmp"
    old_tmp.write_text("crashed")
    new_tmp.write_text("being written")
    os.utime(old_tmp, (T0, T0))
    assert [p.name for p in list_backups(d)] == names[::-1]
    assert last_backup(d) == d / names[-1]

    removed = prune(d, 2, now=T0 + 86400 * 10)
    assert sorted(p.name for p in removed) == sorted(names[:4] + [old_tmp.name])
    assert sorted(os.listdir(d)) == sorted(
        names[4:] + [SECRET_NAME, "notes.txt", "cdnreq-20260101T000000Z.db-wal", new_tmp.name]
    )
    assert prune(d, 2) == []
    with pytest.raises(ValueError):
        prune(d, 0)


async def test_take_backup_keeps_the_secret_beside_the_backups(tmp_path: Path):
    db = tmp_path / "state" / "cdnreq.db"
    secret = tmp_path / "state" / "domain-secret"
    await make_db(db, ["a"])
    secret.write_text("a" * 64 + "\n")
    os.chmod(secret, 0o644)  # even a too-open secret is kept private in the backups
    backups = tmp_path / "backups"
    async with await Store.open(db) as store:
        for i in range(4):
            await take_backup(store, backups, secret=secret, keep=3, now=T0 + i)
        copy = backups / SECRET_NAME
        assert copy.read_bytes() == secret.read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert len(list_backups(backups)) == 3
        inode = copy.stat().st_ino
        await take_backup(store, backups, secret=secret, keep=3, now=T0 + 10)
        assert copy.stat().st_ino == inode, "unchanged secret: not rewritten"
        secret.write_text("b" * 64 + "\n")
        await take_backup(store, backups, secret=secret, keep=3, now=T0 + 11)
        assert copy.read_text() == "b" * 64 + "\n" and stat.S_IMODE(copy.stat().st_mode) == 0o600
        # no secret yet (no challenge ever issued): nothing to copy, not an error
        assert copy_secret(tmp_path / "nope", backups) is None
        assert copy.read_text() == "b" * 64 + "\n"


def test_restore_secret_only_when_missing(tmp_path: Path):
    backups = tmp_path / "backups"
    backups.mkdir()
    backup = backups / backup_name(T0)
    secret = tmp_path / "state" / "domain-secret"
    assert restore_secret(backup, secret) == "none"
    (backups / SECRET_NAME).write_text("s" * 64)
    assert restore_secret(backup, secret) == "restored"
    assert secret.read_text() == "s" * 64 and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert restore_secret(backup, secret) == "same"
    secret.write_text("t" * 64)
    assert restore_secret(backup, secret) == "differs"
    assert secret.read_text() == "t" * 64, "an existing secret is never overwritten"


# -- restore -------------------------------------------------------------------------


async def test_restore_puts_the_backup_in_place_and_keeps_the_replaced_one(tmp_path: Path):
    db = tmp_path / "state" / "cdnreq.db"
    await make_db(db, ["a", "b"])
    async with await Store.open(db) as store:
        backup = await store.backup(tmp_path / "backups", now=T0)
        await store.commit(upserts=[rec("c")], events=[event("c")])
    # a writer that dies without checkpointing: its last commit lives only in the -wal
    script = (
        "import sqlite3, os\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"INSERT INTO events (at, instance_guid, action, outcome) VALUES (9, 'z', 'in-wal', 'ok')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert Path(f"{db}-wal").stat().st_size > 0

    result = restore(backup, db, now=T0 + 3600)
    assert result.backup.instances == 2 and result.database == db
    assert result.replaced == db.with_name("cdnreq.db.replaced-20260101T010000Z")
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    assert content(db) == content(backup)
    async with await Store.open(db) as store:
        assert set(await store.load()) == {"a", "b"}
    # the replaced database is whole, its -wal included
    async with await Store.open(result.replaced, lock=False) as old:
        assert set(await old.load()) == {"a", "b", "c"}
        assert [e.action for _, e in await events_since(old, 0)][-1] == "in-wal"
    assert leftovers(db.parent) == []

    # restoring twice in the same second keeps both replaced databases
    again = restore(backup, db, now=T0 + 3600)
    assert again.replaced is not None and again.replaced != result.replaced and again.replaced.exists()


async def test_restore_onto_a_missing_database_removes_stale_side_files(tmp_path: Path):
    db = tmp_path / "state" / "cdnreq.db"
    await make_db(db, ["a"])
    async with await Store.open(db) as store:
        backup = await store.backup(tmp_path / "backups", now=T0)
    db.unlink()
    Path(f"{db}-wal").write_bytes(b"stale wal of a deleted database")
    Path(f"{db}-shm").write_bytes(b"stale shm")
    result = restore(backup, db)
    assert result.replaced is None
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    async with await Store.open(db) as store:
        assert set(await store.load()) == {"a"}


async def test_restore_refuses_what_it_cannot_use_and_changes_nothing(tmp_path: Path):
    db = tmp_path / "state" / "cdnreq.db"
    await make_db(db, ["a"])
    before = db.read_bytes()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError, match="not a cdnreq database"):
        restore(garbage, db)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE shopping (item TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a cdnreq database"):
        restore(foreign, db)

    newer = tmp_path / "newer.db"
    async with await Store.open(db) as store:
        made = await store.backup(tmp_path / "b", now=T0)
    made.rename(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    conn.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {LATEST + 1}"):
        restore(newer, db)

    damaged = tmp_path / "damaged.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (LATEST,))
    conn.close()
    data = bytearray(newer.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(2 * page, len(data), page):  # every page after the schema's: the btrees are gone
        data[offset : offset + 100] = b"\xff" * 100
    damaged.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged|not a usable|malformed"):
        restore(damaged, db)

    with pytest.raises(StoreError, match="no backup file"):
        restore(tmp_path / "missing.db", db)

    async with await Store.open(db):  # a daemon holds the lock
        with pytest.raises(StoreLocked, match="another cdnreq"):
            restore(newer, db)
    assert db.read_bytes() == before
    assert leftovers(db.parent) == []
    assert not list(db.parent.glob("*.replaced-*"))


# -- the start-up refusal ----------------------------------------------------------------


async def test_start_refusal_only_when_the_newest_backup_holds_something(tmp_path: Path):
    db = tmp_path / "state" / "cdnreq.db"
    backups = tmp_path / "backups"
    assert start_refusal(db, backups, missing=True) is None  # no backup at all: a first start

    await make_db(db, ["a", "b"])
    async with await Store.open(db) as store:
        good = await store.backup(backups, now=T0)
    reason = start_refusal(db, backups, missing=True, config="/etc/cdnreq.toml")
    assert reason is not None
    assert str(good) in reason and "missing" in reason
    assert f"cdnreq restore {good} --config /etc/cdnreq.toml" in reason
    assert "--fresh" in reason and "2 instances, 2 proven hosts, 2 challenges" in reason

    # an unreadable newer file is skipped: the newest readable backup decides
    (backups / backup_name(T0 + 10)).write_bytes(b"garbage" * 100)
    assert str(good) in start_refusal(db, backups, missing=False)

    # a newer backup of an empty store (no customers, or --fresh): start
    empty_db = tmp_path / "empty" / "cdnreq.db"
    async with await Store.open(empty_db) as store:
        assert await store.is_empty()
        await store.backup(backups, now=T0 + 20)
    assert start_refusal(db, backups, missing=False) is None

    # nothing readable at all: refused, naming the newest file
    for path in list_backups(backups):
        path.write_bytes(b"garbage" * 100)
    reason = start_refusal(db, backups, missing=True)
    assert reason is not None and "none of the backups can be read" in reason


async def test_is_empty_ignores_ticks(tmp_path: Path):
    async with await Store.open(tmp_path / "x.db") as store:
        assert await store.is_empty()
        await store.end_tick(await store.begin_tick(1.0), finished_at=2.0, result="ok", summary={})
        assert await store.is_empty()
        await store.commit(challenge_upserts=[Challenge(InstanceGuid("g"), "d.example", "s", "t", 1.0)])
        assert not await store.is_empty()


# -- the command line, without a master ------------------------------------------------


def cdnreq(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CDNREQ, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def offline_config(tmp_path: Path, **sections: dict) -> Path:
    """A configuration whose master is a dead loopback port: enough for the store commands."""
    proxy = Slapproxy(tmp_path / "no-master")
    site = CdnSite(proxy, "cdn-requester______0", "slappart0", "cdn-tech______0", "slappart1")
    return write_config(tmp_path / "cdnreq.toml", site, database=tmp_path / "state" / "cdnreq.db", **sections)


async def test_cli_backup_restore_and_the_refusal_without_a_master(tmp_path: Path):
    config = offline_config(tmp_path, master={"timeout_s": 1.0})
    db = tmp_path / "state" / "cdnreq.db"
    backups = tmp_path / "state" / "backups"

    missing = cdnreq("backup", "--config", config)
    assert missing.returncode == 3 and "no database" in missing.stderr
    assert not db.exists()

    await make_db(db, ["a", "b"])
    (tmp_path / "state" / "domain-secret").write_text("k" * 64 + "\n")
    (tmp_path / "state" / "domain-secret").chmod(0o600)  # once/run refuse a secret others may read
    made = cdnreq("backup", "--config", config)
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    assert path.parent == backups and NAME.fullmatch(path.name)
    assert stat.S_IMODE((backups / SECRET_NAME).stat().st_mode) == 0o600

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    refused = cdnreq("once", "--config", config)
    assert refused.returncode == 3, refused.stderr
    assert str(path) in refused.stderr and "cdnreq restore" in refused.stderr and "--fresh" in refused.stderr
    assert not db.exists(), "the refusal must not create the database"

    # an empty database is refused too (it is opened, then found empty)
    async with await Store.open(db):
        pass
    refused = cdnreq("once", "--config", config)
    assert refused.returncode == 3 and "empty" in refused.stderr and str(path) in refused.stderr
    # and backing it up would hide the good backup: refused unless --fresh
    hidden = cdnreq("backup", "--config", config)
    assert hidden.returncode == 3 and str(path) in hidden.stderr and "--fresh" in hidden.stderr
    assert list_backups(backups) == [path]

    # --fresh passes the check; the tick then fails on the dead master (1, not 3)
    fresh = cdnreq("once", "--fresh", "--config", config)
    assert fresh.returncode == 1, fresh.stderr
    assert "starting on an empty store (--fresh)" in fresh.stderr

    (tmp_path / "state" / "domain-secret").unlink()
    back = cdnreq("restore", path, "--config", config)
    assert back.returncode == 0, back.stderr
    assert "2 instances" in back.stdout and "kept as" in back.stdout and "domain secret was missing" in back.stdout
    assert (tmp_path / "state" / "domain-secret").read_text() == "k" * 64 + "\n"
    replaced = list(db.parent.glob("cdnreq.db.replaced-*"))
    assert len(replaced) == 1
    ok = cdnreq("once", "--config", config)
    assert ok.returncode == 1 and "tick failed" in ok.stderr  # past the check: only the master is missing

    bad = tmp_path / "bad.db"
    bad.write_text("no")
    refused = cdnreq("restore", bad, "--config", config)
    assert refused.returncode == 3 and "not a cdnreq database" in refused.stderr


# -- end to end, against slapproxy ---------------------------------------------------------


def once(config: Path, *extra: str) -> subprocess.CompletedProcess:
    result = cdnreq("once", *extra, "--config", config, timeout=300)
    assert result.returncode == 0, f"cdnreq once exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def load(database: Path):
    async def go():
        async with await Store.open(database, lock=False) as store:
            return (
                await store.load(),
                await events_since(store, 0, 10**7),
                await store.load_challenges(),
                await store.load_hosts(),
            )

    return asyncio.run(go())


def connection_parameters(site: CdnSite, guids) -> dict[str, dict[str, Any]]:
    """What each customer is shown, read with a few calls in flight (reads only)."""
    guids = list(guids)
    with ThreadPoolExecutor(4) as pool:
        answers = pool.map(lambda g: site.customer(g)["connection_parameters"], guids)
        return dict(zip(guids, answers))


def e2e_config(site: CdnSite, devdns: DevDns, tmp_path: Path, **sections: dict) -> tuple[Path, Path]:
    database = tmp_path / "state" / "cdnreq.db"
    dns = {"nameservers": [devdns.address], "timeout_s": 0.5, "tries": 1}
    config = write_config(tmp_path / "cdnreq.toml", site, database=database, dns=dns, **sections)
    return config, database


N_CUSTOMERS = 500


@pytest.mark.slapproxy
def test_losing_the_store_of_500_customers_and_restoring_it(cdn_site: CdnSite, devdns: DevDns, tmp_path: Path):
    """500 customers, half of them with a custom_domain proven in DNS, all
    requested and live. The database is deleted; cdnreq refuses to start;
    the last backup is restored; the next tick makes no request, destroys
    nothing, issues no challenge, and the customers see exactly what they saw."""
    site = cdn_site
    began = time.monotonic()
    phases: dict[str, float] = {}

    since = [began]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = round(now - since[0], 1)
        since[0] = now

    config, db = e2e_config(site, devdns, tmp_path)
    guids: dict[str, dict[str, str]] = {}
    for i in range(N_CUSTOMERS):
        parameters = {"url": f"https://backend-{i}.example"}
        if i % 2 == 0:
            parameters["custom_domain"] = f"shop-{i}.example.com"
        guids[site.add_customer(f"customer-{i}", parameters)] = parameters
    with_domain = [g for g, p in guids.items() if "custom_domain" in p]
    phase("customers")

    once(config)  # challenges for half, requests for the other half
    phase("tick 1")
    _, _, challenges, _ = load(db)
    assert set(challenges) == set(with_domain)
    for guid, params in connection_parameters(site, with_domain).items():  # the customers publish their tokens
        token = params["txt_value"]
        assert token == challenges[guid].token
        devdns.set_txt(f"{LABEL}.{guids[guid]['custom_domain']}", token)
    phase("tokens")
    once(config)  # proven: requested
    phase("tick 2")
    entries = site.technical_entries()
    assert len(entries) == N_CUSTOMERS
    for entry in entries:  # the technical CDN answers
        site.publish_as_cdn(entry["instance_guid"], {"domain": f"{entry['title']}.cdn.example"})
    phase("cdn answers")
    once(config)  # answers relayed: live
    phase("tick 3")
    log = MasterLog(site)
    log.mark()
    once(config)
    assert log.calls() == [LIST], "settled: an idle tick lists and does nothing else"
    phase("tick 4")

    records, events, challenges, hosts = load(db)
    assert len(records) == N_CUSTOMERS and all(r.phase is Phase.LIVE for r in records.values())
    assert len(hosts) == len(with_domain) == N_CUSTOMERS // 2
    shown = connection_parameters(site, guids)
    for guid, params in shown.items():
        title = technical_title("cdnreq-", guid)
        assert params["domain"] == f"{title}.cdn.example"
        if guid in challenges:
            assert params["txt_value"] == challenges[guid].token
    tech_before = sorted((e["title"], json.dumps(e["parameters"], sort_keys=True)) for e in site.technical_entries())
    phase("snapshot")

    made = cdnreq("backup", "--config", config)
    assert made.returncode == 0, made.stderr
    backup = Path(made.stdout.strip())
    assert backup.parent == db.parent / "backups" and NAME.fullmatch(backup.name)
    assert (backup.parent / SECRET_NAME).read_bytes() == (db.parent / "domain-secret").read_bytes()
    last_event = events[-1][0]
    phase("backup")

    # the store is lost
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    log.mark()
    refused = cdnreq("once", "--config", config)
    assert refused.returncode == 3, refused.stderr
    assert str(backup) in refused.stderr and f"cdnreq restore {backup}" in refused.stderr
    assert "--fresh" in refused.stderr
    assert not db.exists() and log.calls() == [], "refused before a single call to the master"

    restored = cdnreq("restore", backup, "--config", config)
    assert restored.returncode == 0, restored.stderr
    assert f"{N_CUSTOMERS} instances" in restored.stdout
    phase("refused, restored")

    log.mark()
    once(config)
    phase("tick after restore")
    calls = log.calls()
    assert calls and calls[0] == LIST and set(calls) <= {LIST, GET}, calls
    assert REQUEST not in calls and PUBLISH not in calls, "nothing requested twice, nothing republished"

    records, events, challenges_after, hosts_after = load(db)
    new = [e for i, e in events if i > last_event]
    assert not [e for e in new if e.action == "challenge"], "no customer gets a new challenge"
    assert not [e for e in new if e.action == "destroy"], "nothing is destroyed"
    assert not [e for e in new if e.action in ("request", "update")], "nothing is requested twice"
    assert {g: c.token for g, c in challenges_after.items()} == {g: c.token for g, c in challenges.items()}
    assert set(hosts_after) == set(hosts)
    assert all(r.phase is Phase.LIVE for r in records.values()) and len(records) == N_CUSTOMERS
    assert connection_parameters(site, guids) == shown, "tokens and answers unchanged"
    tech_after = sorted((e["title"], json.dumps(e["parameters"], sort_keys=True)) for e in site.technical_entries())
    assert tech_after == tech_before
    phase("checks")
    print(f"\n{N_CUSTOMERS} customers, seconds per phase: {phases}")


@pytest.mark.slapproxy
def test_fresh_starts_on_an_empty_store_when_backups_exist(cdn_site: CdnSite, devdns: DevDns, tmp_path: Path):
    site = cdn_site
    config, db = e2e_config(site, devdns, tmp_path, domain={"retention_s": 0})
    guid = site.add_customer("shop", {"url": "https://shop.example", "custom_domain": "shop.example.com"})
    once(config)
    token = site.customer(guid)["connection_parameters"]["txt_value"]
    made = cdnreq("backup", "--config", config)
    assert made.returncode == 0, made.stderr
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    run = cdnreq("run", "--config", config, timeout=60)
    assert run.returncode == 3 and made.stdout.strip() in run.stderr

    once(config, "--fresh")  # on purpose: the customer starts over with a new challenge
    _, events, challenges, _ = load(db)
    assert [(e.action, e.outcome) for _, e in events if e.instance_guid == guid and e.action == "challenge"] == [
        ("challenge", "issued")
    ]
    assert challenges[guid].token != token
    assert site.customer(guid)["connection_parameters"]["txt_value"] == challenges[guid].token
    once(config)  # no longer empty: no --fresh needed


def _metric(listen: str, name: str) -> float | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{listen}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _logged(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            out.append(entry)
    return out


def _wait(predicate, what: str, process: subprocess.Popen, stderr: Path, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert process.poll() is None, f"cdnreq exited {process.returncode}:\n{stderr.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{stderr.read_text()[-4000:]}"
        time.sleep(0.1)
    return value


@pytest.mark.slapproxy
def test_the_daemon_backs_up_on_schedule_and_survives_a_failing_backup(cdn_site: CdnSite, tmp_path: Path):
    site = cdn_site
    site.add_customer("shop", {"url": "https://shop.example"})
    database = tmp_path / "state" / "cdnreq.db"
    backups = tmp_path / "backups"
    config = write_config(
        tmp_path / "cdnreq.toml", site, database=database,
        daemon={"tick_interval_s": 0.3}, store={"backup_dir": str(backups), "backup_interval_s": 1.0, "backup_keep": 2},
    )  # fmt: skip
    listen = tomllib.loads(config.read_text())["daemon"]["listen"]
    stderr = tmp_path / "daemon.stderr"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    with open(stderr, "wb") as err:
        process = subprocess.Popen([CDNREQ, "run", "--config", str(config)], stderr=err, env=env)
    try:
        _wait(lambda: len(_logged(stderr, "backup done")) >= 3, "three backups", process, stderr)
        names = sorted(os.listdir(backups))
        assert len([n for n in names if NAME.fullmatch(n)]) == 2, names  # pruned to backup_keep
        assert SECRET_NAME in names
        gauge = _wait(lambda: _metric(listen, "cdnreq_last_backup_timestamp_seconds"), "the gauge", process, stderr)
        assert abs(gauge - time.time()) < 30
        assert backup_time(last_backup(backups)) == gauge

        # the backup directory becomes unusable: logged as an error, the ticks go on
        for path in backups.iterdir():
            path.unlink()
        backups.rmdir()
        backups.write_text("not a directory")
        failed = _wait(lambda: _logged(stderr, "backup failed"), "a failed backup", process, stderr)
        assert failed[0]["level"] == "error" and str(backups) in failed[0]["error"]
        ticks = len(_logged(stderr, "tick done"))
        _wait(lambda: len(_logged(stderr, "tick done")) > ticks + 2, "ticks after the failure", process, stderr)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_restore_through_a_symlinked_database_keeps_the_link(tmp_path: Path):
    """/var/lib/cdnreq/cdnreq.db may be a link to another disk. The restored
    file goes to the real path, where the daemon opens it, and the replaced
    one is set aside with its -wal, which lives beside the real file."""
    real, link = tmp_path / "disk" / "cdnreq.db", tmp_path / "state" / "cdnreq.db"
    await make_db(real, ["a", "b"])
    link.parent.mkdir()
    link.symlink_to(real)
    async with await Store.open(link) as store:
        backup = await store.backup(tmp_path / "backups", now=T0)
    script = (  # a writer that dies without checkpointing: its last commit lives only in the -wal
        "import sqlite3, os\n"
        f"c = sqlite3.connect({str(real)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"INSERT INTO events (at, instance_guid, action, outcome) VALUES (9, 'z', 'in-wal', 'ok')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    result = restore(backup, link, now=T0 + 3600)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert content(real) == content(backup) and result.database == link
    assert result.replaced is not None and result.replaced.parent == real.parent
    async with await Store.open(result.replaced, lock=False) as old:
        assert [e.action for _, e in await events_since(old, 0)][-1] == "in-wal"
    assert not Path(f"{real}-wal").exists() and not Path(f"{real}-shm").exists()

"""Issue 11 #3: the pieces `cdnreq plan` runs a tick with, which must read
and never write: the store's snapshot, the dry store, the read-only master,
the recording executor, the secret reader, and the plan document."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cdnreq.commands.plan import Stages, document, render
from cdnreq.dns.challenge import SecretError
from cdnreq.master import MasterClient
from cdnreq.model import Challenge, Event, InstanceGuid, Phase, Record, RequestedState, SharedInstance
from cdnreq.reconcile.dry import ActionLog, DryStore, ReadOnlyMaster, WriteRefused, read_secret
from cdnreq.reconcile.execute import Feed
from cdnreq.decide.gate import Gate, Status, refused
from cdnreq.decide.guards import HeldUpdates
from cdnreq.decide.plan import Action, Kind, Plan
from cdnreq.decide.domainstep import DomainStep
from cdnreq.reconcile.tick import TickReport
from cdnreq.store import Store, StoreError


def rec(guid: str, **kw) -> Record:
    base = dict(guid=InstanceGuid(guid), title=f"cdn-{guid}", phase=Phase.NEW, created_at=1.0, updated_at=2.0)
    base.update(kw)
    return Record(**base)


def files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


async def make_db(path: Path, *guids: str) -> None:
    store = await Store.open(path)
    try:
        await store.commit(upserts=[rec(g) for g in guids])
    finally:
        await store.close()


# -- Store.open_snapshot --------------------------------------------------------


async def test_snapshot_of_a_closed_database_creates_no_file(tmp_path):
    db = tmp_path / "cdnreq.db"
    await make_db(db, "a")
    assert not Path(f"{db}-wal").exists()
    before = files(tmp_path)
    snapshot = await Store.open_snapshot(db)
    try:
        assert set(await snapshot.load()) == {"a"}
        with pytest.raises(StoreError):  # read-only: a write fails, it is not made
            await snapshot.commit(upserts=[rec("b")])
    finally:
        await snapshot.close()
    assert files(tmp_path) == before  # no -wal, -shm, lock file


async def test_snapshot_next_to_a_writer_sees_one_moment(tmp_path):
    db = tmp_path / "cdnreq.db"
    writer = await Store.open(db)  # takes the lock, as the daemon does
    try:
        await writer.commit(upserts=[rec("a")])
        wal = Path(f"{db}-wal")
        before = {p: p.read_bytes() for p in (db, wal)}
        assert before[wal]  # the commit is in the write-ahead log: read with mode=ro
        snapshot = await Store.open_snapshot(db)
        try:
            assert set(await snapshot.load()) == {"a"}
            assert {p: p.read_bytes() for p in (db, wal)} == before  # the reader wrote neither
            await writer.commit(upserts=[rec("b")])
            assert set(await snapshot.load()) == {"a"}  # the later commit is not in the snapshot
            assert await snapshot.last_ticks(1) == []
        finally:
            await snapshot.close()
        assert set(await writer.load()) == {"a", "b"}
    finally:
        await writer.close()


async def test_snapshot_of_no_database_creates_nothing(tmp_path):
    with pytest.raises(StoreError, match="no database"):
        await Store.open_snapshot(tmp_path / "missing" / "cdnreq.db")
    assert not (tmp_path / "missing").exists()


# -- DryStore -----------------------------------------------------------------


async def test_dry_store_keeps_the_writes_and_makes_none(tmp_path):
    db = tmp_path / "cdnreq.db"
    await make_db(db, "a")
    before = files(tmp_path)
    dry = DryStore(await Store.open_snapshot(db))
    try:
        assert await dry.begin_tick(10.0) == 1
        challenge = Challenge(InstanceGuid("b"), "shop.example", "salt", "token", 10.0)
        await dry.commit(upserts=[rec("b")], events=[Event("b", "challenge", "issued", 10.0, None, 1)],
                         challenge_upserts=[challenge], forgets=["a"])
        await dry.save_guards({"updates": None}, 10.0)
        await dry.end_tick(1, finished_at=11.0, result="ok", summary={})
        assert set(dry.upserts) == {"b"} and dry.forgets == ["a"] and dry.challenges == [challenge]
        assert dict(dry.writes) == {"begin_tick": 1, "commit": 1, "save_guards": 1, "end_tick": 1}
        assert set(await dry.load()) == {"a"}  # reads come from the snapshot, as it was
    finally:
        await dry.close()
    assert files(tmp_path) == before


# -- ReadOnlyMaster, ActionLog --------------------------------------------------


async def test_read_only_master_sends_no_write():
    client = MasterClient(url="http://127.0.0.1:9/")
    master = ReadOnlyMaster(client)
    try:
        with pytest.raises(WriteRefused):
            await master.request_instance(title="t", software_release_uri="sr", software_type="default",
                                          parameters=None, state="destroyed", sla_parameters={})
        with pytest.raises(WriteRefused):
            await master.publish_connection("g", {})
        with pytest.raises(WriteRefused):
            await master.publish_error("g", "e")
    finally:
        await master.close()
    assert sum(client.calls.values()) == 0
    assert dict(master.refused) == {"request_instance": 1, "publish_connection": 1, "publish_error": 1}


async def test_action_log_keeps_every_action_and_runs_none():
    actions = [Action(Kind.REQUEST, rec("a"), "added"), Action(Kind.DESTROY, rec("b"), "removed from the master")]
    feed = Feed(actions[:1])
    feed.extend(actions[1:])
    feed.close()
    log = ActionLog()
    assert await log(feed, master=None, sink=None) == 2
    assert log.actions == actions


# -- the secret -----------------------------------------------------------------


def test_read_secret_creates_no_missing_secret(tmp_path):
    path = tmp_path / "secret"
    assert len(read_secret(path)) >= 16
    assert not path.exists()
    path.write_text("x" * 32 + "\n")
    assert read_secret(path) == b"x" * 32
    path.write_text("short")
    with pytest.raises(SecretError, match="too short"):
        read_secret(path)


# -- Gate.why, the document -------------------------------------------------------


def test_gate_why():
    assert Gate(Status.OK).why is None
    assert Gate(Status.INVALID, error="url: refused").why == "url: refused"
    assert Gate(Status.PENDING, pending=("a.example", "b.example")).why == "waiting for DNS proof of a.example, b.example"
    assert Gate(Status.PENDING, reason="a previous entry serves it").why == "a previous entry serves it"


async def closed_snapshot(tmp_path) -> DryStore:
    """A dry view of a store made by make_db, closed: `document` reads nothing more of it."""
    db = tmp_path / "cdnreq.db"
    await make_db(db)
    dry = DryStore(await Store.open_snapshot(db))
    await dry.close()
    return dry


async def test_document_groups_actions_held_and_errors(tmp_path):
    dry = await closed_snapshot(tmp_path)
    instance = SharedInstance(InstanceGuid("n"), RequestedState.STARTED, {"url": "https://n.example"}, "h" * 64)
    bad = Gate(Status.INVALID, error="domain: refused")
    actions = [
        Action(Kind.REQUEST, rec("n"), "added", instance, Gate.accept(instance)),
        Action(Kind.PUBLISH, rec("x"), "invalid", None, bad),
        Action(Kind.DESTROY, rec("d", tech_guid="T"), "removed from the master"),
        Action(Kind.PUBLISH, rec("y"), "unusable listing entry", None, refused(("parameters: not JSON",))),
    ]
    stages = Stages()
    stages("planned", (Plan(tuple(actions), held=(rec("h"),), hold_reason="too many gone", withheld=(InstanceGuid("h"),)),
                         DomainStep(gates={"x": bad})))
    stages("held", HeldUpdates({"u": ("t", 1)}, "fp", "mass change", (("u", "parameters changed"),)))
    report = TickReport(id=7, started_at=0.0, planned={"request": 1, "publish": 1, "destroy": 1, "held": 1})
    known = {"r": rec("r", retry_at=200.0, last_error="master: down")}
    doc = document(actions, stages, dry, report, known, now=100.0, confirm_ticks=3)
    assert doc["counts"] == {
        "request": 1, "update": 0, "destroy": 1, "publish": 2, "poll": 0, "held_removals": 1,
        "held_updates": 1, "errors": 2, "pending": 0, "backoff": 1, "challenges": 0,
        "waiting_admission": 0,
    }
    assert doc["held"]["removals"] == {"reason": "too many gone", "instances": ["h"]}
    assert doc["held"]["updates"]["instances"] == [{"instance_guid": "u", "seen": 1, "needed": 3}]
    assert doc["errors"][1] == {"instance_guid": "y", "error": refused(("parameters: not JSON",)).why}
    assert doc["errors"][0] == {"instance_guid": "x", "error": "domain: refused"}
    assert doc["would"]["publish"][0]["why"] == "domain: refused"
    text = render(doc)
    assert "would request (1):\n  n  cdn-n  added" in text
    assert "held removals (1): too many gone\n  h" in text
    assert "held updates (1): mass change\n  u  seen 1 of 3 ticks" in text
    assert "errors (2):\n  x  domain: refused\n  y  " in text
    assert "totals: request 1, update 0, destroy 1, publish 2" in text
    failed = TickReport(id=8, started_at=0.0, error="master: unreachable")
    assert render(document([], Stages(), dry, failed, {}, 0.0, 3)) == "no plan: master: unreachable\n"


async def test_render_escapes_what_the_master_and_customers_wrote(tmp_path):
    """A listed guid may hold any ASCII, an escape sequence too (the listing
    accepts it); the plan's text must show it escaped, one line per row."""
    dry = await closed_snapshot(tmp_path)
    evil = "g\x1b]0;owned\x07\x1b[2J"
    bad = Gate(Status.INVALID, error="url: refused\nsecond line \x1b[31m")
    actions = [Action(Kind.PUBLISH, rec(evil), "invalid", None, bad)]
    stages = Stages()
    stages("planned", (Plan(tuple(actions)), DomainStep(gates={evil: bad})))
    report = TickReport(id=1, started_at=0.0, planned={"publish": 1})
    known = {evil: rec(evil, retry_at=200.0, last_error="master: \x1b[2Jdown")}
    text = render(document(actions, stages, dry, report, known, now=100.0, confirm_ticks=3))
    assert "\x1b" not in text and "\x07" not in text
    assert "g\\x1b]0;owned\\x07\\x1b[2J" in text
    assert "second line" in text and "url: refused\nsecond line" not in text
    failed = TickReport(id=2, started_at=0.0, error="master: said \x1b[2J")
    assert "\x1b" not in render(document([], Stages(), dry, failed, {}, 0.0, 3))


async def test_snapshot_through_a_symlink_reads_the_daemons_write_ahead_log(tmp_path):
    """The daemon opens the database's real path, so its -wal sits beside the
    real file, not beside a symlink to it. The snapshot must look there, or
    it opens the main file alone (immutable) and misses every commit still
    in the log: a fresh database even reads as schema version 0."""
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.mkdir()
    (link / "cdnreq.db").symlink_to(real / "cdnreq.db")
    writer = await Store.open(link / "cdnreq.db")  # takes the lock, as the daemon does
    try:
        await writer.commit(upserts=[rec("a")])
        await writer.commit(upserts=[rec("b")])
        assert Path(f"{real / 'cdnreq.db'}-wal").exists() and not Path(f"{link / 'cdnreq.db'}-wal").exists()
        before = files(real)
        snapshot = await Store.open_snapshot(link / "cdnreq.db")
        try:
            assert set(await snapshot.load()) == {"a", "b"}
        finally:
            await snapshot.close()
        assert set(files(real)) == set(before) and sorted(p.name for p in link.iterdir()) == ["cdnreq.db"]
    finally:
        await writer.close()


async def test_snapshot_of_a_log_without_its_shm_creates_nothing(tmp_path):
    """A -wal without its -shm (no writer has the file open): `mode=ro` would
    create the -shm to read the log. The plan says so and writes nothing."""
    db = tmp_path / "cdnreq.db"
    await make_db(db, "a")
    script = (  # a writer that dies without checkpointing, then its -shm is removed
        "import sqlite3, os\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"INSERT INTO events (at, instance_guid, action, outcome) VALUES (9, 'z', 'in-wal', 'ok')\")\n"
        f"os.unlink({str(db) + '-shm'!r})\n"
        "os._exit(0)\n"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", script], check=True)
    assert Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    before = files(tmp_path)
    with pytest.raises(StoreError, match="without its -shm"):
        await Store.open_snapshot(db)
    assert files(tmp_path) == before


def test_a_reader_that_left_is_no_traceback(tmp_path):
    """`cdnreq check-config | head -0`, `cdnreq plan --json | head`: the
    output's reader is gone; the command ends quietly (141, as a shell
    reports SIGPIPE), with no BrokenPipeError traceback."""
    import subprocess
    import sys as _sys

    config = tmp_path / "c.toml"
    config.write_text(
        '[master]\nurl = "http://127.0.0.1:9/"\ninstance_guid = "SOFTINST-1"\n'
        '[technical_cdn]\nsoftware_release_uri = "http://sr.invalid/cdn.cfg"\n'
        f'[daemon]\ndatabase = "{tmp_path / "db" / "cdnreq.db"}"\n',
        encoding="utf-8",
    )
    read, write = os.pipe()
    os.close(read)  # the reader left before the first byte
    try:
        result = subprocess.run(
            [_sys.executable, "-m", "cdnreq.cli", "check-config", "--config", str(config)],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


async def test_a_told_customer_s_periodic_read_back_is_shown_as_a_read_back_not_a_publication(tmp_path):
    """53b101a reads back, every verify_interval_s, a customer told without
    a live entry (refused, waiting for its DNS proof): an action PUBLISH
    whose reason is the read-back, which publishes only if the master lost
    what it was shown. `cdnreq plan` listed it under 'would publish', so a
    fleet of refused customers showed as thousands of publications due
    (after an upgrade, every one at once), none of which would be sent."""
    from cdnreq.decide.plan import READ_BACK

    dry = await closed_snapshot(tmp_path)
    instance = SharedInstance(InstanceGuid("x"), RequestedState.STARTED, {"url": "https://x.example"}, "h" * 64)
    bad = Gate(Status.INVALID, error="domain: refused")
    actions = [Action(Kind.PUBLISH, rec("x", published="d"), READ_BACK, instance, bad)]
    stages = Stages()
    stages("planned", (Plan(tuple(actions)), DomainStep(gates={"x": bad})))
    doc = document(actions, stages, dry, TickReport(id=7, started_at=0.0), {}, now=100.0, confirm_ticks=3)
    assert doc["counts"]["publish"] == 0 and doc["counts"]["poll"] == 1, doc["counts"]
    assert doc["would"]["poll"][0]["reason"] == READ_BACK


def test_a_told_customer_s_read_back_is_counted_as_a_read_back_in_the_tick_s_planned_counts() -> None:
    """The tick's `planned` (its log line, /status, the metrics) counted it as a publication."""
    from cdnreq.decide.actions import READ_BACK, Action, Draft, Kind
    from cdnreq.decide.plan import new_record

    record = new_record(InstanceGuid("A"), "cdnreq-", 1.0)
    draft = Draft(now=1.0)
    draft.add(Action(Kind.PUBLISH, record, READ_BACK), record)
    draft.add(Action(Kind.PUBLISH, record, "new information for the customer"), record)
    assert draft.counted() == {"poll": 1, "publish": 1}

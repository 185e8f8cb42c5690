"""`cdnreq migrate-store`: a store copied between SQLite and a real
PostgreSQL, verified, and what a copy that did not finish leaves refused."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cdnreq.cli import main
from cdnreq.legacy.findings import Finding
from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceGuid, Phase, Record, RequestedState, Title
from cdnreq.store import Store, StoreError
from cdnreq.store.copying import COPYING, TABLES
from cdnreq.store.imports import steps as import_steps
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url

pytestmark = pytest.mark.postgres


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "cdnreq.toml"
    path.write_text(
        '[master]\nurl = "http://127.0.0.1:9"\ninstance_guid = "r"\n'
        '[technical_cdn]\nsoftware_release_uri = "https://sr.example/software.cfg"\n'
        f'[daemon]\ndatabase = "{tmp_path}/unused.db"\n[store]\nsslmode = "disable"\n'
    )
    return path


def record(guid: str, **kw) -> Record:
    base = dict(guid=InstanceGuid(guid), title=Title(f"cdnreq-{guid}"), phase=Phase.LIVE, created_at=1,
                updated_at=2.5, param_hash="p" * 64, requested_state=RequestedState.STARTED, tech_guid=f"T-{guid}",
                connection={"domain": f"{guid}.cdn.example"}, served=(f"{guid.lower()}.example",), failures=0)
    base.update(kw)
    return Record(**base)


async def fill(store) -> None:
    await store.commit(
        upserts=[record("A"), record("B", last_error="refused 'x\x00y'", phase=Phase.NEW, tech_guid=None),
                 record("C", phase=Phase.RETAINED, gone_at=9.0)],
        shown={"A": {"domain": "a.cdn.example"}},
        host_upserts=[HostClaim("a.example", InstanceGuid("A"), "a.example", 1.0, 2.0)],
        challenge_upserts=[Challenge(InstanceGuid("B"), "b.example", "salt", "cdnreq-token", 3.0)],
        decisions=[Decision("A", "p" * 64, "stamp", '{"ok": true}', "gate", "[]", None)],
        events=[Event("A", "request", "ok", float(i), f"detail {i}", 1) for i in range(7)],
        asleep=[("C", "mark")],
        also=import_steps(5.0, "legacy", {"n": 1}, [Finding("A", "ref", "host-conflict", "a.example", "f", "d")]),
    )
    await store.save_guards({"held": {"since": 1}}, 4.0)
    tick = await store.begin_tick(10.0)
    await store.end_tick(tick, finished_at=11.0, result="ok", summary={"ok": True})


async def state_of(store) -> dict:
    return {
        "records": await store.load(), "hosts": await store.load_hosts(), "challenges": await store.load_challenges(),
        "decisions": await store.load_decisions(), "asleep": [tuple(r) for r in await store.load_asleep()],
        "shown": await store.published_of("A"), "events": await store.events_for("A"),
        "guards": await store.load_guards(), "ticks": await store.last_ticks(), "import": await store.last_import(),
    }


async def test_the_copy_covers_every_table_and_column_of_the_schema(tmp_path):
    await (await Store.open(tmp_path / "x.db")).close()
    with sqlite3.connect(tmp_path / "x.db") as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, _, columns in TABLES:
            assert {c[1] for c in raw.execute(f"PRAGMA table_info({table})")} == set(columns), table
    assert tables - {t for t, _, _ in TABLES} == {"schema_version", "migrations", "sqlite_sequence"}


def test_sqlite_to_postgresql_and_back(tmp_path, pg_url, capsys):
    config = write_config(tmp_path)

    async def source() -> dict:
        store = await Store.open(tmp_path / "source.db")
        await fill(store)
        try:
            return await state_of(store)
        finally:
            await store.close()

    want = asyncio.run(source())
    assert main(["migrate-store", "--config", str(config), "--from", f"sqlite://{tmp_path}/source.db",
                 "--to", pg_url]) == 0
    out = capsys.readouterr().out
    assert "events: 7 rows" in out and "1 text values held a NUL" in out

    async def copied() -> dict:
        copy = await PgStore.open(parse_store_url(pg_url), holder="t", lease_s=60.0)
        try:
            got = await state_of(copy)
            await copy.commit(events=[Event("A", "poll", "ok", 20.0)])  # ids go on after the copied ones
            got["next_event"] = (await copy.events_for("A", limit=1))[0][0]
            return got
        finally:
            await copy.close()

    got = asyncio.run(copied())
    assert got["records"]["B"].last_error == "refused 'x\\u0000y'"
    assert got.pop("next_event") > max(i for i, _ in want["events"])
    assert got == dict(want, records={**want["records"], "B": got["records"]["B"]})

    assert main(["migrate-store", "--config", str(config), "--from", pg_url,
                 "--to", f"sqlite://{tmp_path}/back.db"]) == 0

    async def back() -> dict:
        store = await Store.open(tmp_path / "back.db")
        try:
            return await state_of(store)
        finally:
            await store.close()

    again = asyncio.run(back())
    assert again["records"] == got["records"] and again["hosts"] == want["hosts"]
    assert [e for _, e in again["events"]][1:] == [e for _, e in want["events"]]  # with the one added on PostgreSQL


def test_a_destination_that_holds_a_store_is_refused(tmp_path, capsys):
    config = write_config(tmp_path)

    async def make(path: str) -> None:
        store = await Store.open(tmp_path / path)
        await fill(store)
        await store.close()

    for path in ("a.db", "b.db"):
        asyncio.run(make(path))
    before = (tmp_path / "b.db").read_bytes()
    assert main(["migrate-store", "--config", str(config), "--from", f"sqlite://{tmp_path}/a.db",
                 "--to", f"sqlite://{tmp_path}/b.db"]) == 3
    assert "already holds a store" in capsys.readouterr().err
    assert (tmp_path / "b.db").read_bytes() == before


async def test_a_copy_that_did_not_finish_is_refused_by_the_daemon(tmp_path, pg_url):
    from cdnreq.config import Config
    from cdnreq.service.opening import open_checked

    store = await PgStore.open(parse_store_url(pg_url), holder="t", lease_s=60.0)
    await store.save_guards({COPYING: {"from": "sqlite:///old.db", "since": 1.0}}, 1.0)
    await store.commit(upserts=[record("A")])
    await store.close()
    config = Config.model_validate({
        "master": {"url": "http://127.0.0.1:9", "instance_guid": "r"},
        "technical_cdn": {"software_release_uri": "https://sr.example/software.cfg"},
        "store": {"url": pg_url, "sslmode": "disable"},
    })
    with pytest.raises(StoreError, match="did not finish"):
        await open_checked(config)


def test_a_postgresql_database_whose_collation_orders_text_otherwise_is_copied_and_back(tmp_path, pg_server):
    """A production PostgreSQL is often made with the system's locale
    (en_US.UTF-8, or ICU's), which orders `B` after `ab` where SQLite's bytes
    put it first: each side's digest of the rows in its own key order
    differed, so every copy to or from such a database failed its check."""
    name = f"icu_{tmp_path.name[-20:].replace('-', '_').lower()}"
    pg_server.psql(f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE \'en-US\' '
                   "LOCALE 'C'")
    url, config = pg_server.url(name), write_config(tmp_path)
    guids = ("B", "a", "a-b", "ab", "Zz", "_x")

    async def make(path: str) -> dict:
        store = await Store.open(tmp_path / path)
        try:
            if path == "s.db":
                await store.commit(upserts=[record(g) for g in guids], host_upserts=[
                    HostClaim(f"{g.lower()}.example", InstanceGuid(g), f"{g.lower()}.example", 1.0, 2.0)
                    for g in guids])
            return await state_of(store)
        finally:
            await store.close()

    want = asyncio.run(make("s.db"))
    assert main(["migrate-store", "--config", str(config), "--from", f"sqlite://{tmp_path}/s.db", "--to", url]) == 0
    assert main(["migrate-store", "--config", str(config), "--from", url, "--to", f"sqlite://{tmp_path}/b.db"]) == 0
    assert asyncio.run(make("b.db")) == want


async def test_rows_with_a_null_key_end_the_copy_s_reading_instead_of_looping(tmp_path, monkeypatch):
    """A hand-edited SQLite file: TEXT PRIMARY KEY columns take NULL. A first
    page made only of such rows was read again and again, for ever (keyset
    pagination from a NULL key); they are not read, as by the store's reads."""
    from cdnreq.store import copying

    monkeypatch.setattr(copying, "CHUNK_ROWS", 2)
    store = await Store.open(tmp_path / "cdnreq.db")
    try:
        await store.close()
        with sqlite3.connect(tmp_path / "cdnreq.db") as db:
            db.executemany("INSERT INTO names (guid, name) VALUES (?, ?)", [(None, f"n{i}") for i in range(3)])
            db.executemany("INSERT INTO names (guid, name) VALUES (?, ?)", [("a", "A"), ("b", "B"), ("c", "C")])
        store = await Store.open(tmp_path / "cdnreq.db")
        async def read() -> list:
            return [page async for page in copying.chunks(store, "names", "guid", ("guid", "name"))]

        pages = await asyncio.wait_for(read(), 10)
        assert [row for page in pages for row in page] == [("a", "A"), ("b", "B"), ("c", "C")]
        assert (await asyncio.wait_for(copying.digest_of(store), 10))["names"][0] == 3
    finally:
        await store.close()

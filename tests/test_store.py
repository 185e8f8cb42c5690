import dataclasses
import sqlite3

import pytest

from cdnreq.model import (
    Challenge,
    Event,
    HostClaim,
    InstanceGuid,
    Phase,
    Record,
    RequestedState,
    Title,
    shown_digest,
)
from cdnreq.store import SchemaTooNew, Store, StoreError, StoreLocked
from cdnreq.store import rows as store_rows
from cdnreq.store.migrations import LATEST, MIGRATIONS, split_statements
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url
from tests.storeread import counts_by_phase, events_since


def rec(guid: str, title: str | None = None, **kw) -> Record:
    base = dict(
        guid=InstanceGuid(guid),
        title=Title(title or f"cdn-{guid}"),
        phase=Phase.NEW,
        created_at=1.0,
        updated_at=2.0,
    )
    base.update(kw)
    return Record(**base)


SHOWN = {"url": "https://x.example", "é": "ü"}


def full_record() -> Record:
    return Record(
        guid=InstanceGuid("SOFTINST-1"),
        title=Title("cdn-SOFTINST-1"),
        phase=Phase.LIVE,
        created_at=100.5,
        updated_at=200.25,
        param_hash="p" * 64,
        requested_state=RequestedState.STOPPED,
        spec_hash="s" * 64,
        tech_guid="SOFTINST-99",
        connection={"url": "https://x.example", "nested": {"b": [1, 2], "a": None}},
        published=shown_digest(SHOWN),
        published_error="previous error",
        last_action="request",
        last_error="boom",
        failures=3,
        retry_at=300.75,
        served=("x.example", "*.y.example", "é.example"),
        gone_at=400.125,
    )


def host(name: str, guid: str, **kw) -> HostClaim:
    base = dict(host=name, guid=InstanceGuid(guid), registrable="example.com",
                proven_at=10.0, checked_at=20.0)  # fmt: skip
    base.update(kw)
    return HostClaim(**base)


def challenge(guid: str, **kw) -> Challenge:
    base = dict(guid=InstanceGuid(guid), domain=f"{guid.lower()}.example.com",
                salt=f"salt-{guid}", token=f"token-{guid}", created_at=5.0)  # fmt: skip
    base.update(kw)
    return Challenge(**base)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request, tmp_path):
    """The store on each engine: what these tests check holds on both."""
    if request.param == "sqlite":
        s = await Store.open(tmp_path / "state" / "cdnreq.db")
    else:
        s = await PgStore.open(parse_store_url(request.getfixturevalue("pg_url")), holder="test", lease_s=60.0)
    yield s
    await s.close()


async def test_open_creates_parent_and_reports_version(tmp_path):
    path = tmp_path / "a" / "b" / "x.db"
    s = await Store.open(path)
    try:
        assert path.exists()
        assert s.path == path
        assert s.schema_version == LATEST
    finally:
        await s.close()


async def test_round_trip_full_and_minimal(store):
    full = full_record()
    minimal = rec("SOFTINST-2")
    await store.commit(upserts=[full, minimal], shown={"SOFTINST-1": SHOWN})
    assert await store.get("SOFTINST-1") == full
    assert await store.published_of("SOFTINST-1") == SHOWN
    assert await store.get("SOFTINST-2") == minimal
    assert await store.get("nope") is None
    loaded = await store.load()
    assert loaded == {"SOFTINST-1": full, "SOFTINST-2": minimal}
    got = loaded["SOFTINST-1"]
    assert got.phase is Phase.LIVE and got.requested_state is RequestedState.STOPPED
    assert loaded["SOFTINST-2"].connection is None and loaded["SOFTINST-2"].failures == 0
    # a later upsert keeps what was shown: only a publication changes it
    await store.commit(upserts=[dataclasses.replace(full, failures=4)])
    assert await store.published_of("SOFTINST-1") == SHOWN
    assert await store.published_of("SOFTINST-2") is None


async def test_round_trip_survives_reopen(tmp_path):
    path = tmp_path / "x.db"
    s = await Store.open(path)
    await s.commit(upserts=[full_record()], shown={"SOFTINST-1": SHOWN})
    await s.close()
    s = await Store.open(path)
    try:
        assert await s.load() == {"SOFTINST-1": full_record()}
    finally:
        await s.close()


async def test_json_written_sorted(tmp_path):
    path = tmp_path / "x.db"
    s = await Store.open(path)
    await s.commit(upserts=[rec("G", connection={"b": 1, "a": 2})])
    await s.close()
    with sqlite3.connect(path) as raw:
        (text,) = raw.execute("SELECT connection FROM instances").fetchone()
    assert text == '{"a": 2, "b": 1}'


async def test_upsert_changes_row(store):
    await store.commit(upserts=[rec("G", phase=Phase.NEW)])
    changed = rec("G", title="other", phase=Phase.REQUESTED, updated_at=9.0, failures=1,
                  tech_guid="T")
    await store.commit(upserts=[changed])
    assert await store.get("G") == changed
    assert len(await store.load()) == 1


async def test_forget_deletes(store):
    await store.commit(upserts=[rec("A"), rec("B")])
    await store.commit(forgets=["A", "missing"])
    assert set(await store.load()) == {"B"}


async def test_forget_frees_title_in_same_commit(store):
    await store.commit(upserts=[rec("A", title="T")])
    await store.commit(forgets=["A"], upserts=[rec("B", title="T")])
    assert set(await store.load()) == {"B"}


async def test_events_ids_increase_and_survive_reopen(tmp_path):
    path = tmp_path / "x.db"
    s = await Store.open(path)
    evs = [Event("A", "request", "ok", at=float(i), detail=f"d{i}", tick=7) for i in range(3)]
    await s.commit(events=evs)
    await s.commit(events=[Event("B", "destroy", "error", at=5.0)])
    feed = await events_since(s)
    ids = [i for i, _ in feed]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [e for _, e in feed] == evs + [Event("B", "destroy", "error", at=5.0)]
    await s.close()

    s = await Store.open(path)
    try:
        await s.commit(events=[Event("A", "publish", "ok", at=6.0)])
        feed2 = await events_since(s)
        assert feed2[:4] == feed
        assert feed2[4][0] > ids[-1]
        assert await events_since(s, after_id=ids[1], limit=2) == feed2[2:4]
        newest = await s.events_for("A")
        assert [e.action for _, e in newest] == ["publish", "request", "request", "request"]
        assert [i for i, _ in newest] == sorted((i for i, _ in newest), reverse=True)
        assert len(await s.events_for("A", limit=2)) == 2
    finally:
        await s.close()


async def test_event_ids_not_reused_after_delete(tmp_path):
    path = tmp_path / "x.db"
    s = await Store.open(path)
    await s.commit(events=[Event("A", "x", "ok", at=1.0)])
    (last, _), = await events_since(s)
    await s.close()
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM events")
    s = await Store.open(path)
    try:
        await s.commit(events=[Event("A", "y", "ok", at=2.0)])
        (new, _), = await events_since(s)
        assert new > last
    finally:
        await s.close()


async def test_commit_is_atomic(store):
    await store.commit(upserts=[rec("KEEP", title="keep")], events=[Event("KEEP", "a", "ok", 1.0)])
    before_load = await store.load()
    before_events = await events_since(store)
    with pytest.raises(StoreError, match="(?i)unique"):
        await store.commit(
            upserts=[rec("X", title="same"), rec("Y", title="same"), rec("KEEP", title="k2")],
            forgets=["KEEP2"],
            events=[Event("X", "request", "ok", 2.0)],
        )
    assert await store.load() == before_load
    assert await events_since(store) == before_events
    # and the connection is still usable afterwards
    await store.commit(upserts=[rec("X", title="same")])
    assert set(await store.load()) == {"KEEP", "X"}


async def test_commit_rejects_upsert_and_forget_of_same_guid(store):
    with pytest.raises(StoreError):
        await store.commit(upserts=[rec("A")], forgets=["A"])
    assert await store.load() == {}


async def test_pragmas(tmp_path):
    store = await Store.open(tmp_path / "x.db")
    conn = store._conn
    assert (await conn.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
    assert (await conn.execute_fetchall("PRAGMA synchronous"))[0][0] == 1  # NORMAL
    assert (await conn.execute_fetchall("PRAGMA busy_timeout"))[0][0] == 5000
    assert (await conn.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
    await store.close()


async def test_reopen_does_not_rerun_migrations(tmp_path):
    path = tmp_path / "x.db"
    await (await Store.open(path)).close()
    with sqlite3.connect(path) as raw:
        first = raw.execute("SELECT version, applied_at FROM migrations").fetchall()
    s = await Store.open(path)
    await s.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version, applied_at FROM migrations").fetchall() == first
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
    assert len(first) == LATEST


async def test_schema_too_new(tmp_path):
    path = tmp_path / "x.db"
    await (await Store.open(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = 999")
    with pytest.raises(SchemaTooNew) as info:
        await Store.open(path)
    msg = str(info.value)
    assert "999" in msg and f"({LATEST})" in msg and str(path) in msg
    assert f"knows ({LATEST})" in msg
    # the failed open released its lock
    with pytest.raises(SchemaTooNew):
        await Store.open(path)


async def test_garbage_file(tmp_path):
    path = tmp_path / "x.db"
    path.write_bytes(b"this is not sqlite at all\x00\x01\x02" * 100)
    with pytest.raises(StoreError) as info:
        await Store.open(path)
    assert str(path) in str(info.value) and "not" in str(info.value)
    assert path.read_bytes().startswith(b"this is not sqlite")


async def test_foreign_sqlite_database(tmp_path):
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE something (x)")
    with pytest.raises(StoreError, match="not a cdnreq database"):
        await Store.open(path)


async def test_lock(tmp_path):
    import os

    path = tmp_path / "x.db"
    first = await Store.open(path)
    try:
        with pytest.raises(StoreLocked) as info:
            await Store.open(path)
        msg = str(info.value)
        assert f"{path}.lock" in msg and f"pid {os.getpid()}" in msg
        reader = await Store.open(path, lock=False)
        await first.commit(upserts=[rec("A")])
        assert set(await reader.load()) == {"A"}
        await reader.close()
    finally:
        await first.close()
    again = await Store.open(path)
    await again.close()


async def test_ticks(store):
    t1 = await store.begin_tick(10.0)
    await store.end_tick(t1, finished_at=11.0, result="ok", summary={"requested": 2, "b": [1]})
    t2 = await store.begin_tick(20.0)
    assert t2 > t1
    ticks = await store.last_ticks()
    assert ticks == [
        {"id": t2, "started_at": 20.0, "finished_at": None, "result": None, "summary": None},
        {"id": t1, "started_at": 10.0, "finished_at": 11.0, "result": "ok",
         "summary": {"requested": 2, "b": [1]}},
    ]
    assert len(await store.last_ticks(limit=1)) == 1
    with pytest.raises(StoreError):
        await store.end_tick(999, finished_at=1.0, result="ok", summary={})


async def test_counts_by_phase(store):
    assert await counts_by_phase(store) == {p.value: 0 for p in Phase}
    await store.commit(upserts=[
        rec("A", phase=Phase.LIVE), rec("B", phase=Phase.LIVE), rec("C", phase=Phase.REMOVING),
    ])
    assert await counts_by_phase(store) == {
        "new": 0, "requested": 0, "live": 2, "removing": 1, "retained": 0,
    }  # fmt: skip
    await store.commit(upserts=[rec("D", phase=Phase.RETAINED, gone_at=3.0)])
    assert (await counts_by_phase(store))["retained"] == 1


async def test_commit_rolls_back_earlier_statements(store):
    # The failure comes last (an event violating NOT NULL), after the forget and
    # the upsert already ran inside the transaction: both must be undone.
    await store.commit(upserts=[rec("OLD")])
    with pytest.raises(StoreError):
        await store.commit(
            forgets=["OLD"],
            upserts=[rec("NEW")],
            events=[Event("NEW", "request", "ok", 1.0), Event("NEW", "x", "ok", at=None)],
        )
    assert set(await store.load()) == {"OLD"}
    assert await events_since(store) == []


def test_columns_match_record_fields():
    # Rows map onto Record positionally: a new field needs a column (and a migration).
    assert store_rows.COLUMNS.split(", ") == [f.name for f in dataclasses.fields(Record)]
    assert store_rows.HOST_COLUMNS.split(", ") == [
        f.name for f in dataclasses.fields(HostClaim)
    ]
    assert store_rows.CHALLENGE_COLUMNS.split(", ") == [
        f.name for f in dataclasses.fields(Challenge)
    ]


def make_v1_database(path) -> None:
    """A database exactly as cdnreq with schema version 1 left it."""
    number, description, sql = MIGRATIONS[0]
    assert number == 1
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for statement in split_statements(sql):
            raw.execute(statement)
        raw.execute("INSERT INTO schema_version (id, version) VALUES (1, 1)")
        raw.execute("INSERT INTO migrations VALUES (1, ?, 1.0)", (description,))
        raw.execute(
            "INSERT INTO instances (guid, title, phase, param_hash, requested_state, "
            "connection, published, failures, retry_at, created_at, updated_at) "
            "VALUES ('SOFTINST-7', 'cdn-SOFTINST-7', 'live', 'h', 'started', "
            "'{\"url\": \"https://a\"}', '{\"url\": \"https://a\"}', 2, 9.5, 1.0, 2.0)"
        )
        raw.execute("COMMIT")
    finally:
        raw.close()


async def test_migrates_v1_database(tmp_path):
    path = tmp_path / "v1.db"
    make_v1_database(path)
    s = await Store.open(path)
    try:
        assert s.schema_version == LATEST
        expected = Record(
            guid=InstanceGuid("SOFTINST-7"), title=Title("cdn-SOFTINST-7"), phase=Phase.LIVE,
            created_at=1.0, updated_at=2.0, param_hash="h",
            requested_state=RequestedState.STARTED, connection={"url": "https://a"},
            published=shown_digest({"url": "https://a"}), failures=2, retry_at=9.5,
            live_at=2.0,  # schema 8: a live instance was live since its last update, as far as the feed goes
        )  # fmt: skip
        got = await s.get("SOFTINST-7")
        assert got == expected and got.served is None and got.gone_at is None
        assert await s.load() == {"SOFTINST-7": expected}
        assert await s.load_hosts() == {} and await s.load_challenges() == {}
        # the new columns and tables are writable
        changed = dataclasses.replace(expected, served=("a.example",), gone_at=3.0)
        await s.commit(upserts=[changed], host_upserts=[host("a.example", "SOFTINST-7")],
                       challenge_upserts=[challenge("SOFTINST-7")])  # fmt: skip
        assert await s.get("SOFTINST-7") == changed
    finally:
        await s.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
        assert [v for (v,) in raw.execute("SELECT version FROM migrations ORDER BY version")] == [
            1, 2, 3, 4, 5, 6, 7, 8, 9,
        ]  # fmt: skip
        indexes = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"hosts_guid", "hosts_registrable", "instances_phase"} <= indexes


async def test_served_and_gone_at_round_trip(tmp_path):
    path = tmp_path / "x.db"
    s = await Store.open(path)
    records = [
        rec("A", served=("b.example", "a.example"), gone_at=12.5),  # order kept
        rec("B", served=()),  # none served is not unknown
        rec("C"),
        rec("D", phase=Phase.RETAINED, served=("*.w.example",), gone_at=0.0),
    ]
    await s.commit(upserts=records)
    assert await s.load() == {r.guid: r for r in records}
    assert (await s.get("A")).served == ("b.example", "a.example")
    assert isinstance((await s.get("A")).served, tuple)
    assert (await s.get("B")).served == ()
    assert (await s.get("D")).phase is Phase.RETAINED
    # cleared again by an upsert
    await s.commit(upserts=[rec("A")])
    assert (await s.get("A")).served is None and (await s.get("A")).gone_at is None
    await s.close()
    with sqlite3.connect(path) as raw:
        rows = dict(raw.execute("SELECT guid, served FROM instances"))
    assert rows == {"A": None, "B": "[]", "C": None, "D": '["*.w.example"]'}


async def test_served_must_be_hosts(store):
    with pytest.raises(StoreError, match="served"):
        await store.commit(upserts=[rec("A", served="a.example")])
    with pytest.raises(StoreError, match="served"):
        await store.commit(upserts=[rec("A", served=("a.example", 3))])
    assert await store.load() == {}


async def test_hosts_and_challenges_round_trip(tmp_path):
    path = tmp_path / "x.db"
    s = await Store.open(path)
    claims = [
        host("a.example.com", "A"),
        host("*.b.example.com", "A", failing_since=30.0),
        host("c.example.org", "B", registrable="example.org", proven_at=1.5, checked_at=2.5),
    ]
    challenges = [challenge("A"), challenge("B", created_at=6.5)]
    await s.commit(upserts=[rec("A"), rec("B")], host_upserts=claims,
                   challenge_upserts=challenges)  # fmt: skip
    await s.close()
    s = await Store.open(path)
    try:
        assert await s.load_hosts() == {c.host: c for c in claims}
        assert await s.load_challenges() == {c.guid: c for c in challenges}
        assert await s.hosts_of("A") == sorted(claims[:2], key=lambda c: c.host)
        assert await s.hosts_of("B") == [claims[2]]
        assert await s.hosts_of("nobody") == []
        assert await s.challenge_of("B") == challenges[1]
        assert await s.challenge_of("nobody") is None
        # re-check and a new token are upserts
        rechecked = dataclasses.replace(claims[1], checked_at=40.0, failing_since=None)
        renewed = challenge("A", salt="s2", token="t2", created_at=7.0)
        await s.commit(host_upserts=[rechecked], challenge_upserts=[renewed])
        assert (await s.load_hosts())["*.b.example.com"] == rechecked
        assert await s.challenge_of("A") == renewed
        # deletes
        await s.commit(host_deletes=["a.example.com", "missing"], challenge_deletes=["B", "x"])
        assert set(await s.load_hosts()) == {"*.b.example.com", "c.example.org"}
        assert set(await s.load_challenges()) == {"A"}
    finally:
        await s.close()


async def test_host_transfer_in_one_commit(store):
    await store.commit(upserts=[rec("A"), rec("B")], host_upserts=[host("h.example.com", "A")])
    moved = host("h.example.com", "B", proven_at=50.0, checked_at=50.0)
    await store.commit(host_upserts=[moved], events=[Event("B", "claim", "ok", 50.0)])
    assert await store.load_hosts() == {"h.example.com": moved}
    assert await store.hosts_of("A") == [] and await store.hosts_of("B") == [moved]


async def test_host_released_and_claimed_in_one_commit(store):
    await store.commit(upserts=[rec("A"), rec("B")], host_upserts=[host("h.example.com", "A")])
    taken = host("h.example.com", "B", proven_at=60.0)
    await store.commit(host_deletes=["h.example.com"], host_upserts=[taken])
    assert await store.load_hosts() == {"h.example.com": taken}


async def test_forget_releases_hosts_and_challenge_of_that_guid_only(store):
    await store.commit(
        upserts=[rec("A"), rec("B")],
        host_upserts=[host("a1.example.com", "A"), host("a2.example.com", "A"),
                      host("b.example.com", "B")],
        challenge_upserts=[challenge("A"), challenge("B")],
    )  # fmt: skip
    # forget A and, in the same commit, give one of its hosts to B
    b_takes = host("a1.example.com", "B", proven_at=70.0)
    await store.commit(forgets=["A"], host_upserts=[b_takes])
    assert set(await store.load()) == {"B"}
    assert await store.load_hosts() == {
        "a1.example.com": b_takes, "b.example.com": host("b.example.com", "B"),
    }  # fmt: skip
    assert await store.load_challenges() == {"B": challenge("B")}
    assert await store.hosts_of("A") == [] and await store.challenge_of("A") is None


async def test_commit_rejects_claims_for_forgotten_guid(store):
    await store.commit(upserts=[rec("A")], host_upserts=[host("a.example.com", "A")])
    with pytest.raises(StoreError, match="host_upserts and forgets"):
        await store.commit(forgets=["A"], host_upserts=[host("z.example.com", "A")])
    with pytest.raises(StoreError, match="challenge_upserts and forgets"):
        await store.commit(forgets=["A"], challenge_upserts=[challenge("A")])
    assert set(await store.load()) == {"A"}
    assert set(await store.load_hosts()) == {"a.example.com"}


async def test_commit_atomic_when_host_write_fails(store):
    await store.commit(
        upserts=[rec("OLD"), rec("B")],
        host_upserts=[host("old.example.com", "OLD"), host("b.example.com", "B")],
        challenge_upserts=[challenge("OLD")],
        events=[Event("OLD", "a", "ok", 1.0)],
    )
    before = (await store.load(), await store.load_hosts(), await store.load_challenges(),
              await events_since(store))  # fmt: skip
    with pytest.raises(StoreError, match="(?i)not.null"):
        await store.commit(
            forgets=["OLD"],
            host_deletes=["b.example.com"],
            challenge_deletes=["B"],
            upserts=[rec("NEW", served=("n.example.com",))],
            host_upserts=[host("n.example.com", "NEW"), host("bad.example.com", "NEW",
                                                               registrable=None)],
            challenge_upserts=[challenge("NEW")],
            events=[Event("NEW", "request", "ok", 2.0)],
        )  # fmt: skip
    after = (await store.load(), await store.load_hosts(), await store.load_challenges(),
             await events_since(store))  # fmt: skip
    assert after == before


async def test_commit_atomic_when_challenge_write_fails(store):
    await store.commit(upserts=[rec("A")], host_upserts=[host("a.example.com", "A")])
    with pytest.raises(StoreError, match="(?i)not.null"):
        await store.commit(
            forgets=["A"],
            upserts=[rec("B")],
            host_upserts=[host("a.example.com", "B")],
            challenge_upserts=[challenge("B", token=None)],
        )
    assert set(await store.load()) == {"A"}
    assert await store.load_hosts() == {"a.example.com": host("a.example.com", "A")}
    assert await store.load_challenges() == {}


async def test_paged_loads_read_every_row_once(store, monkeypatch):
    """Hosts and sleepers are read a page at a time (store/reads.py): a page
    boundary loses and repeats nothing, whatever the keys' spelling."""
    monkeypatch.setattr("cdnreq.store.reads.PAGE", 3)
    names = [f"h{i}.example.com" for i in range(10)] + ["*.a.example.com", "é.example.com", "Z.example.com"]
    claims = [host(n, f"G{i % 4}") for i, n in enumerate(names)]
    guids = [f"G{i}" for i in range(7)] + ["g-é", "G 1", "G1 "]
    await store.commit(upserts=[rec(g) for g in guids], host_upserts=claims)
    await store.commit(asleep=[(g, f'["{g}", null, "R"]') for g in guids])
    assert await store.load_hosts() == {c.host: c for c in claims}
    pages = [page async for page in store.asleep_pages()]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert sorted(row[0] for page in pages for row in page) == sorted(guids)
    assert len(await store.load_asleep()) == len(guids)
    await store.commit(upserts=[rec(g) for g in guids])  # every mark cleared
    assert [page async for page in store.asleep_pages()] == []

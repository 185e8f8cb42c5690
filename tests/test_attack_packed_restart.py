"""Attacks on the packed sleepers, the paged restart, the host index's
one-host strings and the claims digest (commits 12af196..e63ffa5).

Each test asserts something the product promises: one instance's bad data
is that instance's error, never the load's or the tick's; a restart keeps
exactly the sleepers whose marks hold; a page boundary loses and repeats
nothing; the status counts stay right."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cdnreq.decide.actions import IdleCache
from cdnreq.decide.dormancy import (
    Dormant, _asleep_as_listed, from_store, mark, pack, phases, rest, serving_count, short, unpack,
)
from cdnreq.decide.gate import HostIndex
from cdnreq.decide.kept import claims_digest, claims_of
from cdnreq.model import HostClaim, InstanceGuid, Phase, RequestedState, SharedInstance
from cdnreq.store import Store
from tests.test_sleepers import settled
from tests.test_store import rec, store  # noqa: F401  (the fixture over both engines)
from tests.test_tick_stages import opened  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
H = "ab" * 32


def claim(host: str, guid: str = "A", registrable: str = "a.example", failing: float | None = None) -> HostClaim:
    return HostClaim(host, InstanceGuid(guid), registrable, 1.0, 2.0, failing)


def old_module(path: str) -> types.ModuleType:
    """The module as it was before today's changes (02883f8), with today's imports."""
    try:
        source = subprocess.run(["git", "show", f"02883f8:{path}"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the previous version cannot be read: {exc}")
    name = "old_" + path.replace("/", "_").removesuffix(".py")
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, path, "exec"), module.__dict__)
    return module


# --- the packed form -------------------------------------------------------


def test_a_packed_sleeper_round_trips_and_the_status_counts_match_the_unpacked_ones() -> None:
    rnd = random.Random(7)
    hosts = ("www.a.example", "*.é.example", "x" * 5000, "😀.example", "a\x00b", "")
    dormants = []
    for n in range(500):
        served = None if n % 7 == 0 else tuple(rnd.sample(hosts, rnd.randint(0, 3)))
        dormants.append(Dormant(short(f"{n:064x}"), rnd.choice(list(RequestedState)),
                                rnd.choice([float("inf"), 0.0, -1e308, 1e308, rnd.random() * 1e10]),
                                rnd.choice(list(Phase)), rnd.random() < 0.5, served))
    packed = [pack(d) for d in dormants]
    assert [unpack(p) for p in packed] == dormants
    assert phases(packed) == Counter(d.phase.value for d in dormants)
    assert serving_count(packed) == sum(1 for d in dormants if d.serving)


def test_short_is_always_128_bits() -> None:
    """short()'s docstring and the packed head's '16s' rely on 16 bytes: a
    shorter one is zero-padded in the head, and `packed.startswith(short(x))`
    with a short(x) of b'' matches every sleeper."""
    for value in ("", "ab", H, H.upper(), "zz" * 32, "é" * 40, "\ud800" * 40,
                  " " * 32, "ab " * 11, "ab\tcd\nef" + "0" * 30):
        assert len(short(value)) == 16, repr(value)


def test_a_listed_parameter_hash_is_always_a_full_sha256_so_128_bits_compare_safely() -> None:
    """The listing's hashes are cdnreq's own sha256 (model.SharedInstance.of):
    a master chooses parameters, not hashes, so comparing the first 128 bits
    cannot be steered to a collision."""
    hostile = [{}, {"url": "x" * 100000}, {"custom_domain": "\u0000"}, {"a": [1, 2.5, None, True]},
               {"k": {"nested": {"deep": "é😀"}}}]
    for parameters in hostile:
        instance = SharedInstance.of("G", parameters)
        assert re.fullmatch(r"[0-9a-f]{64}", instance.param_hash)
        assert short(instance.param_hash) == bytes.fromhex(instance.param_hash[:32])
    source = (ROOT / "cdnreq").rglob("*.py")
    makers = [p for p in source if "SharedInstance(" in p.read_text() and p.name != "model.py"]
    assert makers == [], "something builds a SharedInstance with a hash of its own"


def test_a_sleeper_sleeps_on_only_while_listed_with_its_hash_and_state_and_before_its_read_back() -> None:
    packed = pack(Dormant(short(H), RequestedState.STARTED, 100.0, Phase.LIVE, True, ("www.a.example",)))
    same = SharedInstance(InstanceGuid("A"), RequestedState.STARTED, {}, H)
    assert _asleep_as_listed(packed, same, 99.0)
    assert not _asleep_as_listed(packed, same, 100.0)  # read-back due
    stopped = SharedInstance(InstanceGuid("A"), RequestedState.STOPPED, {}, H)
    assert not _asleep_as_listed(packed, stopped, 0.0)
    for at in (0, 15, 31):  # a change anywhere in the first 128 bits
        other = H[:at] + ("0" if H[at] != "0" else "1") + H[at + 1:]
        assert not _asleep_as_listed(packed, SharedInstance(InstanceGuid("A"), RequestedState.STARTED, {}, other), 0.0)
    nan = pack(Dormant(short(H), RequestedState.STARTED, float("nan"), Phase.LIVE, True, None))
    assert not _asleep_as_listed(nan, same, 0.0)  # a NaN read-back is due, not never
    decided = rest([same], {"A": packed, "GONE": packed}, IdleCache(), {}, {}, (), 0.0, rules="R", same_rules=True)
    assert decided.wake == {"GONE"} and decided.sleep == {}
    decided = rest([stopped], {"A": packed}, IdleCache(), {}, {}, (), 0.0, rules="R", same_rules=True)
    assert decided.wake == {"A"}


# --- from_store: what a restart trusts --------------------------------------


def _good(index: HostIndex, **over: Any) -> tuple[Any, ...]:
    row = dict(guid="A", text=mark(H, 99.0, "R"), phase="live", state="started", entry=1,
               served='["www.a.example"]', param_hash=H, stamp="S", claims=claims_of(index, "A"), gate=1)
    row.update(over)
    return tuple(row.values())


def test_a_deeply_nested_served_column_wakes_its_instance_instead_of_failing_the_restart() -> None:
    """orjson reads up to 1024 levels; str() of a 1000-deep list raises
    RecursionError, which from_store does not catch: one hand-edited row
    stops the daemon from loading at all."""
    index = HostIndex([claim("www.a.example")])
    deep = "[" * 1010 + "]" * 1010
    rows = [_good(index, served=deep), _good(index, guid="B", claims=claims_of(index, "B"))]
    asleep, awake = from_store(rows, "S", "R", index)
    assert awake == ["A"] and list(asleep) == ["B"]


def test_a_served_host_that_is_not_a_string_wakes_its_instance() -> None:
    """from_store spells anything as a host with str(); the record reader
    (store/rows.to_record, sys.intern) refuses a non-string host, so such a
    sleeper is kept asleep at the restart and fails the tick that wakes it."""
    index = HostIndex([claim("www.a.example")])
    for served in ("[1]", "[null]", '[["www.a.example"]]', '[{"h": 1}]', '"www.a.example"', '{"www.b.example": 1}'):
        asleep, awake = from_store([_good(index, served=served)], "S", "R", index)
        assert asleep == {} and awake == ["A"], served


def test_a_read_back_time_that_is_not_a_number_or_null_wakes_its_instance() -> None:
    """mark() writes a float or null; a string goes through float(): "inf"
    keeps the sleeper asleep with no read-back at all, "nan" keeps it counted
    asleep in /status until the first tick."""
    index = HostIndex([claim("www.a.example")])
    for read_back in ('"inf"', '"nan"', '"1e999"', "true", '"99"'):
        text = f'["{H}", {read_back}, "R"]'
        asleep, awake = from_store([_good(index, text=text)], "S", "R", index)
        assert asleep == {} and awake == ["A"], read_back


def test_hostile_rows_wake_their_instance_and_never_raise() -> None:
    index = HostIndex([claim("www.a.example")])
    hostile = [
        dict(text=None), dict(text=7), dict(text=b"\xff\xfe"), dict(text='{"a": 1, "b": 2, "c": 3}'),
        dict(text=f'["{H}", 1e400, "R"]'), dict(text=f'["{H}", NaN, "R"]'), dict(text=f'["{H}", -Infinity, "R"]'),
        dict(text='["\\ud800", null, "R"]'), dict(text="[" * 2000 + "]" * 2000), dict(text="x" * 1_000_000),
        dict(text=f'["{H}", null, "R", 4]'), dict(text=f'["{H}", [1], "R"]'), dict(text=f'["{H}", {{}}, "R"]'),
        dict(served='["\\ud800.example"]'), dict(served="[" * 2000 + "]" * 2000), dict(served=7),
        dict(served="not json"), dict(phase=b"live"), dict(phase=None), dict(phase=1), dict(state="STARTED"),
        dict(state=None), dict(param_hash=None), dict(stamp=None), dict(claims=None), dict(gate=0), dict(gate=None),
        dict(guid=None), dict(guid=7), dict(guid=b"A"),
    ]
    for n, over in enumerate(hostile):
        row = _good(index, **over)
        asleep, awake = from_store([row], "S", "R", index)
        assert asleep == {} and awake == [row[0]], (n, over)


def test_a_mark_with_the_same_128_bits_but_another_hash_is_not_a_kept_decision() -> None:
    """The kept decision and the mark must spell the same whole hash; only
    then is the packed head cut to 128 bits."""
    index = HostIndex([claim("www.a.example")])
    other = H[:32] + "cd" * 16
    asleep, awake = from_store([_good(index, param_hash=other)], "S", "R", index)
    assert asleep == {} and awake == ["A"]
    asleep, awake = from_store([_good(index, text=mark(H.upper(), 99.0, "R"))], "S", "R", index)
    assert asleep == {} and awake == ["A"]


def test_from_store_keeps_asleep_what_the_previous_version_kept_for_marks_cdnreq_writes() -> None:
    old = old_module("cdnreq/decide/dormancy.py")
    rnd = random.Random(11)
    index = HostIndex([claim("www.a.example", "G0"), claim("b.a.example", "G1"), claim("c.a.example", "G1")])
    hosts = ["www.a.example", "é.example", "😀.example", "*.x.example", "a\x00b", "x" * 300, "\ud800.example"]
    rows = []
    for n in range(400):
        guid = f"G{n}"
        read_back = rnd.choice([float("inf"), 1e308, 0.1 + 0.2, 1e16, -5.0, float("nan")])
        served = rnd.choice([None, json.dumps(rnd.sample(hosts, rnd.randint(0, 3)))])
        rows.append((guid, mark(H, read_back, "R"), rnd.choice(list(Phase)).value,
                     rnd.choice(list(RequestedState)).value, rnd.choice([0, 1]), served, H, "S",
                     claims_of(index, guid), 1))
    new_asleep, new_awake = from_store(rows, "S", "R", index)
    old_asleep, old_awake = old.from_store(rows, "S", "R", index)
    gained = set(new_asleep) - set(old_asleep)
    assert not gained, f"kept asleep now, awake before: {sorted(gained)[:5]}"
    for guid, packed in new_asleep.items():
        d, o = unpack(packed), old_asleep[guid]
        assert (d.state, d.phase, d.serving, d.served, d.read_back_at) == (o.state, o.phase, o.serving, o.served,
                                                                             o.read_back_at), guid
    lost = set(old_asleep) - set(new_asleep)
    for guid in lost:  # woken now: only what the packed form cannot hold (a NaN time, a lone surrogate)
        o = old_asleep[guid]
        assert o.read_back_at != o.read_back_at or any("\ud800" in h for h in o.served or ()), guid


# --- the host index ---------------------------------------------------------


def test_the_host_index_answers_as_a_plain_model_through_random_changes() -> None:
    rnd = random.Random(3)
    hosts = [f"h{i}.{d}" for i in range(12) for d in ("a.example", "b.example")] + ["a", "ab", "*.a.example"]
    guids = ["A", "B", "C", "AB", ""]
    index = HostIndex()
    owner: dict[str, HostClaim] = {}
    order: dict[str, list[str]] = {}
    for _ in range(3000):
        host = rnd.choice(hosts)
        if rnd.random() < 0.6:
            c = claim(host, rnd.choice(guids), host.split(".", 1)[-1])
            if host in owner:
                order[owner[host].guid].remove(host)
            owner[host] = c
            order.setdefault(c.guid, []).append(host)
            index.put(c)
        elif rnd.random() < 0.8:
            if host in owner:
                order[owner.pop(host).guid].remove(host)
            index.drop(host)
        else:
            g = rnd.choice(guids)
            for h in order.get(g, []):
                owner.pop(h)
            order[g] = []
            index.drop_guid(g)
        assert index.by_host == owner
        for g in guids:
            assert index.owned(g) == tuple(order.get(g, [])), g
            assert index.hosts_of(g) == set(order.get(g, []))
            assert claims_of(index, g) == claims_digest([owner[h] for h in order.get(g, [])])
        for r in {c.registrable for c in owner.values()} | {"a.example", "b.example", "zz"}:
            assert sorted(index.in_domain(r)) == sorted(h for h, c in owner.items() if c.registrable == r)
        active = set(rnd.sample(guids, 2))
        assert sorted(index.owned_by_others(active)) == sorted(h for h, c in owner.items() if c.guid not in active)


def test_an_owner_of_many_hosts_dropping_to_one_keeps_that_host_whole() -> None:
    many = [claim(f"h{i}.a.example") for i in range(5)]
    index = HostIndex(many)
    for c in many[1:]:
        index.drop(c.host)
    assert index.owned("A") == ("h0.a.example",) and index.in_domain("a.example") == ("h0.a.example",)
    assert claims_of(index, "A") == claims_digest([many[0]])
    rival = claim("h0.a.example", "B")  # the one host passes to another owner
    index.put(rival)
    assert index.owned("A") == () and index.owned("B") == ("h0.a.example",)
    assert [c.guid for c in index.rivals("h0.a.example", "a.example", "A")] == ["B"]
    index.put(claim("x", "B", "x"))  # a one-letter host is not mistaken for a held tuple
    index.put(claim("y", "B", "x"))
    index.drop("y")
    assert index.owned("B") == ("h0.a.example", "x") and index.in_domain("x") == ("x",)


def test_the_claims_digest_keeps_the_previous_spelling() -> None:
    old = old_module("cdnreq/decide/kept.py")
    rnd = random.Random(5)
    values = [1.0, 2.5, 1e308, -0.0, 0.0, float("inf"), None, 10**20]
    for n in range(300):
        claims = [HostClaim(f"{rnd.choice(['h', 'é', '😀', chr(0xD800), '*.'])}{i}.example", InstanceGuid(f"G{n % 3}"),
                            rnd.choice(["example", "é"]), rnd.choice(values[:6]), rnd.choice(values[:6]),
                            rnd.choice(values)) for i in range(rnd.randint(0, 3))]
        assert claims_digest(claims) == old.claims_digest(claims)
        assert claims_digest(iter(claims)) == old.claims_digest(iter(claims))


# --- the paged reads ----------------------------------------------------------


async def _unpaged(store, sql: str) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    return sorted((tuple(r) for r in await store._all(sql)), key=lambda r: r[0])


@pytest.mark.parametrize("page", [1, 2, 3, 5])
async def test_paged_reads_give_every_row_once_whatever_the_keys(store, monkeypatch, page) -> None:  # noqa: F811
    from cdnreq.store.rows import SELECT, SELECT_ASLEEP, SELECT_HOSTS

    monkeypatch.setattr("cdnreq.store.reads.PAGE", page)
    guids = ["A", "a", "A ", "A-", "A\t", "Ab", "AB", "é", "e\u0301", "😀", "Ａ", "0", "00", "x" * 3000, "G" * 10]
    hosts = [claim(f"{g.encode('utf-8').hex()[:40]}.a.example", g) for g in guids] + [claim("*.a.example", "A")]
    await store.commit(upserts=[rec(g, title=f"t-{n}") for n, g in enumerate(guids)], host_upserts=hosts)
    asleep = guids[::2]
    await store.commit(asleep=[(g, mark(H, 5.0, "R")) for g in asleep])
    rows = [row async for p in store.asleep_pages() for row in p]
    assert sorted(r[0] for r in rows) == sorted(asleep)  # each once
    assert sorted(rows, key=lambda r: r[0]) == await _unpaged(store, SELECT_ASLEEP)
    assert set(await store.load()) == set(guids)
    assert set(await store.load(awake_only=True)) == set(guids) - set(asleep)
    assert await store.load_hosts() == {c.host: c for c in hosts}
    assert len(await _unpaged(store, SELECT)) == len(guids) and len(await _unpaged(store, SELECT_HOSTS)) == len(hosts)


async def test_a_page_ending_on_a_null_key_in_a_hand_edited_sqlite_store_neither_loops_nor_hides_sleepers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite lets a non-INTEGER primary key hold NULLs (any number of
    them), and sorts them first. A page whose last key is NULL sets
    `after = None`, which _pages takes for "first page": it reads the same
    page again, forever (restore() then grows `awake` without end). The
    previous whole read gave every row once (from_store woke the NULL rows).
    In production it takes PAGE (5,000) such rows."""
    monkeypatch.setattr("cdnreq.store.reads.PAGE", 2)
    async with await Store.open(tmp_path / "s.db") as s:
        guids = ["A", "B", "C"]
        await s.commit(upserts=[rec(g) for g in guids])
        await s.commit(asleep=[(g, mark(H, 5.0, "R")) for g in guids])
        for n in range(2):
            await s._conn.execute(  # type: ignore[attr-defined]
                "INSERT INTO instances (guid, title, phase, created_at, updated_at, sleep) VALUES (NULL, ?, 'new', 1, 2, ?)",
                (f"null-{n}", mark(H, 5.0, "R")),
            )
        await s._conn.commit()  # type: ignore[attr-defined]
        rows: list[Any] = []
        async for page in s.asleep_pages():
            rows += page
            assert len(rows) <= 5, "the same page again: the keyset read does not end"
        assert sorted(r[0] for r in rows if r[0] is not None) == guids


# --- a whole restart ------------------------------------------------------------


async def test_a_restart_one_row_a_page_keeps_exactly_the_same_sleepers_and_counts(
    tmp_path: Path, opened: list[Store], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    r, master, dns, clock = await settled(tmp_path, opened)
    before = (set(r.sleepers), r.snapshot().phases, r.sleepers.serving())
    monkeypatch.setattr("cdnreq.store.reads.PAGE", 1)
    await r.load()
    assert (set(r.sleepers), r.snapshot().phases, r.sleepers.serving()) == before
    assert set(r.known) == {"B"}  # type: ignore[arg-type]
    report = await r.tick()
    assert report.ok, report.error
    assert set(r.sleepers) == before[0]


@pytest.mark.parametrize("served", ["[" * 1010 + "]" * 1010, "[1]"], ids=["deep", "number"])
async def test_a_sleeper_with_a_hand_edited_served_column_is_its_own_error_at_a_restart(
    tmp_path: Path, opened: list[Store], served: str  # noqa: F811
) -> None:
    """PLAIN's served hosts edited to something the record reader refuses:
    the restart and the tick that wakes PLAIN go on (A stays asleep, B is
    planned); PLAIN alone is in error."""
    r, master, dns, clock = await settled(tmp_path, opened)
    await r.store._conn.execute("UPDATE instances SET served = ? WHERE guid = 'PLAIN'", (served,))  # type: ignore[attr-defined]
    await r.store._conn.commit()  # type: ignore[attr-defined]
    try:
        await r.load()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the restart failed: {exc!r}")
    assert "A" in r.sleepers
    master.instances = tuple(i if i.guid != "PLAIN" else SharedInstance.of("PLAIN", {"url": "https://p2.example"})
                             for i in master.instances)
    for _ in range(2):
        report = await r.tick()  # PLAIN wakes: its record is read
        assert report.ok, report.error
        clock.now += 1
    # PLAIN was planned from what was readable: its change went out and its
    # record is whole again
    record = await r.store.get("PLAIN")
    assert record is not None and record.served is not None and all(isinstance(h, str) for h in record.served)
    assert record.param_hash == SharedInstance.of("PLAIN", {"url": "https://p2.example"}).param_hash


def _stored_row(**changes: Any) -> tuple[Any, ...]:
    from cdnreq.model import Phase, Record, Title
    from cdnreq.store.rows import COLUMNS, to_row

    record = Record(InstanceGuid("ROW"), Title("cdnreq-ROW"), Phase.LIVE, 1.0, 1.0, param_hash="h",
                    served=("www.row.example",))
    row = list(to_row(record))
    row.insert(10, None)  # published, written apart
    names = COLUMNS.split(", ")
    for column, value in changes.items():
        row[names.index(column)] = value
    return tuple(row)


def test_an_unreadable_json_column_is_read_as_unknown_and_the_rest_of_the_row_kept() -> None:
    from cdnreq.store.rows import to_records

    records = to_records([_stored_row(served="[1]", published="{"), _stored_row(guid="OTHER")])
    assert records["ROW"].served is None and records["ROW"].published is None
    assert records["ROW"].phase.value == "live" and records["ROW"].param_hash == "h"
    assert records["OTHER"].served == ("www.row.example",)


def test_an_unreadable_phase_fails_the_read_naming_the_instance() -> None:
    from cdnreq.store import StoreError
    from cdnreq.store.rows import to_records

    with pytest.raises(StoreError, match="'ROW'.*KeyError.*dancing"):
        to_records([_stored_row(phase="dancing")])

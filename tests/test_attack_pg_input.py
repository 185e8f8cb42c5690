"""Attacks on the PostgreSQL store through what a customer or the master can
put in a listing: text PostgreSQL refuses or changes (a NUL) where SQLite
takes it as it is. One instance's bad data must stay that instance's error,
and no customer may be requested under two titles, destroyed, or mistaken
for another.

`cdnreq once` runs as a subprocess against the master double (bench/double)
served from a thread of this process, with `[store].url` a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.double import Double
from cdnreq.decide.titles import technical_title
from test_faults_hostile import HOSTILE, ODD_GUIDS, PREFIX, ThreadedDouble, write_config

pytestmark = [pytest.mark.postgres]

CDNREQ = [sys.executable, "-m", "cdnreq.cli"]
GOOD = {f"SOFTINST-good-{n}": {"url": f"https://good-{n}.example"} for n in range(3)}


def once(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)


def pg_config(tmp_path: Path, served: ThreadedDouble, pg_url: str) -> Path:
    return write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db",
                        store={"url": pg_url, "sslmode": "disable", "node_name": "attacker-once"})


def tick_summary(result: subprocess.CompletedProcess) -> dict[str, Any]:
    return next(json.loads(line) for line in result.stderr.splitlines() if '"tick done"' in line)


def state_of(served: ThreadedDouble, double: Double) -> tuple[dict, dict, dict, dict]:
    return served.run(lambda: (dict(double.technical), dict(double.published), dict(double.destroyed),
                               dict(double.calls)))


async def stored_guids(pg_url: str) -> list[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        return [r[0] for r in await conn.fetch("SELECT guid FROM instances ORDER BY guid")]
    finally:
        await conn.close()


NUL_GUID = "SOFTINST-nul\x00guid"


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_guid_holding_a_nul_is_anonymous_on_both_engines(tmp_path: Path, request, engine: str) -> None:
    """A guid with a NUL (a master's fault: PostgreSQL's text cannot hold
    one, and a guid is a key) counts as an anonymous entry on both engines:
    never requested nor told, never destroyed (even with retention_s = 0),
    and removals are held while it is listed; the good customers beside it
    are served, every tick exits 0, and the customer spelled with the six
    characters `\\u0000` instead is a customer of its own."""
    escaped = NUL_GUID.replace("\x00", "\\u0000")
    double = Double(publish_after="immediately")
    for guid, params in {**GOOD, NUL_GUID: {"url": "https://nul.example"},
                         escaped: {"url": "https://escaped.example"}}.items():
        double.add(guid, params)
    store = {} if engine == "sqlite" else {"url": request.getfixturevalue("pg_url"), "sslmode": "disable"}
    with ThreadedDouble(double) as served:
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db",
                              store=store, domain={"retention_s": 0})
        runs = [once(config) for _ in range(3)]
        technical, published, destroyed, calls = state_of(served, double)
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    assert destroyed == {}, destroyed
    assert technical_title(PREFIX, NUL_GUID) not in technical and NUL_GUID not in published
    assert technical[technical_title(PREFIX, escaped)]["parameters"] == {"url": "https://escaped.example"}
    for guid in {**GOOD, escaped: 0}:
        assert published.get(guid, {}).get("domain"), (guid, published.get(guid))
    assert calls["slapos.post.v0.software_instance"] == len(GOOD) + 1, calls  # each once, over three ticks
    if engine == "postgresql":
        import asyncio

        assert asyncio.run(stored_guids(store["url"])) == sorted([*GOOD, escaped])


async def test_reading_an_instance_by_a_guid_holding_a_nul_finds_none(pg_url: str) -> None:
    """/instances/{guid} decodes %00: asked for a guid with a NUL, the
    PostgreSQL engine answers that it knows none (404), not an error, and
    does not hand out the customer spelled `\\u0000` instead."""
    from cdnreq.model import InstanceGuid, Phase, Record, Title
    from cdnreq.store.postgres import PgStore
    from cdnreq.store.url import parse_store_url

    store = await PgStore.open(parse_store_url(pg_url), holder="attacker", lease_s=15.0)
    try:
        escaped = NUL_GUID.replace("\x00", "\\u0000")
        await store.commit(upserts=[Record(guid=InstanceGuid(escaped), title=Title("cdnreq-escaped"),
                                           phase=Phase.NEW, created_at=1.0, updated_at=2.0)])
        assert await store.get(NUL_GUID) is None
        assert await store.events_for(NUL_GUID) == [] and await store.hosts_of(NUL_GUID) == []
        assert (await store.get(escaped)).guid == escaped
    finally:
        await store.close()


def test_hostile_and_odd_customers_next_to_good_ones_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """test_faults_hostile's hostile and odd customers (NULs and control
    characters in parameters and guids, 1 MB values, nesting) on the
    PostgreSQL store: every tick exits 0, the good and odd ones are served,
    the hostile ones are told why, the second tick requests nothing."""
    double = Double(publish_after="immediately")
    for guid, params in {**GOOD, **HOSTILE, **ODD_GUIDS}.items():
        double.add(guid, params)
    with ThreadedDouble(double) as served:
        config = pg_config(tmp_path, served, pg_url)
        first, second = once(config), once(config)
        technical, published, destroyed, calls = state_of(served, double)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    for guid in {**GOOD, **ODD_GUIDS}:
        assert technical_title(PREFIX, guid) in technical, guid
        assert published[guid].get("domain"), guid
    for guid in HOSTILE:
        assert json.loads(published[guid]["request-error-list"]), guid
    assert destroyed == {}
    planned = tick_summary(second)["planned"]
    assert "request" not in planned and "update" not in planned, planned
    assert calls["slapos.post.v0.software_instance"] == len(GOOD) + len(ODD_GUIDS)

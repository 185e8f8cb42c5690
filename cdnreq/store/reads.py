"""The store's reads, written once for both engines: each is a statement of
cdnreq.store.rows run through the engine's `_all` (and `_some` for a set of
guids), its rows turned into models. Building 100,000 Records takes a good
part of a second, so the big loads convert in a thread and the event loop
keeps answering."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, AsyncIterator, Iterable

from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceGuid, Record
from cdnreq.store.feedgaps import FEED_RESTORED, gaps_of
from cdnreq.store.imports import findings_of, last_import
from cdnreq.store.rows import (
    CHANGE_COLUMNS, EVENT_COLUMNS, SELECT, SELECT_ASLEEP, SELECT_AWAKE, SELECT_CHALLENGES, SELECT_DECISIONS,
    SELECT_HOSTS, SELECT_UNNAMED, load_json, to_challenges, to_event, to_hosts, to_records,
)

PAGE = 5000  # rows a paged load reads at a time
AWAKE = " WHERE guid NOT IN (SELECT guid FROM instances WHERE sleep IS NOT NULL)"


class SqlReads:
    """TickStore's and InstanceReads' reads over an engine's `_all` and `_some`."""

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def _some(self, select: str, guids: Iterable[str]) -> list[Any]:
        """`select` for the rows of `guids` (the engine bounds how many a statement names)."""
        raise NotImplementedError

    async def load(self, *, awake_only: bool = False) -> dict[InstanceGuid, Record]:
        """Every instance (or those not asleep), read a page at a time."""
        records: dict[InstanceGuid, Record] = {}
        async for page in self._pages(SELECT_AWAKE if awake_only else SELECT, "guid"):
            records.update(await self._records(page))
        return records

    async def _records(self, rows: list[Any]) -> dict[InstanceGuid, Record]:
        """Rows as records (in a thread); a record whose served hosts could
        not be read (rows.to_records) serves, as far as cdnreq knows, every
        host it claims."""
        unserved: list[InstanceGuid] = []
        records = await asyncio.to_thread(to_records, rows, unserved)
        for guid in unserved:
            claimed = tuple(sorted(claim.host for claim in await self.hosts_of(guid)))
            records[guid] = replace(records[guid], served=claimed)
        return records

    async def _pages(self, select: str, key: str) -> AsyncIterator[list[tuple[Any, ...]]]:
        """`select` (ending in a WHERE clause, or none) a page of PAGE rows
        at a time, in `key` order. A restart reads 100,000 rows: whole, their
        temporary objects took some 60 MB and left the long-lived ones
        scattered among them, memory the process then kept."""
        joiner = " AND " if " WHERE " in select else " WHERE "
        size, after, first = PAGE, None, True
        while True:  # a NULL key (a hand-edited SQLite file) names no row cdnreq can address: not read
            where = f"{joiner}{key} IS NOT NULL" + ("" if first else f" AND {key} > ?")
            params = (size,) if first else (after, size)
            rows = await self._all(f"{select}{where} ORDER BY {key} LIMIT ?", params)
            if rows:
                yield [tuple(r) for r in rows]
            if len(rows) < size or rows[-1][0] == after:
                return
            after, first = rows[-1][0], False

    def asleep_pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The instances asleep, with their marks and kept decisions (decide/dormancy.from_store), a page at a time."""
        return self._pages(SELECT_ASLEEP, "i.guid")

    async def load_asleep(self) -> list[tuple[Any, ...]]:
        return [row async for page in self.asleep_pages() for row in page]

    async def load_hosts(self) -> dict[str, HostClaim]:
        claims: dict[str, HostClaim] = {}
        async for page in self._pages(SELECT_HOSTS, "host"):
            claims.update(to_hosts(page))
        return claims

    async def load_challenges(self, *, awake_only: bool = False) -> dict[InstanceGuid, Challenge]:
        rows = await self._all(SELECT_CHALLENGES + (AWAKE if awake_only else ""))
        return await asyncio.to_thread(to_challenges, rows)

    async def load_decisions(self, *, awake_only: bool = False) -> list[Decision]:
        """The domain step's kept verdicts and settled gates (cdnreq/decide/kept.py
        decides which still hold), of every instance or of those not asleep."""
        rows = await self._all(SELECT_DECISIONS + (AWAKE if awake_only else ""))
        return await asyncio.to_thread(lambda: [Decision(*row) for row in rows])

    async def records_of(self, guids: Iterable[str]) -> dict[InstanceGuid, Record]:
        """The records of `guids` that exist (a Reconciler waking sleeping instances)."""
        return await self._records(await self._some(SELECT, guids))

    async def challenges_of(self, guids: Iterable[str]) -> dict[InstanceGuid, Challenge]:
        return to_challenges(await self._some(SELECT_CHALLENGES, guids))

    async def load_guards(self) -> dict[str, Any]:
        """The guards' state by name (cdnreq/decide/guards.py)."""
        return {name: load_json(value) for name, value in await self._all("SELECT name, value FROM guards")}

    async def get(self, guid: str) -> Record | None:
        rows = await self._all(SELECT + " WHERE guid = ?", (guid,))
        return next(iter((await self._records(rows)).values()), None)

    async def published_of(self, guid: str) -> dict[str, Any] | None:
        """What the customer was last shown (Records keep only its digest)."""
        rows = await self._all("SELECT published FROM instances WHERE guid = ?", (guid,))
        return load_json(rows[0][0]) if rows and rows[0][0] is not None else None

    async def hosts_of(self, guid: str) -> list[HostClaim]:
        """The hosts `guid` holds, sorted by host."""
        rows = await self._all(SELECT_HOSTS + " WHERE guid = ? ORDER BY host", (guid,))
        return [HostClaim(*row) for row in rows]

    async def challenge_of(self, guid: str) -> Challenge | None:
        rows = await self._all(SELECT_CHALLENGES + " WHERE guid = ?", (guid,))
        return Challenge(*rows[0]) if rows else None

    async def events_for(self, guid: str, limit: int = 50) -> list[tuple[int, Event]]:
        """The instance's latest events, newest first."""
        rows = await self._all(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE instance_guid = ? ORDER BY id DESC LIMIT ?", (guid, limit)
        )
        return [to_event(r) for r in rows]

    async def changes_after(self, after: int, limit: int, *, kinds: Iterable[str] = (), guids: Iterable[str] = (),
                            prefixes: Iterable[str] = (), titles: Iterable[str] = (),
                            only: Iterable[str] = ()) -> list[tuple[int, float, str, str, str, str | None]]:
        """The change feed after id `after`, in id order, at most `limit` rows
        (id, at, instance guid, kind, payload JSON, customer's title); only
        `kinds` when given; only the instances of `guids`, or whose guid
        starts with one of `prefixes`, or whose title with one of `titles`,
        when any is given (a scope); and of those, only the instances of
        `only` when given."""
        where, params = ["id > ?"], [after]
        kinds, guids, only = sorted(set(kinds)), sorted(set(guids)), sorted(set(only))
        prefixes, titles = sorted(set(prefixes)), sorted(set(titles))
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
        whose = [f"instance_guid IN ({', '.join('?' * len(guids))})"] if guids else []
        whose += ["substr(instance_guid, 1, ?) = ?"] * len(prefixes) + ["substr(name, 1, ?) = ?"] * len(titles)
        params.extend([*guids, *(v for p in (*prefixes, *titles) for v in (len(p), p))])
        if whose:
            where.append(f"({' OR '.join(whose)})")
        if only:
            where.append(f"instance_guid IN ({', '.join('?' * len(only))})")
            params.extend(only)
        rows = await self._all(f"SELECT {CHANGE_COLUMNS} FROM changes WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                               (*params, limit))
        return [tuple(r) for r in rows]

    async def unnamed(self) -> list[str]:
        """Instances stored without their customer's title (stored before titles were kept)."""
        return [r[0] for r in await self._all(SELECT_UNNAMED)]

    async def feed_bounds(self) -> tuple[int | None, int]:
        """(the oldest change still kept, or None; the last id ever given)."""
        rows = await self._all("SELECT (SELECT MIN(id) FROM changes), last_id FROM feed_state WHERE id = 1")
        return (rows[0][0], rows[0][1]) if rows else (None, 0)

    async def feed_gaps(self) -> tuple[tuple[int, int], ...]:
        """The ids restores skipped (cdnreq.store.feedgaps): (after, through] each."""
        rows = await self._all("SELECT value FROM guards WHERE name = ?", (FEED_RESTORED,))
        return gaps_of(load_json(rows[0][0])) if rows else ()

    async def last_ticks(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT id, started_at, finished_at, result, summary FROM ticks ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [{"id": i, "started_at": s, "finished_at": f, "result": r,
                 "summary": None if j is None else json.loads(j)} for i, s, f, r, j in rows]  # fmt: skip

    async def is_empty(self) -> bool:
        """Nothing worth keeping: no instance, no proven host, no challenge
        (ticks do not count). What a freshly created database looks like."""
        rows = await self._all(
            "SELECT EXISTS (SELECT 1 FROM instances) OR EXISTS (SELECT 1 FROM hosts) "
            "OR EXISTS (SELECT 1 FROM challenges)"
        )
        return not rows[0][0]

    async def import_findings(self, guid: str) -> list[dict[str, Any]]:
        """What the last `import-legacy` found about the instance (cdnreq.store.imports)."""
        return await findings_of(self, guid)

    async def last_import(self) -> dict[str, Any] | None:
        """The last `import-legacy` run and its findings (cdnreq.store.imports)."""
        return await last_import(self)

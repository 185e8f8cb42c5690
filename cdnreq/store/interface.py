"""What cdnreq asks of a store, whatever engine holds it.

The tick, the planner's shells, the service and the commands are written
against these protocols, never against an engine: cdnreq.store.sqlite.Store
implements all of them, cdnreq.reconcile.dry.DryStore (`cdnreq plan`) the
tick's part, and a second engine (two nodes on PostgreSQL) must implement
them with the same meaning. tests/test_store_interface.py checks that both
conform and that nothing outside the store package names an engine but the
places that open one.

The contract, beyond the signatures:
- `commit` is the one write of a tick's outcomes: every argument in one
  transaction, or nothing (StoreError, and nothing written); it runs to its
  end even when its caller is cancelled. Its order of steps is
  cdnreq.store.commit.commit_steps.
- The `load*` reads are taken once, when a Reconciler starts or reloads;
  then the tick keeps what it loaded and what it committed, except for the
  instances it put to sleep (reconcile/sleepers.py), whose records and
  challenges it reads back with `records_of` and `challenges_of` when they
  wake. A reader never sees half a commit.
- `lost()` says, without I/O, that the store a daemon locked is no longer
  the one it writes (begin_tick then raises StoreLost): a tick never writes
  into a store nobody will read.
- Every failure of the engine is a StoreError naming the store.
"""

from __future__ import annotations

import os
from pathlib import Path
import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Mapping, Protocol, runtime_checkable

from cdnreq.decide.changes import ChangeEvent
from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceGuid, Record
from cdnreq.store.prune import PruneReport

if TYPE_CHECKING:
    from cdnreq.metrics import Metrics


@runtime_checkable
class TickStore(Protocol):
    """What a Reconciler reads when it (re)loads and writes each tick."""

    @property
    def path(self) -> Path: ...

    async def load(self, *, awake_only: bool = False) -> dict[InstanceGuid, Record]:
        """Every instance's record, by guid (or of those not asleep)."""

    def asleep_pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The instances asleep: rows of decide/dormancy.from_store(), a page at a time."""

    async def load_hosts(self) -> dict[str, HostClaim]:
        """Every host claim, by host."""

    async def load_challenges(self, *, awake_only: bool = False) -> dict[InstanceGuid, Challenge]:
        """Every outstanding DNS challenge, by instance (or of those not asleep)."""

    async def records_of(self, guids: Iterable[str]) -> dict[InstanceGuid, Record]:
        """The records of those of `guids` that exist (instances woken from sleep)."""

    async def challenges_of(self, guids: Iterable[str]) -> dict[InstanceGuid, Challenge]:
        """The outstanding challenges of `guids`."""

    async def load_decisions(self, *, awake_only: bool = False) -> list[Decision]:
        """The domain step's kept decisions (decide/kept.py says which hold),
        of every instance or of those not asleep."""

    async def unnamed(self) -> list[str]:
        """Instances stored without their customer's title (cdnreq.decide.names)."""

    async def load_guards(self) -> dict[str, Any]:
        """The guards' state by name (decide/guards.py)."""

    async def save_guards(self, values: Mapping[str, Any], now: float) -> None:
        """Write the named guard states at once; None deletes one."""

    async def clear_guard(self, name: str, value: Any) -> None:
        """Delete a guard state only while it still holds `value`."""

    async def commit(
        self,
        *,
        upserts: Iterable[Record] = (),
        forgets: Iterable[str] = (),
        events: Iterable[Event] = (),
        host_upserts: Iterable[HostClaim] = (),
        host_deletes: Iterable[str] = (),
        challenge_upserts: Iterable[Challenge] = (),
        challenge_deletes: Iterable[str] = (),
        decisions: Iterable[Decision] = (),
        shown: Mapping[str, Mapping[str, Any] | None] | None = None,
        asleep: Iterable[tuple[str, str]] = (),
        changes: Iterable[ChangeEvent] = (),
        names: Iterable[tuple[str, str]] = (),
    ) -> None:
        """The tick's outcomes, in one transaction or not at all. `asleep`:
        (guid, mark) of instances fallen asleep; any upsert of a record
        clears its mark. `changes`: the change feed's rows for what this
        transaction changes (decide/changes.py), numbered in it. `names`:
        (guid, customer's title) to keep, where none is kept yet. `shown`:
        what each customer was shown, by guid; None: nothing any more."""

    async def begin_tick(self, started_at: float) -> int:
        """A new tick's id; StoreLost when the store is no longer the one locked."""

    async def end_tick(self, tick_id: int, *, finished_at: float, result: str, summary: Mapping[str, Any]) -> None:
        """The tick's end, its result and its summary."""

    def lost(self) -> str | None:
        """Why the store is no longer the one opened; None while it is."""

    async def close(self) -> None: ...


@runtime_checkable
class InstanceReads(Protocol):
    """What is read on demand, one instance at a time (the status endpoint,
    `cdnreq explain`, the operator's actions)."""

    async def get(self, guid: str) -> Record | None: ...

    async def published_of(self, guid: str) -> dict[str, Any] | None:
        """What the customer was last shown (a Record keeps its digest only)."""

    async def hosts_of(self, guid: str) -> list[HostClaim]:
        """The hosts `guid` holds, sorted by host."""

    async def challenge_of(self, guid: str) -> Challenge | None: ...

    async def events_for(self, guid: str, limit: int = 50) -> list[tuple[int, Event]]:
        """The instance's latest events, newest first, with their ids."""

    async def last_ticks(self, limit: int = 10) -> list[dict[str, Any]]:
        """The latest ticks, newest first."""

    async def changes_after(self, after: int, limit: int, *, kinds: Iterable[str] = (), guids: Iterable[str] = (),
                            prefixes: Iterable[str] = (), titles: Iterable[str] = (),
                            only: Iterable[str] = ()) -> list[tuple[int, float, str, str, str, str | None]]:
        """The change feed after id `after` in id order (id, at, guid, kind,
        payload JSON, customer's title), filtered (cdnreq.store.reads)."""

    async def feed_bounds(self) -> tuple[int | None, int]:
        """The oldest change kept (None: none) and the last id ever given."""

    async def feed_gaps(self) -> tuple[tuple[int, int], ...]:
        """The ids restores skipped, (after, through] each: a cursor there was given by a lost store."""

    async def import_findings(self, guid: str) -> list[dict[str, Any]]:
        """What the last `import-legacy` found about the instance."""

    async def last_import(self) -> dict[str, Any] | None:
        """The last `import-legacy` run and its findings."""


@runtime_checkable
class Engine(TickStore, InstanceReads, Protocol):
    """A whole store: the tick's part, the reads on demand, and what the
    service does around ticks (start-up, size, backups)."""

    schema_version: int  # the schema's version when opened (0: an empty database, not created yet)

    async def is_empty(self) -> bool:
        """Nothing worth keeping: no instance, no claim, no challenge."""

    async def end_unfinished_ticks(self, now: float, error: str) -> list[int]:
        """Ticks begun and never ended, ended now as interrupted; their ids."""

    def size_bytes(self) -> int:
        """What the store takes on disk, in bytes."""

    async def backup(self, dest: str | os.PathLike[str], *, now: float | None = None) -> Path:
        """A consistent copy of the store in the directory `dest`; its path."""

    async def prune_if_due(self, days: int, now: float) -> PruneReport | None:
        """Drop the history older than `days`, unless that was done within the hour."""

    async def prune_passes(
        self, days: Callable[[], int], stop: asyncio.Event, *, metrics: Metrics | None = None
    ) -> None:
        """The daemon's background pruning, until `stop` is set."""

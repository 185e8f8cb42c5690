"""The stand-ins that let a real tick run without touching anything.

`cdnreq plan` runs the daemon's own tick (cdnreq/reconcile/tick.py) with
these in place of the master, the store and the executor, so the plan it
shows comes from the same rules as the tick that follows. What they must
never do: send a write to the master, write the database, or create a file.
"""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping

from cdnreq.dns import challenge
from cdnreq.decide.changes import ChangeEvent
from cdnreq.model import Listing
from cdnreq.master import MasterClient, MasterError
from cdnreq.model import Challenge, Decision, Event, HostClaim, InstanceAnswer, InstanceGuid, Record
from cdnreq.reconcile.execute import Feed
from cdnreq.decide.plan import Action
from cdnreq.store import Engine


class WriteRefused(MasterError):
    """A dry run asked the master to change something: a bug, never sent."""


class ReadOnlyMaster:
    """The master for a dry run: lists and reads; every write is refused
    before anything is sent (`calls` counts only what was sent)."""

    def __init__(self, client: MasterClient):
        self.client = client
        self.refused: Counter[str] = Counter()

    @property
    def calls(self) -> Counter:
        return self.client.calls

    @property
    def in_flight(self) -> int:
        return self.client.in_flight

    async def list_hosted(self, instance_guid: str) -> Listing:
        return await self.client.list_hosted(instance_guid)

    async def get_instance(self, instance_guid: str) -> InstanceAnswer:
        return await self.client.get_instance(instance_guid)

    def _refuse(self, call: str) -> WriteRefused:
        self.refused[call] += 1
        return WriteRefused(call, "a dry run sends no write to the master")

    async def request_instance(self, **_: Any) -> InstanceAnswer:
        raise self._refuse("request_instance")

    async def publish_connection(self, instance_guid: str, parameters: Mapping[str, Any]) -> None:
        raise self._refuse("publish_connection")

    async def publish_error(self, instance_guid: str, message: str) -> None:
        raise self._refuse("publish_error")

    async def close(self) -> None:
        await self.client.close()


class DryStore:
    """A read-only snapshot of the store (Store.open_snapshot) that keeps
    the writes a tick would make, instead of making them."""

    def __init__(self, snapshot: Engine):
        self.snapshot = snapshot
        self.upserts: dict[InstanceGuid, Record] = {}
        self.forgets: list[str] = []
        self.events: list[Event] = []
        self.changes: list[ChangeEvent] = []  # the change feed's rows it would write
        self.host_upserts: dict[str, HostClaim] = {}
        self.host_deletes: set[str] = set()
        self.challenges: list[Challenge] = []
        self.challenge_deletes: set[str] = set()
        self.decisions: list[Decision] = []
        self.guards: dict[str, Any] = {}
        self.writes: Counter[str] = Counter()  # calls that would have written, by method
        self.tick_id = 0

    @property
    def path(self) -> Path:
        return self.snapshot.path

    async def load(self, *, awake_only: bool = False) -> dict[InstanceGuid, Record]:
        """The records, as a restarted daemon reads them: the instances
        asleep in the store start asleep (reconcile/sleepers.py), woken as
        the daemon's tick wakes them, so the plan's stages are the tick's
        (a woken instance is decided afresh, with its registrable domain's
        group; a settled one is not)."""
        return await self.snapshot.load(awake_only=awake_only)

    def asleep_pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        return self.snapshot.asleep_pages()

    async def load_hosts(self) -> dict[str, HostClaim]:
        return await self.snapshot.load_hosts()

    async def load_challenges(self, *, awake_only: bool = False) -> dict[InstanceGuid, Challenge]:
        return await self.snapshot.load_challenges(awake_only=awake_only)

    async def records_of(self, guids: Iterable[str]) -> dict[InstanceGuid, Record]:
        return await self.snapshot.records_of(guids)

    async def challenges_of(self, guids: Iterable[str]) -> dict[InstanceGuid, Challenge]:
        return await self.snapshot.challenges_of(guids)

    async def load_decisions(self, *, awake_only: bool = False) -> list[Decision]:
        return await self.snapshot.load_decisions(awake_only=awake_only)

    async def load_guards(self) -> dict[str, Any]:
        return await self.snapshot.load_guards()

    async def unnamed(self) -> list[str]:
        return []

    def lost(self) -> str | None:
        return None

    async def begin_tick(self, started_at: float) -> int:
        """The id the tick would get (the next after the last stored)."""
        self.writes["begin_tick"] += 1
        last = await self.snapshot.last_ticks(1)
        self.tick_id = (last[0]["id"] if last else 0) + 1
        return self.tick_id

    async def end_tick(self, tick_id: int, **_: Any) -> None:
        self.writes["end_tick"] += 1

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
        self.writes["commit"] += 1
        self.changes.extend(changes)
        self.decisions.extend(decisions)
        self.upserts.update((r.guid, r) for r in upserts)
        self.forgets.extend(forgets)
        self.events.extend(events)
        for claim in host_upserts:
            self.host_deletes.discard(claim.host)
            self.host_upserts[claim.host] = claim
        for host in host_deletes:
            self.host_upserts.pop(host, None)
            self.host_deletes.add(host)
        self.challenges.extend(challenge_upserts)
        self.challenge_deletes.update(challenge_deletes)

    async def save_guards(self, values: Mapping[str, Any], now: float) -> None:
        self.writes["save_guards"] += 1
        self.guards.update(values)

    async def clear_guard(self, name: str, value: Any) -> None:
        self.writes["clear_guard"] += 1

    async def close(self) -> None:
        await self.snapshot.close()


class ActionLog:
    """An executor (the signature of cdnreq.reconcile.execute.execute) that
    runs nothing: it keeps each action handed to it, in order."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    async def __call__(self, feed: Feed, **_: Any) -> int:
        while (action := await feed.next()) is not None:
            self.actions.append(action)
        return len(self.actions)


def read_secret(path: Path) -> bytes:
    """The domain secret if it exists (tokens of stored challenges are
    checked with it); a throw-away one if not, since a dry run creates
    nothing and issues no challenge (the plan says one would be)."""
    if not path.exists():
        return secrets.token_hex(32).encode("ascii")
    return challenge.read_secret(path)

"""The store's transactional writes, written once for both engines: what a
commit writes and in which order is cdnreq.store.commit's; each engine
applies those steps in one transaction with its `_apply` (shielded from
its caller's cancellation; fenced by the lease on PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from cdnreq.decide.changes import ChangeEvent
from cdnreq.model import Challenge, Decision, Event, HostClaim, Record
from cdnreq.store.commit import Step, commit_steps
from cdnreq.store.errors import StoreError
from cdnreq.store.rows import DELETE_GUARD, UPSERT_GUARD


class SqlWrites:
    """TickStore's `commit` and `save_guards` over an engine's `_apply`."""

    @property
    def path(self) -> Path:
        raise NotImplementedError

    async def _apply(self, steps: list[Step]) -> None:
        """Run `steps` in one transaction, to its end, or raise StoreError with nothing written."""
        raise NotImplementedError

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
        also: Iterable[Step] = (),
    ) -> None:
        """Write everything in one transaction, or nothing; what is written
        in which order: cdnreq.store.commit.commit_steps. `also`: further
        (sql, rows) steps run last in the same transaction (an import's own
        bookkeeping, cdnreq.store.imports; a store's copy, cdnreq.store.copying)."""
        steps = commit_steps(
            self.path, upserts=upserts, forgets=forgets, events=events,
            host_upserts=host_upserts, host_deletes=host_deletes,
            challenge_upserts=challenge_upserts, challenge_deletes=challenge_deletes,
            decisions=decisions, shown=shown, asleep=asleep, changes=changes, names=names, also=also,
        )  # fmt: skip
        if steps:
            await self._apply(steps)

    async def save_guards(self, values: Mapping[str, Any], now: float) -> None:
        """Write the named guard states in one transaction (None deletes one).
        Only the writer writes: the daemon (its leader), or `cdnreq approve`
        when no daemon runs (with one, approve goes through its endpoint)."""
        try:
            rows = [(n, json.dumps(v, sort_keys=True), now) for n, v in values.items() if v is not None]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: cannot encode guard state: {exc}") from exc
        deletes = [(n,) for n, v in values.items() if v is None]
        steps = [(sql, r) for sql, r in ((UPSERT_GUARD, rows), (DELETE_GUARD, deletes)) if r]
        if steps:
            await self._apply(steps)

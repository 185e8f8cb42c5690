"""Store the customers' titles the feed's title scopes match (cdnreq.decide.names)."""

from __future__ import annotations

from typing import Any, Collection, Iterable

from cdnreq.decide.names import to_keep
from cdnreq.model import SharedInstance


class Names:
    """Which stored instances have no title yet: read at the first tick after a load."""

    def __init__(self) -> None:
        self.unnamed: set[str] | None = None

    async def keep(self, instances: Iterable[SharedInstance], known: Collection[str], asleep: Collection[str],
                   store: Any) -> None:
        """Before anything of the tick is written: its changes carry the titles."""
        if self.unnamed is None:
            self.unnamed = set(await store.unnamed())
        rows = to_keep(instances, known, asleep, self.unnamed)
        if rows:
            await store.commit(names=rows)
            self.unnamed.difference_update(g for g, _ in rows)

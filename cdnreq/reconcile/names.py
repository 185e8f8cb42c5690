"""Store the customers' titles the feed's title scopes match (cdnreq.decide.names)."""

from __future__ import annotations

from typing import Any, Collection

from cdnreq.decide.names import to_keep
from cdnreq.model import Listing


class Names:
    """Which instances have no title stored yet: read at the first tick after
    a load, then kept up to date by the ticks."""

    def __init__(self) -> None:
        self.unnamed: set[str] | None = None

    async def keep(self, listing: Listing, known: Collection[str], asleep: Collection[str], store: Any) -> None:
        """Before anything of the tick is written: its changes carry the titles."""
        if self.unnamed is None:
            self.unnamed = set(await store.unnamed())
        rows, untitled = to_keep(listing, known, asleep, self.unnamed)
        if rows:
            await store.commit(names=rows)
            self.unnamed.difference_update(g for g, _ in rows)
        self.unnamed.update(untitled)

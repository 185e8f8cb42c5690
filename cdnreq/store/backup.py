"""Online backups of the store: why there are any, and taking one.

The store holds what the master cannot give back: which customer proved which
host, the challenge token each customer was shown, and the title and state of
every technical entry. Started on an empty store, cdnreq would greet every
customer with a new challenge and request every entry again. So:

* `Store.backup` writes a consistent copy (SQLite's backup API, online, safe
  next to a running daemon), checked by cdnreq.store.verify, into the backup
  directory (cdnreq.store.backupdir); `take_backup` also keeps the domain
  secret there (``domain-secret``, mode 0600) and prunes old copies;
* cdnreq.store.restoring puts one back while no daemon runs, and says why a
  daemon refuses to start on an empty store while the newest backup is not
  empty.

The backup directory holds the tokens and the secret: protect it like the
secret itself.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cdnreq.store.backupdir import copy_secret, prune

if TYPE_CHECKING:
    from cdnreq.store.interface import Engine


async def take_backup(
    store: Engine,
    directory: str | os.PathLike[str],
    *,
    secret: str | os.PathLike[str] | None = None,
    keep: int | None = None,
    now: float | None = None,
) -> Path:
    """A backup of `store` into `directory`, then the domain secret beside it,
    then old backups pruned to the `keep` newest. Returns the new backup."""
    path = await store.backup(Path(directory), now=now)
    if secret is not None:
        await asyncio.to_thread(copy_secret, secret, directory)
    if keep is not None:
        await asyncio.to_thread(prune, directory, keep)
    return path

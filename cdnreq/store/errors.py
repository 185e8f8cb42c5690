"""The store's failures, kept apart so callers can catch them without sqlite3.

Every error the store lets out is a `StoreError`; the daemon treats the two
subclasses as reasons to refuse to start rather than to retry.
"""

from __future__ import annotations


class StoreError(Exception):
    """The database could not be read or written; nothing was half-written."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer cdnreq than this one."""


class StoreLocked(StoreError):
    """Another cdnreq process holds the database's lock."""


class StoreUnreachable(StoreError):
    """The database server did not answer (PostgreSQL down, failing over,
    the network): a passing state, so the daemon exits 1 and systemd starts
    it again, unlike the refusals above (exit 3)."""


class StoreLost(StoreError):
    """The database file was deleted or replaced under a running cdnreq:
    what it writes from then on would be lost. The daemon exits."""

"""A store on PostgreSQL is backed up and restored with PostgreSQL's own
tools, not cdnreq's: what `cdnreq backup`, `cdnreq restore` and the engine
say instead of pretending."""

from __future__ import annotations

BACKUPS_ARE_POSTGRES = (
    "the store is on PostgreSQL ([store].url): back it up with PostgreSQL's own tools, pg_dump for a copy, "
    "base backups with WAL archiving for point-in-time recovery (README: Backups)"
)
RESTORES_ARE_POSTGRES = (
    "the store is on PostgreSQL ([store].url): restore it with PostgreSQL's own tools (pg_restore, or a base "
    "backup and its WAL), with every cdnreq node stopped (README: Backups)"
)

"""What a database file holds, and whether this cdnreq can use it: the check
every backup passes before it is renamed into place, and every restore before
it replaces the database."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cdnreq.store.errors import SchemaTooNew, StoreError
from cdnreq.store.migrations import LATEST


@dataclass(frozen=True)
class BackupInfo:
    """What a cdnreq database file holds, as `inspect` found it."""

    path: Path
    schema_version: int
    instances: int
    hosts: int
    challenges: int

    @property
    def empty(self) -> bool:
        """Nothing worth keeping: no instance, no proven host, no challenge."""
        return not (self.instances or self.hosts or self.challenges)

    def describe(self) -> str:
        return (
            f"{self.instances} instances, {self.hosts} proven hosts, "
            f"{self.challenges} challenges, schema version {self.schema_version}"
        )


def _read_only(path: Path) -> sqlite3.Connection:
    # immutable: no lock, no -wal/-shm created beside the file (backups are
    # never written once renamed, and restore checks its own private copy).
    uri = f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True)


def inspect(
    path: str | os.PathLike[str], *, integrity: bool = True, name: str | os.PathLike[str] | None = None
) -> BackupInfo:
    """Open a database file read-only and check that cdnreq can use it: SQLite,
    with a schema version this cdnreq knows, and (with `integrity`) passing
    `PRAGMA integrity_check`. `name` is how errors call the file.

    Raises StoreError (SchemaTooNew for a newer schema)."""
    path = Path(path)
    shown = str(name if name is not None else path)
    if not path.is_file():
        raise StoreError(f"no database file at {shown}")
    try:
        conn = _read_only(path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {shown}: {exc}") from exc
    try:
        try:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            }
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{shown} is not a cdnreq database (not SQLite: {exc})") from exc
        if "schema_version" not in tables:
            what = f"it has tables {', '.join(sorted(tables))}" if tables else "it is empty"
            raise StoreError(f"{shown} is not a cdnreq database ({what} but no schema_version)")
        try:
            row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
            version = int(row[0]) if row is not None else 0
            if version > LATEST:
                raise SchemaTooNew(
                    f"{shown} has schema version {version}, newer than this cdnreq knows "
                    f"({LATEST}): use the cdnreq that wrote it"
                )
            if version < 1:
                raise StoreError(f"{shown} is not a usable cdnreq database (schema_version is empty)")
            if integrity:
                problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
                if problems != ["ok"]:
                    raise StoreError(f"{shown} is damaged: integrity_check says {'; '.join(problems)}")

            def count(table: str) -> int:
                if table not in tables:
                    return 0  # an older schema, from before the table existed
                return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

            return BackupInfo(path, version, count("instances"), count("hosts"), count("challenges"))
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise StoreError(f"{shown} is not a usable cdnreq database: {exc}") from exc
    finally:
        conn.close()


def finish_copy(target: sqlite3.Connection, tmp: str) -> None:
    """After the backup API has filled `target`: make the file self-contained
    (rollback journal, so it needs no -wal beside it), close it, check it."""
    try:
        target.execute("PRAGMA journal_mode = DELETE").fetchone()
    finally:
        target.close()
    inspect(tmp, integrity=True, name=f"the backup being written ({tmp})")

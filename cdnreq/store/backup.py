"""Online backups of the store, and putting one back.

The store holds what the master cannot give back: which customer proved which
host, the challenge token each customer was shown, and the title and state of
every technical entry. Started on an empty store, cdnreq would greet every
customer with a new challenge and request every entry again. So:

* `Store.backup` writes a consistent copy (SQLite's backup API, online, safe
  next to a running daemon) as ``cdnreq-YYYYmmddTHHMMSSZ.db`` (UTC) in the
  backup directory; `take_backup` also keeps the domain secret there
  (``domain-secret``, mode 0600) and prunes old copies;
* `restore` puts one back while no daemon runs, keeping the database it
  replaces;
* `start_refusal` is why a daemon refuses to start on an empty store while the
  newest backup is not empty.

The backup directory holds the tokens and the secret: protect it like the
secret itself.
"""

from __future__ import annotations

import asyncio
import calendar
import errno
import os
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cdnreq.store.errors import SchemaTooNew, StoreError
from cdnreq.store.files import make_private_dirs
from cdnreq.store.lock import DatabaseLock
from cdnreq.store.migrations import LATEST

if TYPE_CHECKING:
    from cdnreq.store.sqlite import Store

__all__ = [
    "SECRET_NAME",
    "BackupInfo",
    "RestoreResult",
    "backup_name",
    "backup_time",
    "copy_secret",
    "inspect",
    "last_backup",
    "list_backups",
    "lost_store_evidence",
    "prune",
    "restore",
    "restore_secret",
    "start_refusal",
    "take_backup",
]

SECRET_NAME = "domain-secret"
_NAME = re.compile(r"cdnreq-([0-9]{8}T[0-9]{6}Z)\.db")
_STAMP = "%Y%m%dT%H%M%SZ"
_TMP_PREFIX = ".cdnreq-backup-"
_STALE_TMP_S = 3600.0


# -- names -----------------------------------------------------------------------


def _stamp(when: float) -> str:
    return time.strftime(_STAMP, time.gmtime(when))


def backup_name(when: float) -> str:
    """``cdnreq-YYYYmmddTHHMMSSZ.db`` for the Unix time `when` (UTC)."""
    return f"cdnreq-{_stamp(when)}.db"


def backup_time(path: str | os.PathLike[str]) -> float | None:
    """The Unix time in a backup's name, or None if it is not a backup's name."""
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(match.group(1), _STAMP)))
    except ValueError:
        return None


def list_backups(directory: str | os.PathLike[str]) -> list[Path]:
    """The backups in `directory`, newest first (by name, which sorts by time).
    A missing directory has none."""
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list the backups in {directory}: {exc.strerror or exc}") from exc
    found = [n for n in names if backup_time(n) is not None and (directory / n).is_file()]
    return [directory / n for n in sorted(found, reverse=True)]


def last_backup(directory: str | os.PathLike[str]) -> Path | None:
    """The newest backup in `directory`, or None."""
    backups = list_backups(directory)
    return backups[0] if backups else None


def prune(directory: str | os.PathLike[str], keep: int, *, now: float | None = None) -> list[Path]:
    """Delete all but the `keep` newest backups (and temporary files a crashed
    backup left behind over an hour ago); return what was deleted. Nothing else
    in the directory is touched, the domain secret least of all."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    directory = Path(directory)
    removed = []
    for path in list_backups(directory)[keep:]:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete the old backup {path}: {exc.strerror or exc}") from exc
    now = time.time() if now is None else now
    try:
        leftovers = [directory / n for n in os.listdir(directory) if n.startswith(_TMP_PREFIX)]
    except OSError:
        leftovers = []
    for path in leftovers:
        try:
            if now - path.stat().st_mtime > _STALE_TMP_S:
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


# -- files -----------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_backup_dir(directory: Path) -> None:
    """The backup directory, created private (0700) when missing."""
    try:
        make_private_dirs(directory)
    except OSError as exc:
        raise StoreError(f"cannot create the backup directory {directory}: {exc.strerror or exc}") from exc
    if not directory.is_dir():
        raise StoreError(f"the backup directory {directory} is not a directory")


def new_temp(directory: Path) -> str:
    """An empty private (0600) temporary file in `directory`, for a backup being written."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StoreError(f"cannot write a backup in {directory}: {exc.strerror or exc}") from exc
    os.close(fd)
    return tmp


def install(tmp: str, directory: Path, when: float) -> Path:
    """fsync the finished copy and rename it to its final name, atomically.
    Two backups within one second: the later replaces the earlier."""
    final = directory / backup_name(when)
    try:
        _fsync_file(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise StoreError(f"cannot write the backup {final}: {exc.strerror or exc}") from exc
    _fsync_dir(directory)
    return final


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except FileNotFoundError:
        return False


def _copy_private(source: Path, dest: Path) -> None:
    """Copy `source` to `dest` (mode 0600) through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def copy_secret(secret: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path | None:
    """Keep a copy of the domain secret as `directory`/domain-secret (mode 0600),
    written only when absent or different. Returns the copy's path, or None
    when there is no secret to copy yet."""
    secret, directory = Path(secret), Path(directory)
    dest = directory / SECRET_NAME
    if not secret.is_file():
        return None
    try:
        if _same_bytes(secret, dest):
            if dest.stat().st_mode & 0o777 != 0o600:
                os.chmod(dest, 0o600)
            return dest
        _copy_private(secret, dest)
    except OSError as exc:
        raise StoreError(f"cannot copy the domain secret to {dest}: {exc.strerror or exc}") from exc
    return dest


def restore_secret(backup_file: str | os.PathLike[str], secret: str | os.PathLike[str]) -> str:
    """Put back the domain secret saved beside `backup_file` when `secret` is
    missing. Returns one of "restored", "same", "differs", "kept" (a secret is
    in place and none was saved), "none" (neither exists)."""
    saved, secret = Path(backup_file).parent / SECRET_NAME, Path(secret)
    if not saved.is_file():
        return "kept" if secret.exists() else "none"
    if secret.exists():
        return "same" if _same_bytes(saved, secret) else "differs"
    try:
        secret.parent.mkdir(parents=True, exist_ok=True)
        _copy_private(saved, secret)
    except OSError as exc:
        raise StoreError(f"cannot restore the domain secret to {secret}: {exc.strerror or exc}") from exc
    return "restored"


# -- what a database file holds --------------------------------------------------


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


# -- taking one ------------------------------------------------------------------


async def take_backup(
    store: Store,
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


# -- putting one back ------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    database: Path
    backup: BackupInfo
    replaced: Path | None  # the database that was there before, kept


def _free_name(base: str) -> Path:
    candidate, n = Path(base), 1
    while candidate.exists() or Path(f"{candidate}-wal").exists():
        candidate = Path(f"{base}.{n}")
        n += 1
    return candidate


def restore(
    backup_file: str | os.PathLike[str], database: str | os.PathLike[str], *, now: float | None = None
) -> RestoreResult:
    """Put `backup_file` in place as `database`.

    Refused (StoreLocked) while a cdnreq holds the database's lock, and
    (StoreError, SchemaTooNew) unless the file is a cdnreq database this cdnreq
    can use and passes its integrity check; then nothing is changed. The copy
    is checked, fsync'd and renamed into place. The database it replaces is
    kept as ``<database>.replaced-<UTC time>`` together with its -wal (so what
    was committed but not yet checkpointed is kept too); a stale -shm is
    removed.
    """
    backup_file, asked = Path(backup_file), Path(database)
    # a symlinked database is restored at its real path (where the daemon
    # opens it and its -wal lives), so the link stays a link
    database = Path(os.path.realpath(asked))
    if not backup_file.is_file():
        raise StoreError(f"no backup file at {backup_file}")
    try:
        make_private_dirs(database.parent)
    except OSError as exc:
        raise StoreError(f"cannot create directory for {database}: {exc.strerror or exc}") from exc
    lock = DatabaseLock.acquire(database)  # creates it empty when missing: nothing to set aside
    try:
        if database.exists() and os.path.samefile(backup_file, database):
            raise StoreError(f"{backup_file} is the database itself")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{database.name}.restore-", suffix=".tmp", dir=database.parent)
        except OSError as exc:
            raise StoreError(f"cannot write in {database.parent}: {exc.strerror or exc}") from exc
        try:
            try:
                with os.fdopen(fd, "wb") as out, open(backup_file, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                raise StoreError(f"cannot copy {backup_file} to {database.parent}: {exc.strerror or exc}") from exc
            # The checks read the private copy: exactly the bytes that go in place.
            info = inspect(tmp, integrity=True, name=backup_file)
            info = BackupInfo(backup_file, info.schema_version, info.instances, info.hosts, info.challenges)
            try:
                _same_owner_and_mode(database, tmp)
                replaced = _set_aside(database, time.time() if now is None else now)
                os.replace(tmp, database)
            except OSError as exc:
                raise StoreError(f"cannot put {backup_file} in place as {database}: {exc.strerror or exc}") from exc
            _fsync_dir(database.parent)
        except BaseException:
            _unlink(tmp)
            raise
    finally:
        lock.release()
    return RestoreResult(asked, info, replaced)


def _same_owner_and_mode(database: Path, tmp: str) -> None:
    """The restored file gets the replaced one's owner and mode (so root
    restoring for the service user leaves a file the service can open)."""
    try:
        st = database.stat()
    except FileNotFoundError:
        return
    os.chmod(tmp, st.st_mode & 0o777)
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except PermissionError:
        pass


def _set_aside(database: Path, now: float) -> Path | None:
    """Keep the current database (with its -wal) under a new name, remove its
    -shm; the database's own name stays in place until os.replace overwrites it."""
    wal, journal, shm = (Path(f"{database}{s}") for s in ("-wal", "-journal", "-shm"))
    replaced = None
    if database.exists() and database.stat().st_size > 0:
        replaced = _free_name(f"{database}.replaced-{_stamp(now)}")
        try:
            os.link(database, replaced)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP):
                raise
            shutil.copy2(database, replaced)
    for side, suffix in ((wal, "-wal"), (journal, "-journal")):
        if side.exists():
            if replaced is not None:
                os.replace(side, f"{replaced}{suffix}")
            else:
                side.unlink()  # a stale journal without its database: it must not meet the restored one
    _unlink(shm)
    return replaced


# -- refusing to start on an empty store -----------------------------------------


def lost_store_evidence(backup_dir: str | os.PathLike[str]) -> tuple[Path, BackupInfo | None] | None:
    """The newest backup, when it says that an empty store has lost something:
    (path, what it holds), or (newest path, None) when no backup can be read.
    None when there is no backup, or when the newest readable one is empty
    too (a requester without customers, or one started with --fresh)."""
    backups = list_backups(backup_dir)
    if not backups:
        return None
    for path in backups:
        try:
            info = inspect(path, integrity=False)
        except StoreError:
            continue
        return None if info.empty else (path, info)
    return backups[0], None


def start_refusal(
    database: str | os.PathLike[str],
    backup_dir: str | os.PathLike[str],
    *,
    missing: bool,
    config: str | os.PathLike[str] | None = None,
) -> str | None:
    """Why cdnreq must not start on this missing or empty database, or None.

    It must not when the newest readable backup is not empty (see
    lost_store_evidence): the store was lost, and starting afresh would give
    every customer a new challenge and request every entry again.
    """
    evidence = lost_store_evidence(backup_dir)
    if evidence is None:
        return None
    newest, info = evidence
    about = f"({info.describe()})" if info is not None else "(none of the backups can be read)"
    conf = f" --config {config}" if config is not None else " --config FILE"
    what = "missing" if missing else "empty (no instance, no proven host, no challenge)"
    return (
        f"the database {database} is {what}, but backups of it exist in {backup_dir}: the newest is "
        f"{newest} {about}. Starting on an empty store would give every customer a new challenge and "
        f"request every entry again, so cdnreq will not start. Either restore the backup "
        f"(with no cdnreq running): cdnreq restore {newest}{conf}\n"
        f"or, if starting from nothing is really meant, add --fresh: cdnreq run --fresh{conf}"
    )

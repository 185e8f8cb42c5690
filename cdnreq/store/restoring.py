"""Putting a backup back (`cdnreq restore`), and refusing to start on an
empty store while a backup says something was lost.

`restore` runs while no daemon runs, keeping the database it replaces;
`start_refusal` is why a daemon refuses to start on an empty store while the
newest backup is not empty. (Not named restore.py: the package exports the
function `restore`, which would shadow a submodule of that name.)
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cdnreq.store.backupdir import SECRET_NAME, list_backups, stamp
from cdnreq.store.errors import StoreError
from cdnreq.store.feedgaps import skip_lost_ids
from cdnreq.store.files import copy_private, fsync_dir, make_private_dirs, remove_if_present, same_bytes
from cdnreq.store.lock import DatabaseLock
from cdnreq.store.verify import BackupInfo, inspect


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
                skip_lost_ids(tmp, database, time.time() if now is None else now)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot carry the change feed over to {backup_file}'s copy: {exc}") from exc
            try:
                _same_owner_and_mode(database, tmp)
                replaced = _set_aside(database, time.time() if now is None else now)
                os.replace(tmp, database)
            except OSError as exc:
                raise StoreError(f"cannot put {backup_file} in place as {database}: {exc.strerror or exc}") from exc
            fsync_dir(database.parent)
        except BaseException:
            remove_if_present(tmp)
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
        replaced = _free_name(f"{database}.replaced-{stamp(now)}")
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
    remove_if_present(shm)
    return replaced


def restore_secret(backup_file: str | os.PathLike[str], secret: str | os.PathLike[str]) -> str:
    """Put back the domain secret saved beside `backup_file` when `secret` is
    missing. Returns one of "restored", "same", "differs", "kept" (a secret is
    in place and none was saved), "none" (neither exists)."""
    saved, secret = Path(backup_file).parent / SECRET_NAME, Path(secret)
    if not saved.is_file():
        return "kept" if secret.exists() else "none"
    if secret.exists():
        return "same" if same_bytes(saved, secret) else "differs"
    try:
        secret.parent.mkdir(parents=True, exist_ok=True)
        copy_private(saved, secret)
    except OSError as exc:
        raise StoreError(f"cannot restore the domain secret to {secret}: {exc.strerror or exc}") from exc
    return "restored"


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

"""The backup directory: its names, its listing, its pruning, and the domain
secret kept beside the copies.

Backups are ``cdnreq-YYYYmmddTHHMMSSZ.db`` (UTC), so their names sort by
time; a backup being written is a private temporary file renamed into place
once checked (cdnreq.store.verify). The directory holds the challenge tokens
and the secret: protect it like the secret itself.
"""

from __future__ import annotations

import calendar
import os
import re
import tempfile
import time
from pathlib import Path

from cdnreq.store.errors import StoreError
from cdnreq.store.files import copy_private, fsync_dir, fsync_file, make_private_dirs, same_bytes

SECRET_NAME = "domain-secret"
_NAME = re.compile(r"cdnreq-([0-9]{8}T[0-9]{6}Z)\.db")
_STAMP = "%Y%m%dT%H%M%SZ"
_TMP_PREFIX = ".cdnreq-backup-"
_STALE_TMP_S = 3600.0


def stamp(when: float) -> str:
    """The UTC time in backup names: YYYYmmddTHHMMSSZ."""
    return time.strftime(_STAMP, time.gmtime(when))


def backup_name(when: float) -> str:
    """``cdnreq-YYYYmmddTHHMMSSZ.db`` for the Unix time `when` (UTC)."""
    return f"cdnreq-{stamp(when)}.db"


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
        fsync_file(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise StoreError(f"cannot write the backup {final}: {exc.strerror or exc}") from exc
    fsync_dir(directory)
    return final


def copy_secret(secret: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path | None:
    """Keep a copy of the domain secret as `directory`/domain-secret (mode 0600),
    written only when absent or different. Returns the copy's path, or None
    when there is no secret to copy yet."""
    secret, directory = Path(secret), Path(directory)
    dest = directory / SECRET_NAME
    if not secret.is_file():
        return None
    try:
        if same_bytes(secret, dest):
            if dest.stat().st_mode & 0o777 != 0o600:
                os.chmod(dest, 0o600)
            return dest
        copy_private(secret, dest)
    except OSError as exc:
        raise StoreError(f"cannot copy the domain secret to {dest}: {exc.strerror or exc}") from exc
    return dest

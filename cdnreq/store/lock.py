"""One writer per database, and that database is still the one on disk.

Two daemons reconciling the same CDN would fight. The lock is an flock on
the database file itself, resolved through symlinks: a daemon started on a
symlink and one on the real path lock the same inode, and there is no lock
file to delete behind a running daemon's back. The kernel drops an flock when
the process dies, so a crash never leaves a stale lock. flock and SQLite's
own POSIX (fcntl) locks are independent on Linux; our descriptor is closed
only after SQLite's connection, since closing any descriptor of a file drops
the process's POSIX locks on it.

The same descriptor tells, with one stat a tick, whether the database file
was deleted or replaced since it was opened: SQLite would go on writing into
an unlinked file, and everything written from then on would be lost.

`<database>.lock` only holds the pid of the holder, for the error message.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from cdnreq.store.errors import StoreError, StoreLocked
from cdnreq.store.files import PRIVATE_FILE


class DatabaseLock:
    """An exclusive, non-blocking flock on the resolved database file."""

    def __init__(self, path: Path, real: str, fd: int) -> None:
        self.path = path  # as configured: what the operator knows it by
        self.real = real
        self._fd: int | None = fd
        self.pid_file = f"{real}.lock"

    @classmethod
    def acquire(cls, db: str | os.PathLike[str], *, create: bool = True) -> "DatabaseLock":
        """Lock `db`, creating it empty (0600) when missing and `create`."""
        path = Path(db)
        for _ in range(3):  # the file may be replaced between open and flock: lock the new one
            real = os.path.realpath(path)
            # O_NONBLOCK: a FIFO put at the path would hold the open for ever
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
            try:
                fd = os.open(real, flags, PRIVATE_FILE)
            except OSError as exc:
                raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise StoreError(f"cannot open {path}: {real} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_pid(f"{real}.lock")
                raise StoreLocked(
                    f"another cdnreq is using {path} (its lock held by pid {holder}, as {real}.lock says)"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
            lock = cls(path, real, fd)
            if lock.lost() is None:
                lock._write_pid()
                return lock
            lock.release()
        raise StoreError(f"{path} keeps being replaced while cdnreq opens it")

    def lost(self) -> str | None:
        """Why the file at the database's path is no longer the one locked; None while it is."""
        if self._fd is None:
            return None
        try:
            held = os.fstat(self._fd)
        except OSError:
            return None
        if held.st_nlink == 0:
            return f"database file {self.path} was deleted since cdnreq opened it"
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return f"database file {self.path} was deleted since cdnreq opened it"
        except OSError:
            return None  # cannot tell: the next statement will say what is wrong
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return f"database file {self.path} was replaced since cdnreq opened it"
        return None

    def _write_pid(self) -> None:
        try:
            fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_FILE)
        except OSError:
            return  # the pid is a courtesy for the error message; the lock is what counts
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if _read_pid(self.pid_file) == str(os.getpid()):
                try:
                    os.truncate(self.pid_file, 0)
                except OSError:
                    pass
            os.close(fd)  # closing drops the flock


def _read_pid(path: str) -> str:
    try:
        with open(path, "rb") as file:
            text = file.read(32).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"

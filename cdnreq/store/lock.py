"""One writer per database: two daemons reconciling the same CDN would fight.

SQLite's own locking only serializes statements; it does not stop a second
daemon from starting. An flock on a sidecar file does, and the kernel drops it
when the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os

from cdnreq.store.errors import StoreError, StoreLocked


class FileLock:
    """An exclusive, non-blocking flock on `path`, with our pid written inside."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, lock_path: str, db_path: str) -> "FileLock":
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(
                f"another cdnreq is using {db_path} (lock {lock_path} held by pid {holder})"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {lock_path}: {exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is a courtesy for the error message; the lock is what counts
        return cls(lock_path, fd)

    def release(self) -> None:
        # The file stays: unlinking it would let a third process lock a new
        # inode while a second one still waits on the old one.
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing drops the flock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"

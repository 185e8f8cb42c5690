"""The store's files are private: created 0600 (directories 0700) whatever the umask.

The database holds every customer's parameters, some with TLS keys. Files
that exist already with a wider mode are left as they are (an operator may
have opened them to a group on purpose) and named in a warning at start.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(directory: Path) -> None:
    """`directory` and its missing parents, each created 0700. The mode is
    set after mkdir, which the umask may have narrowed (or Path.mkdir
    ignores, for parents)."""
    missing: list[Path] = []
    here = directory
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        os.chmod(path, PRIVATE_DIR)


def too_open(paths: list[str]) -> list[str]:
    """Those of `paths` that exist and that others than their owner may read or write."""
    found = []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & 0o077:
            found.append(f"{path} ({stat.filemode(mode)})")
    return found


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (best effort)."""
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


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_if_present(path: str | os.PathLike[str]) -> None:
    """Unlink `path`; already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def same_bytes(a: Path, b: Path) -> bool:
    """Whether both files hold the same bytes (a missing one never does)."""
    try:
        return a.read_bytes() == b.read_bytes()
    except FileNotFoundError:
        return False


def copy_private(source: Path, dest: Path) -> None:
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
        remove_if_present(tmp)
        raise
    fsync_dir(dest.parent)

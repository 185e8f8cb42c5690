"""Can the running user read this file, or write in this directory?

Answers are reasons (a short phrase naming the path) or None, so that the
caller (cdnreq.preflight) can prefix the configuration key. `os.access`
asks with the real uid, which is the one cdnreq runs as (no setuid), and it
sees read-only mounts even for root; a read is still attempted for files,
because root passes `os.access` whatever the mode bits say.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

# group or world may read, write or execute: a secret must be its owner's only
OPEN_BITS = 0o077


def read_file(path: Path, *, limit: int = 1 << 20) -> tuple[bytes | None, str | None]:
    """(content, None), or (None, why it cannot be read). `limit` bounds what
    is read: the files checked here (keys, certificates, tokens) are small."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as error:
        return None, f"cannot read {path}: {error.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return None, f"{path} is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, and a SIGHUP reload with it
        return None, f"{path} is not a regular file ({stat.filemode(st.st_mode)})"
    if not os.access(path, os.R_OK):
        return None, f"{path} is not readable by {running_user()} ({owned(st)})"
    try:
        with open(path, "rb") as f:
            return f.read(limit), None
    except OSError as error:
        return None, f"cannot read {path}: {error.strerror}"


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (where a mkdir -p would start)."""
    here = path
    while not here.exists() and here.parent != here:
        here = here.parent
    return here


def unwritable_dir(directory: Path) -> str | None:
    """Why files cannot be created in `directory` (or in the directories a
    mkdir -p would create for it), or None when they can."""
    here = nearest_existing(directory)
    if not here.is_dir():
        return f"{here} is not a directory"
    if not os.access(here, os.W_OK | os.X_OK):
        what = f"{directory} is" if here == directory else f"{directory} is missing and {here} is"
        ro = " (read-only file system)" if _read_only_mount(here) else f" ({owned(here.stat())})"
        return f"{what} not writable by {running_user()}{ro}"
    return None


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_mode(path: Path) -> str | None:
    """A description of `path`'s mode when group or others have any access to it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & OPEN_BITS:
        return f"{stat.S_IMODE(mode):04o} ({stat.filemode(mode)})"
    return None


def running_user() -> str:
    """The user a check ran as, by name when it has one: `cdnreq (uid 999)`."""
    uid = os.getuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def owned(st: os.stat_result) -> str:
    """Owner and mode, since a mode alone hides who may write: `owner root, mode drwx------`."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"owner {owner}, mode {stat.filemode(st.st_mode)}"

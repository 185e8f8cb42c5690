"""The store's files are private: created 0600 (directories 0700) whatever the umask.

The database holds every customer's parameters, some with TLS keys. Files
that exist already with a wider mode are left as they are (an operator may
have opened them to a group on purpose) and named in a warning at start.
"""

from __future__ import annotations

import os
import stat
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

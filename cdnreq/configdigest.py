"""The configuration file's digest, read next to the file itself.

The digest names the configuration that runs (cdnreq.reloadstate); it must
be of the very bytes that were loaded, so a file rewritten while it was being
read is read again.
"""

from __future__ import annotations

from pathlib import Path

from cdnreq.config import Config
from cdnreq.configfile import load_config
from cdnreq.reloadstate import digest_of


def file_digest(path: Path) -> tuple[str | None, str | None]:
    """The digest of the file now, or why it cannot be read."""
    try:
        return digest_of(Path(path).read_bytes()), None
    except OSError as error:
        return None, f"cannot read {path}: {error.strerror}"


def load_with_digest(path: Path) -> tuple[Config, str | None]:
    """The configuration and the digest of the bytes it came from (ConfigError when refused)."""
    for _ in range(3):
        before, _ = file_digest(path)
        config = load_config(path)
        after, _ = file_digest(path)
        if before == after:
            break
    return config, after

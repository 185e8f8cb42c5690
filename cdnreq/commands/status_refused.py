"""`cdnreq status` when the configuration file on disk is refused.

After an edit that a reload refused, the daemon runs on with its older
configuration, and the operator's next step is `cdnreq status --config`
with that very file. Refusing to say anything then would hide the daemon
exactly when it matters, so status reads only what it needs to reach the
daemon and its database ([daemon].listen, token_file, database; a value that
is itself invalid falls back to its default), shows the state, and exits
non-zero: the file on disk would be refused at the next reload or start.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from cdnreq.config import DaemonConfig, StoreConfig

NEEDED = ("listen", "token_file", "database")
STORE_NEEDED = ("url", "password_file", "sslmode", "ssl_ca_file", "lease_s", "renew_s", "node_name")


def reachable(path: Path) -> SimpleNamespace | None:
    """A stand-in for Config with only `.daemon` and `.store` (what status
    reads: where the daemon listens, where the store is), or None when the
    file cannot even be read as TOML."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    context = {"base_dir": os.path.dirname(os.path.abspath(path))}
    daemon = _valid_part(DaemonConfig, data.get("daemon"), NEEDED, context)
    if daemon is None:
        return None
    store = _valid_part(StoreConfig, data.get("store"), STORE_NEEDED, context) or StoreConfig()
    return SimpleNamespace(daemon=daemon, store=store)


def _valid_part(model: Any, section: Any, needed: tuple[str, ...], context: dict[str, Any]) -> Any:
    """`model` from the keys of `section` in `needed` that are valid, the others left at their defaults."""
    wanted: dict[str, Any] = {k: section[k] for k in needed if k in section} if isinstance(section, dict) else {}
    while True:
        try:
            return model.model_validate(wanted, context=context)
        except ValidationError as error:
            bad = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
            if not bad & set(wanted):
                return None
            wanted = {k: v for k, v in wanted.items() if k not in bad}

"""Which configuration runs, and what became of the last reload.

A refused reload keeps the old configuration running; without this record
the refusal would only be in the log, and an operator who edited the file
could believe the edit applies. The state is pure data: the daemon reads
the file and the clock, this module decides what to show.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

DIGEST_LEN = 16  # hex digits of sha256: enough to tell two files apart at a glance
ERROR_MAX = 300  # characters of a refusal kept for /status and STATUS=


def digest_of(data: bytes) -> str:
    """The configuration's identity: a prefix of the sha256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_LEN]


@dataclass(frozen=True)
class Reload:
    """One SIGHUP: `digest` is of the file read then (None when unreadable)."""

    ok: bool
    at: float
    digest: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ConfigState:
    path: str
    digest: str | None  # of the running configuration; None if the file could not be read again at start
    loaded_at: float
    last_reload: Reload | None = None

    @property
    def refused(self) -> bool:
        """The last reload was refused: the file on disk is not what runs."""
        return self.last_reload is not None and not self.last_reload.ok

    def reloaded(self, digest: str | None, at: float) -> ConfigState:
        return replace(self, digest=digest, loaded_at=at, last_reload=Reload(True, at, digest))

    def refusal(self, digest: str | None, error: str, at: float) -> ConfigState:
        """The running configuration stays; the refusal is remembered."""
        return replace(self, last_reload=Reload(False, at, digest, _first_lines(error)))

    def view(self, on_disk: str | None, on_disk_error: str | None = None) -> dict[str, Any]:
        """The `config` object of /status; `on_disk` is the digest of the file now."""
        last = self.last_reload
        return {
            "path": self.path,
            "digest": self.digest,
            "loaded_at": _iso(self.loaded_at),
            "last_reload": None if last is None else {
                "ok": last.ok, "at": _iso(last.at), "digest": last.digest, "error": last.error,
            },
            "file_on_disk": {
                "digest": on_disk,
                "differs": on_disk != self.digest,
                "refused": self.refused and on_disk is not None and on_disk == last.digest,
                "error": on_disk_error,
            },
        }

    def status_line(self) -> str:
        """For systemd's STATUS= right after a reload."""
        if self.refused:
            assert self.last_reload is not None
            return f"reload REFUSED, still running config {self.digest}: {self.last_reload.error}"
        return f"running config {self.digest} from {self.path}"

    def suffix(self) -> str:
        """Appended to each tick's STATUS= while a refusal stands, so it stays in `systemctl status`."""
        return f"; config reload REFUSED (running {self.digest})" if self.refused else ""


def _first_lines(error: str) -> str:
    one = " | ".join(line.strip() for line in error.splitlines() if line.strip())
    return one if len(one) <= ERROR_MAX else one[: ERROR_MAX - 3] + "..."


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def describe(view: dict[str, Any] | None) -> list[str]:
    """Lines for `cdnreq status`: the running configuration, then any refusal."""
    if not view:
        return []
    lines = [f"config {view.get('digest')} from {view.get('path')}, loaded {view.get('loaded_at')}"]
    last = view.get("last_reload") or {}
    disk = view.get("file_on_disk") or {}
    if last and not last.get("ok"):
        lines.append(f"CONFIG RELOAD REFUSED at {last.get('at')} (file {last.get('digest')}): {last.get('error')}")
        lines.append("  the configuration above still runs; fix the file and send SIGHUP (systemctl reload cdnreq)")
    elif last:
        lines.append(f"last reload ok at {last.get('at')}")
    if disk.get("error"):
        lines.append(f"  the file cannot be read now: {disk['error']}")
    elif disk.get("differs") and not disk.get("refused"):
        lines.append(f"  the file on disk ({disk.get('digest')}) differs from the running one; not reloaded yet")
    return lines

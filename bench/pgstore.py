"""The store on PostgreSQL for the benchmarks: a throw-away server, a
database, and the `[store]` section that points cdnreq at it.

The server is devtools.pgserver's (initdb, then postgres on a free loopback
port, as an unprivileged user when run as root), but durable by default:
the tests' server turns fsync, full-page writes and synchronous commits
off, which no deployment does. `--pg-settings` overrides any setting (for
instance ``synchronous_commit=off``, the nearest match to SQLite's WAL with
``synchronous = NORMAL``, which does not sync at each commit either).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

__all__ = ["DURABLE", "ENGINES", "PgDatabase", "data_size_mb", "parse_engines", "parse_settings", "sqlite_size_mb"]

ENGINES = ("sqlite", "postgresql")
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}


def parse_settings(text: str) -> dict[str, str]:
    """``key=value,key=value`` -> a dict (argparse type); ValueError naming the bad part."""
    found: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--pg-settings: {part!r} is not key=value")
        found[key.strip()] = value.strip()
    return found


def parse_engines(text: str) -> list[str]:
    engines = [e.strip().lower() for e in text.split(",") if e.strip()]
    engines = ["postgresql" if e == "postgres" else e for e in engines]
    unknown = [e for e in engines if e not in ENGINES]
    if not engines or unknown:
        raise ValueError(f"--store: a comma-separated list of {', '.join(ENGINES)}, not {text!r}")
    return list(dict.fromkeys(engines))


class PgDatabase:
    """One PostgreSQL server with one fresh database on it; a context manager."""

    def __init__(self, settings: dict[str, str] | None = None, name: str | None = None):
        self.settings = {**DURABLE, **(settings or {})}
        self.name = name or f"bench_{uuid.uuid4().hex[:10]}"
        self.server: Any = None
        self.url = ""

    def start(self) -> "PgDatabase":
        from devtools.pgserver import PgServer

        self.server = PgServer(settings=self.settings).start()
        try:
            self.url = self.server.create_database(self.name)
        except BaseException:
            self.server.remove()
            raise
        return self

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.remove()

    def __enter__(self) -> "PgDatabase":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def store_section(self, *, lease_s: float, renew_s: float, node_name: str | None = None) -> dict[str, Any]:
        """What `[store]` says to use this database (trust authentication on loopback: no password)."""
        section: dict[str, Any] = {"url": self.url, "sslmode": "disable", "lease_s": lease_s, "renew_s": renew_s}
        if node_name is not None:
            section["node_name"] = node_name
        return section

    def query(self, sql: str) -> str:
        """`sql` through psql on this database; its unaligned output."""
        assert self.server is not None
        return self.server.psql(sql, database=self.name)

    def ticks_after(self, tick: int) -> int:
        """Ticks begun after `tick` (the race check of bench/daemonproc.py); -1 when unreadable."""
        try:
            return int(self.query(f"SELECT COUNT(*) FROM ticks WHERE id > {int(tick)}").strip() or 0)
        except Exception:  # noqa: BLE001 -- a check beside the measurement, never its failure
            return -1

    def info(self) -> dict[str, Any]:
        """The server's version and the settings a reader of the figures needs."""
        names = ("server_version", "shared_buffers", "fsync", "synchronous_commit", "full_page_writes",
                 "wal_level", "max_connections")
        found: dict[str, Any] = {"bin": str(self.server.bin) if self.server else None}
        try:
            rows = self.query("SELECT name, setting, unit FROM pg_settings WHERE name IN ("
                              + ",".join(f"'{n}'" for n in names) + ")")
        except Exception as error:  # noqa: BLE001
            return {**found, "error": str(error)}
        for line in rows.splitlines():
            name, setting, unit = (line.split("|") + ["", ""])[:3]
            found[name] = f"{setting} {unit}".strip() if unit else setting
        return found


def data_size_mb(db: PgDatabase) -> float | None:
    """The database's size on disk, in MB."""
    try:
        return round(int(db.query(f"SELECT pg_database_size('{db.name}')").strip()) / 2**20, 1)
    except Exception:  # noqa: BLE001
        return None


def sqlite_size_mb(path: Path) -> float | None:
    """The SQLite store's file and its WAL, in MB."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            total += part.stat().st_size
        except OSError:
            pass
    return round(total / 2**20, 1) if total else None

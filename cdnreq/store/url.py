"""Where the store is: `[store].url`, parsed once into what an engine opens.

`sqlite:///var/lib/cdnreq/cdnreq.db` (an absolute path after the third
slash) or `postgresql://user@host:port/database`. A password never goes in
the URL, where `/status`, logs and process listings would show it: it comes
from `[store].password_file`. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

SCHEMES = ("sqlite", "postgresql", "postgres")
SSLMODES = ("disable", "require", "verify-ca", "verify-full")


class StoreUrlError(ValueError):
    """The URL names no store cdnreq can open; the message says why."""


@dataclass(frozen=True)
class SqliteAt:
    """A SQLite file."""

    path: Path

    def display(self) -> str:
        return f"sqlite://{self.path}"


@dataclass(frozen=True)
class PostgresAt:
    """A PostgreSQL database (the password is not part of it)."""

    host: str
    port: int
    user: str
    database: str

    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}"


StoreAt = SqliteAt | PostgresAt


def parse_store_url(url: str) -> StoreAt:
    """The store `url` names; StoreUrlError naming the URL and what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise StoreUrlError("the store URL is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise StoreUrlError(f"{_shown(url)} is not a URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise StoreUrlError(
            f"{_shown(url)}: unknown scheme {parts.scheme!r}; expected sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    if parts.query or parts.fragment:
        raise StoreUrlError(
            f"{_shown(url)}: options go in [store] (password_file, sslmode, ssl_ca_file), not in the URL"
        )
    if scheme == "sqlite":
        return _sqlite(url, parts)
    if parts.password is not None:
        raise StoreUrlError(f"{_shown(url)}: a password in the URL would be shown in /status and logs; "
                            "put it in the file [store].password_file names")
    if not parts.hostname:
        raise StoreUrlError(f"{_shown(url)}: no host (postgresql://USER@HOST[:PORT]/DATABASE)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise StoreUrlError(f"{_shown(url)}: no database name after the host (postgresql://USER@HOST/DATABASE)")
    if not parts.username:
        raise StoreUrlError(f"{_shown(url)}: no user (postgresql://USER@HOST/DATABASE)")
    return PostgresAt(parts.hostname, port or 5432, unquote(parts.username), database)


def _sqlite(url: str, parts: SplitResult) -> SqliteAt:
    if parts.netloc:
        raise StoreUrlError(f"{_shown(url)}: a SQLite URL has no host; write sqlite:///ABSOLUTE/PATH")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise StoreUrlError(f"{_shown(url)}: the SQLite path must be absolute (sqlite:///var/lib/cdnreq/cdnreq.db)")
    return SqliteAt(Path(path))


def _shown(url: str) -> str:
    """The URL as an error may show it: without a password it should not hold."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[-1]
            url = parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
    except ValueError:
        return "the store URL"
    return repr(url[:300])

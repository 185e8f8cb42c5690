"""Shared fixtures: a real slapproxy on loopback (devtools.devmaster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, Slapproxy, find_slapos, setup_cdn
from legacy.fixtures import (  # noqa: F401  (issue 12)
    legacy_population, legacy_site, legacy_site_shared,
)


@pytest.fixture
def slapproxy(tmp_path: Path) -> Iterator[Slapproxy]:
    """A slapproxy started on 127.0.0.1 in tmp_path, stopped afterwards even on failure."""
    try:
        find_slapos()
    except FileNotFoundError as exc:
        pytest.fail(
            f"slapproxy is needed by this test and cannot be started: {exc}",
            pytrace=False,
        )
    proxy = Slapproxy(tmp_path / "slapproxy")
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def cdn_site(slapproxy: Slapproxy) -> CdnSite:
    """A formatted slapproxy with a requester instance and a technical CDN host."""
    return setup_cdn(slapproxy)



@pytest.fixture
def devdns() -> Iterator[DevDns]:
    """An authoritative DNS server (devtools.devdns) on 127.0.0.1, stopped afterwards."""
    server = DevDns()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator["PgServer"]:
    """One PostgreSQL server on 127.0.0.1 for the session (devtools.pgserver),
    run as an unprivileged user when the tests run as root; removed at the end."""
    from devtools.pgserver import PgServer

    try:
        server = PgServer()
    except FileNotFoundError as exc:
        pytest.fail(f"PostgreSQL is needed by this test and cannot be started: {exc}", pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A new, empty database on the session's server: its [store].url."""
    import uuid

    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")

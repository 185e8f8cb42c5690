"""Issue 11 #2, attacked: a reload that changes a key applying only after a
restart ([daemon].database, [domain].secret_file...) must leave it, and
what is derived from it, at the running value. Otherwise the domain
secret's default path (next to the database) moves under the open store:
the next reload of the store's state (after any operator action) reads or
creates another secret, every stored challenge's token changes, and the
backups pair the old database with the new secret."""

from __future__ import annotations

from pathlib import Path

from test_service import config_for, offline_site

from cdnreq.configfile import load_config
from cdnreq.service.daemon import Daemon


def test_a_reload_keeps_the_restart_only_keys_and_applies_the_rest(tmp_path: Path):
    site = offline_site(tmp_path)
    path = config_for(site, tmp_path, daemon={"tick_interval_s": 5.0})
    daemon = Daemon(path, load_config(path))
    running = daemon.config
    moved = tmp_path / "moved"
    moved.mkdir(mode=0o700)
    config_for(site, tmp_path, daemon={"tick_interval_s": 7.0, "database": str(moved / "cdnreq.db")},
               domain={"secret_file": str(moved / "secret")})  # fmt: skip
    daemon.reload()
    assert not daemon.config_state.refused, daemon.config_state
    assert daemon.config.daemon.tick_interval_s == 7.0  # the rest is applied
    assert daemon.config.daemon.database == running.daemon.database
    assert daemon.config.secret_path() == running.secret_path()
    assert daemon.config.backup_path() == running.backup_path()
    assert daemon.config.daemon.listen == running.daemon.listen

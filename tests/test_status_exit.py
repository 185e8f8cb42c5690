"""`cdnreq status` exit codes, for scripts and monitoring.

0 the daemon is ready; 1 it is not ready, or its last reload was refused, or
no daemon answers while a database exists; 2 no daemon and no database.
The refused-reload case over a live daemon is in tests/test_reload.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdnreq.cli import status_exit
from devtools.devmaster import CdnSite
from test_service import add_customers, cdnreq, config_for, offline_site, spawn  # noqa: F401  (spawn: a fixture)


def test_status_exit_decides_from_the_daemon_answer():
    assert status_exit({"ready": True}) == 0
    assert status_exit({"ready": True, "config": {"last_reload": None}}) == 0
    assert status_exit({"ready": True, "config": {"last_reload": {"ok": True}}}) == 0
    assert status_exit({"ready": True, "config": {"last_reload": {"ok": False}}}) == 1
    assert status_exit({"ready": False, "config": {"last_reload": {"ok": True}}}) == 1
    assert status_exit(None) == 1


def test_no_daemon_and_no_database_is_2(tmp_path: Path):
    config = config_for(offline_site(tmp_path), tmp_path)
    for extra in ((), ("--json",)):
        shown = cdnreq("status", "--config", config, *extra)
        assert shown.returncode == 2, shown
        assert "no daemon answers and no database" in shown.stderr
    assert not (tmp_path / "state" / "cdnreq.db").exists()  # status created nothing


@pytest.mark.slapproxy
def test_ready_then_no_daemon_with_a_database(cdn_site: CdnSite, tmp_path: Path, spawn):
    add_customers(cdn_site, 1)
    config = config_for(cdn_site, tmp_path, daemon={"tick_interval_s": 5.0})
    daemon = spawn(config)
    daemon.wait_status("/readyz", 200)
    for extra in ((), ("--json",)):
        shown = cdnreq("status", "--config", config, *extra)
        assert shown.returncode == 0, shown
    assert daemon.stop() == 0
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 1, shown
    assert "daemon: not running" in shown.stdout
    assert "no daemon running" in shown.stdout  # not a "(pid None)" nor aiohttp's "ssl:default"
    assert "pid None" not in shown.stdout and "ssl:default" not in shown.stdout
    as_json = cdnreq("status", "--config", config, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["daemon"] is None


@pytest.mark.slapproxy
def test_not_ready_is_1(tmp_path: Path, spawn):
    config = config_for(offline_site(tmp_path), tmp_path)  # the master is a dead port: every tick fails
    daemon = spawn(config)
    daemon.wait_logged("tick failed")
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 1, shown
    assert "NOT READY" in shown.stdout
    assert daemon.stop() == 0


def test_a_refused_file_with_no_daemon_is_not_0(tmp_path: Path):
    config = config_for(offline_site(tmp_path), tmp_path, daemon={"tick_intervall_s": 1.0})
    shown = cdnreq("status", "--config", config)
    assert shown.returncode == 2, shown  # no daemon, no database: still told the file is refused
    assert "configuration refused" in shown.stderr and "tick_intervall_s" in shown.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[daemon\n")
    shown = cdnreq("status", "--config", broken)
    assert shown.returncode == 2 and "not valid TOML" in shown.stderr, shown

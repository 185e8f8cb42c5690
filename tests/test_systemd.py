"""The unit file is valid for systemd, pointed at this checkout's cdnreq."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "cdnreq.service"


def test_unit_file_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    cdnreq = Path(sys.executable).with_name("cdnreq")
    unit = tmp_path / "cdnreq.service"
    unit.write_text(UNIT.read_text().replace("/opt/cdnreq/bin/cdnreq", str(cdnreq)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "cdnreq.service" not in result.stderr, result.stderr  # no warning about our unit


def test_unit_file_reloads_with_sighup_and_keeps_state_in_its_directory():
    text = UNIT.read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "StateDirectory=cdnreq" in text
    assert "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text
    assert "Type=notify" in text and "WatchdogSec=" in text


def test_unit_file_gives_the_daemon_room_for_its_descriptors():
    assert "LimitNOFILE=65536" in UNIT.read_text().splitlines()

"""The unit file is valid for systemd, pointed at this checkout's cdnreq.

Reload is Type=notify-reload (systemd >= 253): SIGHUP, then RELOADING=1 ...
READY=1 from the daemon (tests/test_reload.py checks those over a real
NOTIFY_SOCKET). A drop-in brings back Type=notify + ExecReload for older
systemd.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).parent.parent / "systemd"
UNIT = SYSTEMD / "cdnreq.service"
BEFORE_253 = SYSTEMD / "cdnreq.service.d" / "before-253.conf"


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: {raw!r}"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"line {number}: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_version(analyze: str) -> int:
    out = subprocess.run([analyze, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"systemd (\d+)", out)
    return int(found.group(1)) if found else 0


def verify(analyze: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([analyze, "verify", str(directory / "cdnreq.service")], capture_output=True, text=True)


def install(directory: Path, drop_in: bool) -> None:
    cdnreq = Path(sys.executable).with_name("cdnreq")
    (directory / "cdnreq.service").write_text(UNIT.read_text().replace("/opt/cdnreq/bin/cdnreq", str(cdnreq)))
    if drop_in:
        (directory / "cdnreq.service.d").mkdir()
        shutil.copy(BEFORE_253, directory / "cdnreq.service.d" / BEFORE_253.name)


def unit_warnings(stderr: str, version: int) -> list[str]:
    """Lines about our unit; before 253 the one about notify-reload is expected."""
    lines = [line for line in stderr.splitlines() if "cdnreq.service" in line]
    if version < 253:
        lines = [line for line in lines if "notify-reload" not in line]
    return lines


@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+before-253"])
def test_unit_file_verifies(tmp_path, drop_in):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    version = systemd_version(analyze)
    install(tmp_path, drop_in)
    result = verify(analyze, tmp_path)
    assert result.returncode == 0, result.stderr
    assert unit_warnings(result.stderr, version) == [], result.stderr


def test_the_drop_in_is_read_by_systemd(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    install(tmp_path, drop_in=True)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "cdnreq.service")],
        capture_output=True, text=True, env={"SYSTEMD_LOG_LEVEL": "debug", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    dump = result.stdout + result.stderr  # the unit's dump: where it was read from, what it became
    assert f"DropIn Path: {tmp_path / 'cdnreq.service.d' / BEFORE_253.name}" in dump, dump[-3000:]
    unit = dump[dump.index(f"DropIn Path: {tmp_path}"):]
    assert re.search(r"^\s*Type: notify$", unit, re.M), unit[:3000]


def test_unit_reloads_by_notify_reload_and_keeps_state_in_its_directory():
    service = parse(UNIT.read_text())["Service"]
    assert service["Type"] == ["notify-reload"]
    assert service.get("ReloadSignal", ["SIGHUP"]) == ["SIGHUP"]  # the default; the daemon handles SIGHUP
    assert "ExecReload" not in service  # notify-reload signals by itself; a kill would race it
    assert service["NotifyAccess"] == ["main"] and "WatchdogSec" in service
    assert service["StateDirectory"] == ["cdnreq"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]


def test_refused_configuration_or_store_is_not_restarted_in_a_loop():
    service = parse(UNIT.read_text())["Service"]
    assert service["Restart"] == ["on-failure"]
    prevented = {int(code) for value in service["RestartPreventExitStatus"] for code in value.split()}
    from cdnreq.service.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_TICK_FAILED

    assert prevented == {EXIT_CONFIG, EXIT_DATABASE}
    assert EXIT_TICK_FAILED not in prevented


def test_unit_file_gives_the_daemon_room_for_its_descriptors():
    assert parse(UNIT.read_text())["Service"]["LimitNOFILE"] == ["65536"]


def test_before_253_drop_in_restores_notify_and_exec_reload():
    drop_in = parse(BEFORE_253.read_text())
    assert set(drop_in) == {"Service"}
    assert drop_in["Service"] == {"Type": ["notify"], "ExecReload": ["/bin/kill -HUP $MAINPID"]}


def test_a_refusal_by_exec_start_pre_is_not_retried_for_ever():
    """RestartPreventExitStatus= tests the main process's status only; check-config
    runs as ExecStartPre (a control process), so its exit 2 would restart the
    unit every RestartSec for ever. The start limit must trip first."""
    unit = parse(UNIT.read_text())
    service = unit["Service"]
    assert "ExecStartPre" in service and service["Restart"] == ["on-failure"]
    interval = float(unit["Unit"]["StartLimitIntervalSec"][0])
    burst = int(unit["Unit"]["StartLimitBurst"][0])
    restart_s = float(service["RestartSec"][0])
    assert burst * restart_s < interval  # refused at each start: the limit is reached

"""Packaging hygiene: pyproject.toml reads without setuptools deprecation warnings, the
LICENSE file matches its licence, and scripts/venv.sh installs only when an install input
changed (run against a stand-in python that records its calls: no network, no build)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_reads_without_deprecation_warnings(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), "pyproject.toml")
    assert [f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught] == []


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "GPL-3.0-or-later"
    assert project["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:3] == ["GNU", "GENERAL", "PUBLIC"]
    assert "Version 3, 29 June 2007" in text
    assert "either version 3 of the License, or\n    (at your option) any later version" in text
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])


FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../../calls"
case "$1" in
  -VV) echo "Python 3.11.2 (fake)";;
  -m) [ -f "$(dirname "$0")/../../pip-fails" ] && exit 1;;
esac
exit 0
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with scripts/venv.sh, pyproject.toml and a .venv whose python records calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "venv.sh", tmp_path / "scripts" / "venv.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _venv(checkout: Path, extras: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "venv.sh"), extras],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )


def _installs(checkout: Path) -> int:
    calls = checkout / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    return sum(line.startswith("-m pip install") for line in lines)


def test_venv_installs_once_until_pyproject_changes(checkout):
    assert _venv(checkout, "test").returncode == 0
    assert _installs(checkout) == 1
    second = _venv(checkout, "test")
    assert second.returncode == 0 and second.stderr == ""
    assert _installs(checkout) == 1  # nothing changed: no pip
    assert _venv(checkout, "devmaster").returncode == 0
    assert _installs(checkout) == 2  # other extras: their own stamp
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert _venv(checkout, "test").returncode == 0
    assert _installs(checkout) == 3


def test_venv_retries_after_a_failed_install(checkout):
    (checkout / "pip-fails").touch()
    assert _venv(checkout, "test").returncode != 0
    (checkout / "pip-fails").unlink()
    assert _venv(checkout, "test").returncode == 0
    assert _installs(checkout) == 2  # the failure left no stamp
    assert _venv(checkout, "test").returncode == 0
    assert _installs(checkout) == 2


def test_demo_and_test_scripts_share_venv_sh():
    for script in ("demo.sh", "test.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert "bash scripts/venv.sh" in text, script
        assert "pip install" not in text, script


def _promtool_script(tmp_path: Path, tools: dict[str, str]) -> subprocess.CompletedProcess:
    """scripts/promtool.sh in a checkout whose PATH holds only `tools` (name -> script)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "promtool.sh", tmp_path / "scripts" / "promtool.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dirname", "mktemp", "rm"):
        os.symlink(shutil.which(name), bin_dir / name)
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return subprocess.run(
        [shutil.which("bash"), str(tmp_path / "scripts" / "promtool.sh")],
        capture_output=True, text=True, timeout=60, env={"PATH": str(bin_dir)},
    )


def test_promtool_script_says_why_when_it_cannot_fetch(tmp_path):
    done = _promtool_script(tmp_path, {})
    assert done.returncode != 0
    assert "the promtool test will skip" in done.stderr


def test_promtool_script_uses_promtool_on_path(tmp_path):
    done = _promtool_script(tmp_path, {"promtool": "exit 0", "apt-get": "exit 1", "dpkg": "exit 1"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".venv").exists()


def test_promtool_script_says_why_when_apt_fails(tmp_path):
    done = _promtool_script(tmp_path, {"apt-get": "exit 100", "dpkg": "exit 1"})
    assert done.returncode != 0
    assert "'apt-get download prometheus' failed" in done.stderr


def test_legacy_venv_installs_once_until_the_script_changes(tmp_path: Path):
    """scripts/legacy-venv.sh (issue 12): pip only on a change of the script or the Python."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "legacy-venv.sh"
    shutil.copy(ROOT / "scripts" / "legacy-venv.sh", script)
    python = tmp_path / ".venv-legacy" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)

    def installs() -> list[str]:
        lines = (tmp_path / "calls").read_text().splitlines()
        return [line for line in lines if line.startswith("-m pip install")]

    assert run().returncode == 0
    assert len(installs()) == 1 and "slapos.cookbook==1.0.514" in installs()[0]
    assert "--no-deps" in installs()[0]
    second = run()
    assert second.returncode == 0 and second.stderr == ""
    assert len(installs()) == 1
    with script.open("a") as f:
        f.write("\n# changed\n")
    assert run().returncode == 0
    assert len(installs()) == 2
    assert "bash scripts/legacy-venv.sh" in (ROOT / "scripts" / "test.sh").read_text()

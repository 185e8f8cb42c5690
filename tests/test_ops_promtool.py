"""ops/prometheus/cdnreq-rules.yml passes `promtool check rules`, and its alerts fire
(and stay quiet) on made-up series, as `promtool test rules` evaluates them.

promtool comes from PATH or from .venv/tools/bin, where scripts/test.sh puts it (Debian
package `prometheus`); without it these tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "cdnreq-rules.yml"
TARGET = {"job": "cdnreq", "instance": "cdn-1:9180"}


def _promtool() -> str | None:
    local = ROOT / ".venv" / "tools" / "bin" / "promtool"
    return shutil.which("promtool") or (str(local) if local.is_file() else None)


PROMTOOL = _promtool()
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH nor in .venv/tools/bin (scripts/promtool.sh fetches it from Debian's prometheus package)",
)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rule_count() -> int:
    return sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])


def test_check_rules_passes():
    done = _run("check", "rules", str(RULES), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {_rule_count()} rules found" in done.stdout


def test_check_rules_refuses_a_broken_expression(tmp_path):
    """promtool really reads the expressions: one unbalanced brace fails the file."""
    broken = RULES.read_text().replace(
        'expr: up{job="cdnreq"} == 0', 'expr: up{job="cdnreq" == 0', 1
    )
    assert broken != RULES.read_text()
    (tmp_path / "rules.yml").write_text(broken)
    done = _run("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode != 0


def _series(name: str, values: str, **labels: str) -> dict:
    selector = ",".join(f'{k}="{v}"' for k, v in {**TARGET, **labels}.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


# (alert, input series, eval time, labels of the alert beyond TARGET and the rule's own
# (None: a label it lacks), or None when it must not fire)
SCENARIOS = {
    "down": ("CdnreqDown", [_series("up", "0x10")], "8m", {}),
    "up": ("CdnreqDown", [_series("up", "1x10")], "8m", None),
    "reload refused": (
        "CdnreqConfigReloadRefused",
        [
            _series("cdnreq_config_last_reload_success", "1 1 0 0 0 0"),
            _series("cdnreq_config_last_reload_timestamp_seconds", "100 100 160 160 160 160"),
        ],
        "5m", {},
    ),
    "reload accepted": (
        "CdnreqConfigReloadRefused",
        [
            _series("cdnreq_config_last_reload_success", "1x6"),
            _series("cdnreq_config_last_reload_timestamp_seconds", "100x6"),
        ],
        "5m", None,
    ),
    "no configuration loaded yet": (
        "CdnreqConfigReloadRefused",
        [
            _series("cdnreq_config_last_reload_success", "0x6"),
            _series("cdnreq_config_last_reload_timestamp_seconds", "0x6"),
        ],
        "5m", None,
    ),
    "three failed ticks": ("CdnreqTicksFailing", [_series("cdnreq_consecutive_failed_ticks", "3x10")], "8m", {}),
    "two failed ticks": ("CdnreqTicksFailing", [_series("cdnreq_consecutive_failed_ticks", "2x10")], "8m", None),
    "no tick for two hours": (
        "CdnreqNoSuccessfulTick", [_series("cdnreq_last_successful_tick_timestamp_seconds", "60x150")], "2h", {},
    ),
    "last tick 30 min ago": (
        "CdnreqNoSuccessfulTick", [_series("cdnreq_last_successful_tick_timestamp_seconds", "60x150")], "30m", None,
    ),
    "a standby never ticks": (
        "CdnreqNeverTicked",
        [_series("cdnreq_last_successful_tick_timestamp_seconds", "0x90"), _series("cdnreq_leader", "0x90")],
        "80m", None,
    ),
    "the leader never ticked": (
        "CdnreqNeverTicked",
        [_series("cdnreq_last_successful_tick_timestamp_seconds", "0x90"), _series("cdnreq_leader", "1x90")],
        "80m", {},
    ),
    "a standby that led once": (
        "CdnreqNoSuccessfulTick",
        [_series("cdnreq_last_successful_tick_timestamp_seconds", "60x150"), _series("cdnreq_leader", "0x150")],
        "2h", None,
    ),
    "a standby's failed ticks before it stood down": (
        "CdnreqTicksFailing",
        [_series("cdnreq_consecutive_failed_ticks", "3x10"), _series("cdnreq_leader", "0x10")], "8m", None,
    ),
    "no node leads": (
        "CdnreqNoLeader",
        [_series("cdnreq_leader", "0x10"), _series("cdnreq_leader", "0x10", instance="cdn-2:9180")],
        "5m", {"instance": None},
    ),
    "one node leads": (
        "CdnreqNoLeader",
        [_series("cdnreq_leader", "0x10"), _series("cdnreq_leader", "1x10", instance="cdn-2:9180")],
        "5m", None,
    ),
    "never ticked": ("CdnreqNeverTicked", [_series("cdnreq_last_successful_tick_timestamp_seconds", "0x90")], "80m", {}),
    "backup a day old": (
        "CdnreqBackupStale", [_series("cdnreq_last_backup_timestamp_seconds", "1x1600")], "25h", {},
    ),
    "backup fresh": (
        "CdnreqBackupStale", [_series("cdnreq_last_backup_timestamp_seconds", "1x1600")], "20h", None,
    ),
    "changes held": (
        "CdnreqHeldChangesWaiting",
        [_series("cdnreq_held_updates", "0x60"), _series("cdnreq_held_removals", "2x60")],
        "45m", {},
    ),
    "nothing held": (
        "CdnreqHeldChangesWaiting",
        [_series("cdnreq_held_updates", "0x60"), _series("cdnreq_held_removals", "0x60")],
        "45m", None,
    ),
    "master errors": (
        "CdnreqMasterErrors",
        [
            _series("cdnreq_master_call_duration_seconds_count", "0+10x60", call="get", status="200"),
            _series("cdnreq_master_call_duration_seconds_count", "0+5x60", call="get", status="503"),
        ],
        "45m", {},
    ),
    "master healthy": (
        "CdnreqMasterErrors",
        [
            _series("cdnreq_master_call_duration_seconds_count", "0+10x60", call="get", status="200"),
            _series("cdnreq_master_call_duration_seconds_count", "0x60", call="get", status="503"),
        ],
        "45m", None,
    ),
    "dns unknown": (
        "CdnreqDnsUnknownRising",
        [
            _series("cdnreq_dns_lookups_total", "0+10x90", outcome="found"),
            _series("cdnreq_dns_lookups_total", "0+10x90", outcome="unknown"),
        ],
        "80m", {},
    ),
    "store growing": (
        "CdnreqStoreGrowing", [_series("cdnreq_store_size_bytes", "300000000+10000000x200")], "190h", {},
    ),
    "no target": ("CdnreqAbsent", [_series("up", "1x30", job="other")], "20m", {"instance": None}),
    "no backup": ("CdnreqNoBackup", [_series("cdnreq_last_backup_timestamp_seconds", "0x800")], "13h", {}),
    "actions failing": (
        "CdnreqActionsFailing",
        [
            _series("cdnreq_actions_total", "0+5x60", kind="request", result="failed"),
            _series("cdnreq_actions_total", "0+1x60", kind="request", result="ok"),
        ],
        "45m", {"kind": "request"},
    ),
    "actions mostly fine": (
        "CdnreqActionsFailing",
        [
            _series("cdnreq_actions_total", "0+1x60", kind="request", result="failed"),
            _series("cdnreq_actions_total", "0+5x60", kind="request", result="ok"),
        ],
        "45m", None,
    ),
    "hosts failing recheck": ("CdnreqHostsFailingRecheck", [_series("cdnreq_hosts_failing_recheck", "1x400")], "6h10m", {}),
    "store flat": ("CdnreqStoreGrowing", [_series("cdnreq_store_size_bytes", "900000000x200")], "190h", None),
}


def _without_annotations(tmp_path: Path) -> None:
    """promtool's unit tests compare annotations exactly; the texts are checked elsewhere."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document))


def _group(alert: str, series: list[dict], at: str, labels: dict | None, rules: dict) -> dict:
    """One promtool test group; long scenarios sample (and evaluate) hourly."""
    expected = []
    if labels is not None:
        merged = {**TARGET, **rules[alert]["labels"], **labels}
        expected = [{"exp_labels": {k: v for k, v in merged.items() if v is not None}}]
    return {
        "interval": "1h" if at.endswith("h") and int(at[:-1]) > 100 else "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
    }


def test_alerts_fire_only_when_they_should(tmp_path):
    """All scenarios in one promtool run; a failure names the alert and the time."""
    _without_annotations(tmp_path)
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for interval in ("1m", "1h"):
        groups = [_group(*SCENARIOS[name], rules) for name in sorted(SCENARIOS)]
        groups = [g for g in groups if g["interval"] == interval]
        tests = {"rule_files": ["rules.yml"], "evaluation_interval": interval, "tests": groups}
        (tmp_path / f"tests-{interval}.yml").write_text(yaml.safe_dump(tests))
        done = _run("test", "rules", f"tests-{interval}.yml", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_scenario():
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    firing = {alert for alert, _, _, labels in SCENARIOS.values() if labels is not None}
    assert firing == rules

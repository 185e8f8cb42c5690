"""The Grafana dashboard and the Prometheus rules name only what cdnreq exports.

The exported names come from a real Metrics registry (with every observer called once),
so renaming a metric without updating ops/ fails here, and so does a dashboard that
forgets a metric.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import promql
from cdnreq import metrics as m
from cdnreq.config import Config

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "cdnreq.json"
RULES = ROOT / "ops" / "prometheus" / "cdnreq-rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Labels Prometheus adds to every series it scrapes, and the series it makes itself.
TARGET_LABELS = {"job", "instance"}
SCRAPE_SERIES = {"up": set()}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
# Label values that come from a closed set in cdnreq/metrics.py.
LABEL_VALUES = {
    "result": set(m.RESULTS) | set(m.DELIVERY_RESULTS),  # ticks and actions; webhook deliveries
    "outcome": set(m.DNS_OUTCOMES),
    "kind": set(m.ACTION_KINDS),
    "table": set(m.PRUNED_TABLES),
    "state": set(m.INSTANCE_STATES) | {m.OTHER},
    "call": set(m.MASTER_CALLS) | {m.OTHER},
    "status": set(m.MASTER_STATUSES) | {m.OTHER},
}


def _exported() -> dict[str, set[str]]:
    """Every series name the daemon exposes -> its label names."""
    metrics = m.Metrics()
    metrics.master_call(m.GET, "200", 0.01)
    metrics.dns_lookup("found", 0.001)
    metrics.instances({state: 1 for state in m.INSTANCE_STATES})
    metrics.info("0")
    metrics.config_loaded(True, 1.0, "digest", "/etc/cdnreq/cdnreq.toml")
    metrics.pruned("events", 1)
    metrics.delivered("billing", "delivered")
    metrics.outbox("billing", 1, 1.0, 0)
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for suffix in SUFFIXES[family.type]:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    for name, labels in names.items():
        labels |= TARGET_LABELS
    return names | {k: v | TARGET_LABELS for k, v in SCRAPE_SERIES.items()}


EXPORTED = _exported()


def _families() -> set[str]:
    return {family.name for family in m.Metrics().registry.collect()}


def problems(expr: str) -> list[str]:
    """What in `expr` cdnreq does not export: metrics, labels, label values, functions."""
    found = []
    names = promql.read(expr)
    for function in sorted(names.functions - promql.FUNCTIONS):
        found.append(f"unknown function {function!r}")
    for selector in names.selectors:
        if selector.metric not in EXPORTED:
            found.append(f"metric {selector.metric!r} is not exported")
            continue
        for label, matchers in selector.labels.items():
            if label not in EXPORTED[selector.metric]:
                found.append(f"{selector.metric} has no label {label!r}")
            for op, value in matchers:
                if op in ("=", "!=") and label in LABEL_VALUES and value not in LABEL_VALUES[label]:
                    found.append(f"{selector.metric}{{{label}}} never takes the value {value!r}")
    labels = set().union(*(EXPORTED.get(s.metric, set()) for s in names.selectors)) | {"le"}
    for label in sorted(promql.grouping_labels(expr) - labels):
        found.append(f"grouping by {label!r}, which no metric of the expression has")
    return found


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# -- the checker itself ---------------------------------------------------------


@pytest.mark.parametrize(
    "expr, complaint",
    [
        ('cdnreq_tick_total{job="cdnreq"}', "metric 'cdnreq_tick_total' is not exported"),
        ("cdnreq_ticks", "metric 'cdnreq_ticks' is not exported"),  # the counter needs _total
        ('cdnreq_ticks_total{reslt="ok"}', "cdnreq_ticks_total has no label 'reslt'"),
        ('cdnreq_ticks_total{result="failure"}', "never takes the value 'failure'"),
        ("histogram_quantil(0.5, cdnreq_tick_duration_seconds_bucket)", "unknown function"),
        ("sum by (status) (cdnreq_ticks_total)", "grouping by 'status'"),
    ],
)
def test_checker_flags_what_is_not_exported(expr, complaint):
    assert any(complaint in p for p in problems(expr)), problems(expr)


def test_checker_accepts_real_names():
    expr = 'sum by (kind) (rate(cdnreq_actions_total{job="cdnreq",result="failed"}[5m])) > 0'
    assert problems(expr) == []


# -- dashboard -------------------------------------------------------------------


def test_dashboard_is_importable_grafana_json():
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard.get("id") is None  # an import creates a new dashboard
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"  # provisioning from a file works too
    assert {"job", "instance"} <= variables.keys()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_has_a_title_a_datasource_and_queries():
    panels = _panels(_dashboard())
    assert len(panels) >= 20
    for panel in panels:
        assert panel["title"].strip(), panel
        assert panel["description"].strip(), panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_are_grouped_in_rows_and_do_not_overlap():
    dashboard = _dashboard()
    assert dashboard["panels"][0]["type"] == "row"
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert len(rows) >= 4
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


def test_dashboard_expressions_name_only_exported_metrics():
    dashboard = _dashboard()
    found = {expr: problems(expr) for expr in _dashboard_exprs(dashboard)}
    assert {expr: p for expr, p in found.items() if p} == {}


def test_dashboard_variables_query_an_exported_metric():
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        assert problems(match.group(1)) == []
        assert match.group(2) in EXPORTED[promql.read(match.group(1)).selectors[0].metric]


def test_dashboard_shows_every_metric_cdnreq_exports():
    shown = set()
    for expr in _dashboard_exprs(_dashboard()):
        shown |= promql.read(expr).metrics
    missing = {
        family for family in _families()
        if not any(family + suffix in shown for suffix in ("", "_total", "_bucket", "_count", "_sum", "_info"))
    }
    assert missing == set()


# -- alert rules -----------------------------------------------------------------


def test_rules_name_only_exported_metrics():
    found = {rule["alert"]: problems(rule["expr"]) for rule in _rules()}
    assert {alert: p for alert, p in found.items() if p} == {}


def test_rules_select_the_cdnreq_job():
    for rule in _rules():
        for selector in promql.read(rule["expr"]).selectors:
            assert selector.labels.get("job") == [("=", "cdnreq")], (rule["alert"], selector.metric)


def test_rules_tell_the_operator_what_to_run():
    rules = _rules()
    assert len(rules) >= 10
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert re.fullmatch(r"Cdnreq[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        commands = re.findall(r"`([^`]+)`", annotations["description"])
        assert commands, f"{rule['alert']}: the description names no command to run"


def test_rules_cover_the_documented_failures():
    exprs = " ".join(rule["expr"] for rule in _rules())
    for metric in (
        "up",
        "cdnreq_last_successful_tick_timestamp_seconds",
        "cdnreq_consecutive_failed_ticks",
        "cdnreq_config_last_reload_success",
        "cdnreq_last_backup_timestamp_seconds",
        "cdnreq_master_call_duration_seconds_count",
        "cdnreq_dns_lookups_total",
        "cdnreq_held_updates",
        "cdnreq_held_removals",
        "cdnreq_store_size_bytes",
    ):
        assert re.search(rf"\b{metric}\b", exprs), metric


def test_config_keys_named_in_ops_texts_exist():
    """`[section].key` in a description is a key the configuration has."""
    text = RULES.read_text() + DASHBOARD.read_text()
    keys = set(re.findall(r"\[(\w+)\]\.(\w+)", text))
    assert keys
    sections = Config.model_fields
    for section, key in keys:
        assert section in sections, section
        model = sections[section].annotation
        assert key in model.model_fields, f"[{section}].{key}"

"""cdnreq.metrics: names, types, labels, and no customer data in labels."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdnreq.master import GET, LIST_HOSTED
from cdnreq.metrics import Metrics
from cdnreq.model import Phase
from cdnreq.decide.plan import Kind


def families(metrics: Metrics) -> dict[str, object]:
    body, _ = metrics.render()
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(metrics: Metrics, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of the samples called `name`."""
    body, _ = metrics.render()
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics, name).get(tuple(sorted(labels.items())))


EXPECTED_TYPES = {
    "cdnreq_master_call_duration_seconds": "histogram",
    "cdnreq_master_calls_in_flight": "gauge",
    "cdnreq_dns_lookups_total": "counter",
    "cdnreq_dns_lookup_duration_seconds": "histogram",
    "cdnreq_actions_total": "counter",
    "cdnreq_ticks_total": "counter",
    "cdnreq_tick_duration_seconds": "histogram",
    "cdnreq_last_successful_tick_timestamp_seconds": "gauge",
    "cdnreq_consecutive_failed_ticks": "gauge",
    "cdnreq_instances": "gauge",
    "cdnreq_hosts_proven": "gauge",
    "cdnreq_hosts_failing_recheck": "gauge",
    "cdnreq_build_info": "gauge",
}


def test_render_has_every_metric_with_its_type():
    m = Metrics()
    m.master_call(GET, "200", 0.05)
    m.instances({"live": 1})
    m.info("1.2.3")
    body, content_type = m.render()
    assert content_type == CONTENT_TYPE_LATEST and content_type.startswith("text/plain")
    text = body.decode()
    for name, kind in EXPECTED_TYPES.items():
        assert f"# TYPE {name} {kind}\n" in text, name


def test_exposition_parses_and_uses_its_own_registry():
    m = Metrics()
    m.master_call(LIST_HOSTED, "timeout", 30.0)
    m.dns_lookup("found", 0.002)
    m.tick_finished(True, 1.5, 1_700_000_000.0, 0)
    parsed = families(m)
    assert "cdnreq_master_call_duration_seconds" in parsed
    assert "cdnreq_dns_lookups" in parsed  # counters are named without _total by the parser
    # Never on the global registry: two Metrics in one process do not collide.
    Metrics()
    assert b"cdnreq_" not in generate_latest(REGISTRY)


def test_known_series_exist_at_zero_before_any_event():
    m = Metrics()
    assert samples(m, "cdnreq_ticks_total") == {
        (("result", "ok"),): 0.0,
        (("result", "failed"),): 0.0,
    }
    actions = samples(m, "cdnreq_actions_total")
    assert set(actions) == {
        (("kind", kind), ("result", result))
        for kind in ("request", "update", "poll", "publish", "destroy")
        for result in ("ok", "failed")
    }
    assert set(actions.values()) == {0.0}
    assert value(m, "cdnreq_consecutive_failed_ticks") == 0.0
    assert value(m, "cdnreq_master_calls_in_flight") == 0.0


def test_master_call_labels_and_buckets():
    m = Metrics()
    m.master_call(GET, "200", 0.0005)
    m.master_call(GET, "200", 29.0)
    m.master_call(LIST_HOSTED, "timeout", 30.0)
    assert value(m, "cdnreq_master_call_duration_seconds_count", call=GET, status="200") == 2
    assert value(m, "cdnreq_master_call_duration_seconds_count", call=LIST_HOSTED, status="timeout") == 1
    buckets = samples(m, "cdnreq_master_call_duration_seconds_bucket")
    les = {float(dict(k)["le"]) for k in buckets}
    assert min(les) == 0.001 and max(x for x in les if x != float("inf")) == 30
    assert value(m, "cdnreq_master_call_duration_seconds_bucket", call=GET, status="200", le="0.001") == 1


def test_unknown_label_values_become_other():
    m = Metrics()
    m.master_call("slapos.evil.v0.whatever", "200", 0.1)
    m.master_call(GET, "599", 0.1)
    m.master_call(GET, None, 0.1)
    m.dns_lookup("servfail", 0.1)
    m.action("teleport", True)
    m.instances({"limbo": 3, "live": 2})
    assert value(m, "cdnreq_master_call_duration_seconds_count", call="other", status="200") == 1
    assert value(m, "cdnreq_master_call_duration_seconds_count", call=GET, status="other") == 2
    assert value(m, "cdnreq_dns_lookups_total", outcome="other") == 1
    assert value(m, "cdnreq_actions_total", kind="other", result="ok") == 1
    assert value(m, "cdnreq_instances", state="other") == 3
    assert value(m, "cdnreq_instances", state="live") == 2


def test_enum_and_int_label_values():
    m = Metrics()
    m.master_call(GET, 404, 0.1)
    m.action(Kind.DESTROY, False)
    m.instances({Phase.REQUESTED: 4})
    assert value(m, "cdnreq_master_call_duration_seconds_count", call=GET, status="404") == 1
    assert value(m, "cdnreq_actions_total", kind="destroy", result="failed") == 1
    assert value(m, "cdnreq_instances", state="requested") == 4


def test_dns_lookups_count_by_outcome_and_time():
    m = Metrics()
    for outcome in ("found", "found", "absent", "unknown"):
        m.dns_lookup(outcome, 0.01)
    assert value(m, "cdnreq_dns_lookups_total", outcome="found") == 2
    assert value(m, "cdnreq_dns_lookups_total", outcome="absent") == 1
    assert value(m, "cdnreq_dns_lookup_duration_seconds_count") == 4


def test_bad_durations_do_not_raise():
    m = Metrics()
    m.master_call(GET, "200", float("nan"))
    m.master_call(GET, "200", -1.0)
    m.master_call(GET, "200", "soon")  # type: ignore[arg-type]
    m.dns_lookup("found", float("inf"))
    assert value(m, "cdnreq_master_call_duration_seconds_count", call=GET, status="200") == 1
    assert value(m, "cdnreq_master_call_duration_seconds_sum", call=GET, status="200") == 0
    assert value(m, "cdnreq_dns_lookups_total", outcome="found") == 1


def test_consecutive_failures_count_and_reset():
    m = Metrics()
    m.tick_finished(False, 1.0, 100.0, 1)
    m.tick_finished(False, 1.0, 200.0, 2)
    assert value(m, "cdnreq_consecutive_failed_ticks") == 2
    assert value(m, "cdnreq_last_successful_tick_timestamp_seconds") == 0
    m.tick_finished(True, 2.0, 300.0, 0)
    assert value(m, "cdnreq_consecutive_failed_ticks") == 0
    assert value(m, "cdnreq_last_successful_tick_timestamp_seconds") == 300.0
    m.tick_finished(False, 1.0, 400.0, 1)
    assert value(m, "cdnreq_consecutive_failed_ticks") == 1
    assert value(m, "cdnreq_last_successful_tick_timestamp_seconds") == 300.0  # only on success
    assert value(m, "cdnreq_ticks_total", result="ok") == 1
    assert value(m, "cdnreq_ticks_total", result="failed") == 3
    assert value(m, "cdnreq_tick_duration_seconds_count") == 4
    les = {float(dict(k)["le"]) for k in samples(m, "cdnreq_tick_duration_seconds_bucket")}
    assert min(les) == 0.01 and max(x for x in les if x != float("inf")) == 1800


def test_instance_states_that_disappear_drop_to_zero():
    m = Metrics()
    m.instances({"new": 2, "live": 5, "mystery": 1})
    assert value(m, "cdnreq_instances", state="new") == 2
    assert value(m, "cdnreq_instances", state="other") == 1
    m.instances({"live": 7})
    assert value(m, "cdnreq_instances", state="live") == 7
    assert value(m, "cdnreq_instances", state="new") == 0
    assert value(m, "cdnreq_instances", state="other") == 0
    assert {dict(k)["state"] for k in samples(m, "cdnreq_instances")} == {
        *(p.value for p in Phase),
        "other",
    }


def test_hosts_and_build_info():
    m = Metrics()
    m.hosts(proven=12, failing=1)
    m.info("0.1.0")
    assert value(m, "cdnreq_hosts_proven") == 12
    assert value(m, "cdnreq_hosts_failing_recheck") == 1
    assert value(m, "cdnreq_build_info", version="0.1.0") == 1
    m.info("0.2.0")
    assert samples(m, "cdnreq_build_info") == {(("version", "0.2.0"),): 1.0}


SECRETS = (
    "s3cr3t-T0KEN-4242",
    "SOFTINST-987654",
    "shop.customer-example.com",
    "_cdnreq-challenge.shop.customer-example.com",
    "https://backend.customer-example.com:8443/api?token=s3cr3t-T0KEN-4242",
)


@pytest.mark.parametrize("secret", SECRETS)
def test_customer_data_never_reaches_the_exposition(secret):
    m = Metrics()
    calls = [
        lambda: m.master_call(secret, "200", 0.1),
        lambda: m.master_call(GET, secret, 0.1),
        lambda: m.master_call(f"{GET}/{secret}", f"500 {secret}", 0.1),
        lambda: m.dns_lookup(secret, 0.1),
        lambda: m.dns_lookup(f"unknown: {secret} timed out", 0.1),
        lambda: m.action(secret, True),
        lambda: m.action(f"request {secret}", False),
        lambda: m.instances({secret: 1, "live": 2}),
        lambda: m.instances({f"live:{secret}": 3}),
        lambda: m.holds(SimpleNamespace(ok=True, held_updates={"count": 1}, held_removals=1, error=secret)),
    ]
    for call in calls:
        call()
    m.tick_finished(False, 1.0, 2.0, 1)
    m.hosts(1, 0)
    body, _ = m.render()
    text = body.decode()
    assert secret not in text
    assert secret.lower() not in text.lower()
    assert "customer-example" not in text and "T0KEN" not in text.upper() and "SOFTINST" not in text

"""The daemon's status view: one count of failed ticks, read by /status and the metrics alike."""

from __future__ import annotations

from cdnreq.metrics import Metrics
from cdnreq.reconcile.tick import TickReport
from cdnreq.service.status import TickHistory, readiness


def report(n: int, ok: bool) -> TickReport:
    return TickReport(id=n, started_at=float(n), ok=ok, error=None if ok else "master: 503")


def test_failed_ticks_are_counted_once_and_both_views_agree() -> None:
    history, metrics = TickHistory(), Metrics()
    for n, ok in enumerate([False, False, True, False], start=1):
        history.record(report(n, ok), now=100.0 + n)
        metrics.tick_finished(ok, 1.0, 100.0 + n, history.failed_in_a_row)
    gauge = metrics.registry.get_sample_value("cdnreq_consecutive_failed_ticks")
    assert history.failed_in_a_row == 1 and gauge == 1
    assert history.last_success_at == 103.0
    ready, why = readiness(history, tick_interval_s=30.0, now=110.0)
    assert not ready and why["reason"] == "the last 1 tick(s) failed: master: 503"


def test_ready_after_a_recent_success_only() -> None:
    history = TickHistory()
    assert readiness(history, 30.0, 0.0) == (False, {"ready": False, "reason": "the first tick has not finished"})
    history.record(report(1, True), now=1000.0)
    assert readiness(history, 30.0, 1050.0)[0]
    ready, why = readiness(history, 30.0, 1091.0)
    assert not ready and why["reason"] == "no successful tick for more than 90 s"

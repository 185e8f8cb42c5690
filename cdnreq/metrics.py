"""Prometheus metrics for the daemon, on its own registry.

Every metric lives on the CollectorRegistry of one Metrics object, never on
prometheus_client's global registry, so two daemons in one process (or many
tests) do not collide.

Labels carry no customer data: no instance guid, host name, token, parameter
or error text. Each label value comes from a small fixed set and anything
else becomes ``other``, so a surprise value can neither leak nor blow up the
number of series. The observers (master_call, dns_lookup) accept any label
value or duration without raising: they run inside the master client and the
resolver, and a metric must not break a call.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from cdnreq.master import ERROR, GET, LIST_HOSTED, PUBLISH, REQUEST
from cdnreq.model import Phase

_log = logging.getLogger(__name__)

OTHER = "other"

MASTER_CALLS = frozenset({LIST_HOSTED, REQUEST, GET, PUBLISH, ERROR})
# HTTP statuses the master plausibly answers, plus MasterClient's own labels.
MASTER_STATUSES = frozenset(
    {"200", "201", "202", "204", "301", "302", "304", "307", "308"}
    | {"400", "401", "403", "404", "405", "408", "409", "410", "413", "422", "429"}
    | {"500", "501", "502", "503", "504"}
    | {"timeout", "error"}
)
DNS_OUTCOMES = ("found", "absent", "unknown")
ACTION_KINDS = ("request", "update", "poll", "publish", "destroy")
RESULTS = ("ok", "failed")
INSTANCE_STATES = tuple(p.value for p in Phase)
PRUNED_TABLES = ("events", "ticks", "changes")
DELIVERY_RESULTS = ("delivered", "failed", "dead")

# 1 ms .. 30 s: a healthy master answers in tens of ms; 30 s is the default timeout.
MASTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)
# c-ares answers from cache in < 1 ms; a full timeout with retries is seconds.
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# 10 ms (idle tick) .. 30 min (first tick of a big requester).
TICK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)

_VERSION_MAX = 64


def _label(value: Any, allowed: Iterable[str]) -> str:
    """value as a label if it is one of `allowed`, else ``other``."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):  # bool is an int: never a status
        return OTHER
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and value in allowed:
        return value
    return OTHER


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


class Metrics:
    """The daemon's metrics; `render()` is the body of GET /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._outboxes: set[str] = set()  # consumers whose outbox gauges are set

        self.master_call_duration = Histogram(
            "cdnreq_master_call_duration_seconds",
            "Calls to the SlapOS master, by API call and HTTP status (or timeout/error).",
            ["call", "status"],
            buckets=MASTER_BUCKETS,
            registry=r,
        )
        self.calls_in_flight = Gauge(
            "cdnreq_master_calls_in_flight",
            "Calls to the SlapOS master waiting for an answer.",
            registry=r,
        )
        self.dns_lookups = Counter(
            "cdnreq_dns_lookups",
            "DNS lookups, by outcome (found, absent, unknown).",
            ["outcome"],
            registry=r,
        )
        self.dns_lookup_duration = Histogram(
            "cdnreq_dns_lookup_duration_seconds",
            "Duration of DNS lookups.",
            buckets=DNS_BUCKETS,
            registry=r,
        )
        self.actions = Counter(
            "cdnreq_actions",
            "Actions executed on the technical CDN and the customers, by kind and result.",
            ["kind", "result"],
            registry=r,
        )
        self.held_updates = Gauge(
            "cdnreq_held_updates",
            "Updates of live instances held by the mass-change guard at the last tick.",
            registry=r,
        )
        self.held_removals = Gauge(
            "cdnreq_held_removals",
            "Removals held by the mass-removal guard at the last tick.",
            registry=r,
        )
        self.waiting_admission = Gauge(
            "cdnreq_instances_waiting_admission",
            "Never-seen instances the last tick left for a later one ([daemon].admit_per_tick).",
            registry=r,
        )
        self.ticks = Counter(
            "cdnreq_ticks",
            "Reconciliation ticks, by result.",
            ["result"],
            registry=r,
        )
        self.tick_duration = Histogram(
            "cdnreq_tick_duration_seconds",
            "Duration of reconciliation ticks.",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.last_successful_tick = Gauge(
            "cdnreq_last_successful_tick_timestamp_seconds",
            "Unix time at which the last successful tick finished (0: none yet).",
            registry=r,
        )
        self.leader = Gauge(
            "cdnreq_leader",
            "1 while this node leads (holds the leader lease on PostgreSQL; always on SQLite), 0 on a standby.",
            registry=r,
        )
        self.lease_epoch = Gauge(
            "cdnreq_lease_epoch",
            "The leader lease's epoch as this node last read it (PostgreSQL; it grows at every change of leader).",
            registry=r,
        )
        self.consecutive_failed_ticks = Gauge(
            "cdnreq_consecutive_failed_ticks",
            "Ticks failed in a row since the last successful one.",
            registry=r,
        )
        self.instances_by_state = Gauge(
            "cdnreq_instances",
            "Shared instances known to the store, by phase.",
            ["state"],
            registry=r,
        )
        self.hosts_proven = Gauge(
            "cdnreq_hosts_proven",
            "Custom domains whose ownership is proven.",
            registry=r,
        )
        self.hosts_failing_recheck = Gauge(
            "cdnreq_hosts_failing_recheck",
            "Proven custom domains whose last ownership recheck failed.",
            registry=r,
        )
        self.last_backup = Gauge(
            "cdnreq_last_backup_timestamp_seconds",
            "Unix time of the newest backup of the store in [store].backup_dir (0: none known).",
            registry=r,
        )
        self.build = Info("cdnreq_build", "The running cdnreq.", registry=r)
        self.config_info = Info(
            "cdnreq_config",
            "The configuration the daemon runs: digest of its effective settings and the file it came from.",
            registry=r,
        )
        self.config_reload_success = Gauge(
            "cdnreq_config_last_reload_success",
            "1 if the configuration file was accepted at the last start or reload, 0 if it was refused"
            " (the daemon then keeps running the previous one).",
            registry=r,
        )
        self.config_reload_time = Gauge(
            "cdnreq_config_last_reload_timestamp_seconds",
            "Unix time of the last start or reload attempt, accepted or refused.",
            registry=r,
        )
        self.pruned_rows = Counter(
            "cdnreq_store_pruned_rows",
            "Rows of history (events, ticks) removed past [store].events_retention_days, by table.",
            ["table"],
            registry=r,
        )
        self.store_size = Gauge(
            "cdnreq_store_size_bytes",
            "Size of the database file and its write-ahead log, as last measured.",
            registry=r,
        )

        self.feed_last_id = Gauge(
            "cdnreq_change_feed_last_id",
            "The change feed's last id: it grows by one per change written (rate() gives changes per second).",
            registry=r,
        )
        self.deliveries = Counter(
            "cdnreq_webhook_deliveries",
            "Webhook delivery attempts by consumer and result: delivered, failed (to be retried), dead (given up).",
            ["consumer", "result"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "cdnreq_webhook_outbox_depth",
            "Changes not yet delivered to a consumer: queued, dead-lettered, and not yet queued (an upper bound).",
            ["consumer"],
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "cdnreq_webhook_oldest_undelivered_seconds",
            "Age of the oldest queued delivery of a consumer not done yet (0: none).",
            ["consumer"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "cdnreq_webhook_dead_letters",
            "Deliveries a consumer did not take within max_retry_hours; `cdnreq webhooks retry NAME` sends them again.",
            ["consumer"],
            registry=r,
        )

        # Series known up front exist at 0 before the first event, so rate()
        # and absent() behave from the start.
        for result in RESULTS:
            self.ticks.labels(result=result)
        for kind in ACTION_KINDS:
            for result in RESULTS:
                self.actions.labels(kind=kind, result=result)
        for outcome in DNS_OUTCOMES:
            self.dns_lookups.labels(outcome=outcome)
        for table in PRUNED_TABLES:
            self.pruned_rows.labels(table=table)
        self._states_seen: set[str] = set()

    # -- exposition ---------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def backups_elsewhere(self) -> None:
        """The store's engine is backed up by its own tools (PostgreSQL): no
        backup time is exported, rather than a 0 that alerts would read as
        "no backup"."""
        self.registry.unregister(self.last_backup)

    # -- observers ----------------------------------------------------------

    def master_call(self, call: str, status: str, seconds: float) -> None:
        """MasterClient.observer: (call name, status label, seconds)."""
        duration = _seconds(seconds)
        if duration is None:
            return
        self.master_call_duration.labels(
            call=_label(call, MASTER_CALLS), status=_label(status, MASTER_STATUSES)
        ).observe(duration)

    def dns_lookup(self, outcome: str, seconds: float) -> None:
        """Resolver.observer: (outcome, seconds)."""
        self.dns_lookups.labels(outcome=_label(outcome, DNS_OUTCOMES)).inc()
        duration = _seconds(seconds)
        if duration is not None:
            self.dns_lookup_duration.observe(duration)

    def action(self, kind: str, ok: bool, count: int = 1) -> None:
        """`count` actions of `kind` finished, successfully or not."""
        if count <= 0:
            return
        self.actions.labels(
            kind=_label(kind, ACTION_KINDS), result="ok" if ok else "failed"
        ).inc(count)

    def tick_finished(self, ok: bool, duration_s: float, finished_at: float, failed_in_a_row: int) -> None:
        """One tick ended; finished_at is Unix time; `failed_in_a_row` is the
        daemon's count (one count, which /status shows too)."""
        self.ticks.labels(result="ok" if ok else "failed").inc()
        duration = _seconds(duration_s)
        if duration is not None:
            self.tick_duration.observe(duration)
        if ok:
            when = _seconds(finished_at)
            if when is not None:
                self.last_successful_tick.set(when)
        self.consecutive_failed_ticks.set(failed_in_a_row)

    def holds(self, report: Any) -> None:
        """What a TickReport's guards held; a failed tick knows no better than the last one."""
        if getattr(report, "ok", False):
            self.held_updates.set((getattr(report, "held_updates", None) or {}).get("count", 0))
            self.held_removals.set(int(getattr(report, "held_removals", 0) or 0))
            self.waiting_admission.set(int(getattr(report, "waiting_admission", 0) or 0))

    def instances(self, counts: Mapping[str, int]) -> None:
        """Instances by phase; phases absent from `counts` drop to 0."""
        totals: dict[str, int] = {}
        for state, count in counts.items():
            label = _label(state, INSTANCE_STATES)
            totals[label] = totals.get(label, 0) + int(count)
        self._states_seen.update(totals)
        for state in self._states_seen | set(INSTANCE_STATES):
            self.instances_by_state.labels(state=state).set(totals.get(state, 0))

    def hosts(self, proven: int, failing: int) -> None:
        self.hosts_proven.set(proven)
        self.hosts_failing_recheck.set(failing)

    def info(self, version: str) -> None:
        """cdnreq_build_info{version="..."} 1."""
        self.build.info({"version": str(version)[:_VERSION_MAX]})

    def config_loaded(self, ok: bool, when: float, digest: str | None = None, path: str | None = None) -> None:
        """A start or reload: `ok` False when the file was refused (the digest
        then stays the one of the configuration still running)."""
        self.config_reload_success.set(1 if ok else 0)
        stamp = _seconds(when)
        if stamp is not None:
            self.config_reload_time.set(stamp)
        if ok and digest is not None:
            self.config_info.info({"digest": str(digest)[:_VERSION_MAX], "path": str(path or "")[:256]})

    def delivered(self, consumer: str, result: str, count: int = 1) -> None:
        self.deliveries.labels(consumer=consumer, result=_label(result, DELIVERY_RESULTS)).inc(count)

    def outbox(self, consumer: str, depth: int, oldest_s: float | None, dead: int) -> None:
        self.outbox_depth.labels(consumer=consumer).set(depth)
        self.outbox_oldest.labels(consumer=consumer).set(oldest_s or 0.0)
        self.dead_letters.labels(consumer=consumer).set(dead)
        self._outboxes.add(consumer)

    def outboxes_only(self, consumers: set[str]) -> None:
        """Drop the outbox gauges of consumers no longer configured: a
        consumer removed by a reload kept its last depth on /metrics."""
        for consumer in self._outboxes - consumers:
            for gauge in (self.outbox_depth, self.outbox_oldest, self.dead_letters):
                with contextlib.suppress(KeyError):
                    gauge.remove(consumer)
        self._outboxes &= consumers

    def pruned(self, table: str, rows: int) -> None:
        if rows > 0:
            self.pruned_rows.labels(table=_label(table, PRUNED_TABLES)).inc(rows)

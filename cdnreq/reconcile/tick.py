"""One tick: list, plan, reserve, execute, commit.

The thin shell around the pure planner. It owns the in-memory copy of the
store's records, so an idle tick costs one list call and a diff, not a scan
of the database. Outcomes are committed in batches while the tick runs: a
crash loses at most one batch, and every action is safe to repeat (requests
are keyed by title, destroys of a destroyed entry are no-ops).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import structlog

from cdnreq.config import Config
from cdnreq.dns.challenge import load_secret
from cdnreq.dns.resolver import Resolver
from cdnreq.master import MasterClient, MasterError
from cdnreq.model import Event, InstanceGuid, Record
from cdnreq.reconcile.domains import Domains, DomainStep, Lookups
from cdnreq.reconcile.execute import Outcome, Settings, execute
from cdnreq.reconcile.gate import DomainPolicy
from cdnreq.reconcile.plan import Kind, Plan, Policy, has_entry, held_records, plan, spec_hash
from cdnreq.progress import Progress
from cdnreq.store import Store, StoreError

log = structlog.get_logger("cdnreq.tick")


def policy_of(config: Config) -> Policy:
    cdn = config.technical_cdn
    return Policy(
        request_prefix=cdn.request_prefix,
        spec_hash=spec_hash(cdn.software_release_uri, cdn.software_type, cdn.sla),
        allow_empty=config.daemon.allow_empty,
        max_destroy_fraction=config.daemon.max_destroy_fraction,
        retention_s=config.domain.retention_s,
        verify_interval_s=config.daemon.verify_interval_s,
    )


def domain_policy_of(config: Config) -> DomainPolicy:
    domain = config.domain
    return DomainPolicy(
        label=domain.challenge_label,
        recheck_interval_s=domain.recheck_interval_s,
        grace_s=domain.grace_s,
        release_on_recheck_failure=domain.release_on_recheck_failure,
        cdn_targets=tuple(domain.cdn_targets),
    )


def resolver_of(config: Config) -> Resolver:
    dns = config.dns
    return Resolver(
        nameservers=dns.nameservers or None,
        timeout_s=dns.timeout_s,
        tries=dns.tries,
        concurrency=dns.concurrency,
    )


def settings_of(config: Config) -> Settings:
    cdn = config.technical_cdn
    return Settings(
        software_release_uri=cdn.software_release_uri,
        software_type=cdn.software_type,
        sla=dict(cdn.sla),
        spec_hash=spec_hash(cdn.software_release_uri, cdn.software_type, cdn.sla),
        retry_base_s=config.daemon.retry_base_s,
        retry_max_s=config.daemon.retry_max_s,
    )


@dataclass
class TickReport:
    id: int
    started_at: float
    ok: bool = False
    duration_s: float = 0.0
    planned: dict[str, int] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)
    master_calls: dict[str, int] = field(default_factory=dict)
    hold_reason: str | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """The tick in one log line: zero counts and empty fields left out."""
        summary: dict[str, Any] = {
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "planned": {k: v for k, v in self.planned.items() if v},
            "results": self.results,
            "master_calls": self.master_calls,
            "hold_reason": self.hold_reason,
            "error": self.error,
        }
        return {k: v for k, v in summary.items() if v is not None and v != {}}


class _Committer:
    """Collects outcomes and writes them in few transactions."""

    def __init__(
        self,
        store: Store,
        known: dict[InstanceGuid, Record],
        domains: Domains,
        batch: int,
        every_s: float,
        observe: Callable[[Outcome], None],
    ):
        self.observe = observe
        self.store = store
        self.known = known
        self.domains = domains
        self.batch = batch
        self.every_s = every_s
        self.outcomes: list[Outcome] = []
        self.last_flush = time.monotonic()
        self.lock = asyncio.Lock()
        self.results: Counter[str] = Counter()

    async def add(self, outcome: Outcome) -> None:
        _log_transition(outcome)
        self.observe(outcome)
        self.outcomes.append(outcome)
        self.results[f"{outcome.action.kind.value}:{'ok' if outcome.ok else 'failed'}"] += 1
        if len(self.outcomes) >= self.batch or time.monotonic() - self.last_flush >= self.every_s:
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            outcomes, self.outcomes = self.outcomes, []
            self.last_flush = time.monotonic()
            if not outcomes:
                return
            upserts = [o.record for o in outcomes if o.record is not None]
            forgets = [o.action.guid for o in outcomes if o.record is None]
            events = [e for o in outcomes for e in o.events]
            await self.store.commit(upserts=upserts, forgets=forgets, events=events)
            for outcome in outcomes:
                if outcome.record is None:
                    self.known.pop(outcome.action.guid, None)
                    self.domains.forget(outcome.action.guid)
                else:
                    self.known[outcome.action.guid] = outcome.record


def _log_transition(outcome: Outcome) -> None:
    """Log when an instance starts failing or recovers, not on every retry."""
    before, after = outcome.action.record, outcome.record
    if after is not None and after.failures == 1:
        log.warning(
            "instance failing",
            instance_guid=after.guid,
            action=outcome.action.kind.value,
            error=after.last_error,
        )
    elif outcome.ok and before.failures > 0:
        log.info("instance recovered", instance_guid=before.guid, after_failures=before.failures)


class Reconciler:
    """What lives between ticks: the configuration, the master, the store,
    the resolver, and the in-memory copy of the store's state."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        master: MasterClient,
        resolver: Lookups | None = None,
        progress: Progress | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = 500,
        flush_every_s: float = 1.0,
    ):
        self.config = config
        self.store = store
        self.master = master
        self.resolver = resolver or resolver_of(config)
        self.progress = progress or Progress()
        self.on_outcome = on_outcome
        self.clock = clock
        self.batch = batch
        self.flush_every_s = flush_every_s
        self.known: dict[InstanceGuid, Record] | None = None
        self.domains: Domains | None = None

    async def load(self) -> None:
        """Read the store (and the domain secret) into memory."""
        secret = load_secret(self.config.secret_path())
        self.known = await self.store.load()
        self.domains = Domains(
            policy=domain_policy_of(self.config),
            secret=secret,
            resolver=self.resolver,
            hosts=(await self.store.load_hosts()).values(),
            challenges=await self.store.load_challenges(),
        )
        # The loaded state lives as long as the process: keep the collector
        # from walking it again and again (two full passes over 600 MB cost
        # more than a second a tick at 100,000 instances).
        gc.collect()
        gc.freeze()

    async def tick(self, stop: asyncio.Event | None = None) -> TickReport:
        started = self.clock()
        try:
            tick_id = await self.store.begin_tick(started)
        except StoreError as error:  # a full disk fails the tick, not the daemon
            report = TickReport(id=0, started_at=started, error=f"database: {error}")
            self.known = None
            log.error("tick failed", **report.summary())
            return report
        report = TickReport(id=tick_id, started_at=started)
        self.progress.start_tick(report.id, started)
        try:
            with structlog.contextvars.bound_contextvars(tick=report.id):
                await self._tick(report, stop)
        except asyncio.CancelledError:
            # cancelled at the shutdown timeout: say so in the ticks table
            report.error = "cancelled: calls still in flight at the shutdown timeout"
            report.duration_s = self.clock() - started
            end = self.store.end_tick(
                report.id, finished_at=self.clock(), result="cancelled", summary=report.summary()
            )
            await asyncio.shield(asyncio.ensure_future(end))
            raise
        finally:
            self.progress.finish_tick(report.ok, report.summary(), self.clock())
        return report

    async def _tick(self, report: TickReport, stop: asyncio.Event | None) -> None:
        calls_before = Counter(self.master.calls)
        try:
            await self._run(report, stop)
            report.ok = True
        except MasterError as error:
            report.error = f"master: {error}"
        except StoreError as error:
            report.error = f"database: {error}"
            self.known = None  # reload: memory may be ahead of the database
        except Exception as error:  # a bug must fail one tick, not the daemon
            log.exception("tick crashed")
            report.error = f"internal error: {type(error).__name__}: {error}"
            self.known = None
        finally:
            report.duration_s = self.clock() - report.started_at
            report.master_calls = dict(Counter(self.master.calls) - calls_before)
        try:
            await self.store.end_tick(
                report.id,
                finished_at=self.clock(),
                result="ok" if report.ok else "failed",
                summary=report.summary(),
            )
        except StoreError as error:
            report.ok = False
            report.error = report.error or f"database: {error}"
        (log.info if report.ok else log.error)(
            "tick done" if report.ok else "tick failed", **report.summary()
        )

    async def _run(self, report: TickReport, stop: asyncio.Event | None) -> None:
        if self.known is None or self.domains is None:
            await self.load()
        assert self.known is not None and self.domains is not None
        self.domains.policy = domain_policy_of(self.config)
        progress = self.progress
        progress.phase("listing", None, self.clock())
        listing = await self.master.list_hosted(self.config.master.instance_guid)
        now = self.clock()
        progress.phase("validating", len(listing.instances), now)
        step = await self.domains.step(
            listing.instances, self.known, now, report.id, on_dns=lambda n: progress.phase("dns", n, self.clock())
        )
        progress.phase("planning", None, self.clock())
        the_plan = plan(
            listing,
            self.known,
            now,
            policy_of(self.config),
            gates=step.gates,
            ownership=self.domains.index,
        )
        report.planned = {**the_plan.counts, **step.counts}
        report.hold_reason = the_plan.hold_reason
        await self._reserve(the_plan, step, now, report.id)
        committer = _Committer(
            self.store, self.known, self.domains, self.batch, self.flush_every_s, self._outcome
        )
        progress.phase("executing", len(the_plan.actions), self.clock())
        try:
            await execute(
                the_plan.actions,
                master=self.master,
                settings=settings_of(self.config),
                concurrency=self.config.daemon.concurrency,
                sink=committer.add,
                stop=stop,
                clock=self.clock,
                tick=report.id,
            )
        finally:
            progress.phase("committing", None, self.clock())
            await committer.flush()
            report.results = dict(committer.results)

    def _outcome(self, outcome: Outcome) -> None:
        self.progress.advance()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _reserve(self, the_plan: Plan, step: DomainStep, now: float, tick: int) -> None:
        """Store what was decided before any call is made: new titles (so a
        crash never requests one instance under two titles), held removals,
        retention, proven hosts and issued challenges."""
        assert self.known is not None and self.domains is not None
        held = list(held_records(the_plan, now))
        if the_plan.hold_reason is not None:
            log.error("removals held", count=len(the_plan.held), reason=the_plan.hold_reason)
        updates = {r.guid: r for r in the_plan.updates}
        for action in the_plan.actions:  # a request may reach the master before a crash
            if action.kind is Kind.REQUEST and not has_entry(action.record):
                record = updates.get(action.guid, action.record)
                updates[action.guid] = replace(record, last_action="requesting")
        upserts = [*updates.values(), *held]
        events = [*step.events, *(Event(r.guid, "hold", "held", now, r.last_error, tick) for r in held)]
        events += [Event(g, "forget", "ok", now, "gone, without a technical entry", tick) for g in the_plan.forgets]
        if not (upserts or the_plan.forgets or events or step.host_upserts or step.host_deletes or step.challenges):
            return
        await self.store.commit(
            upserts=upserts,
            forgets=the_plan.forgets,
            events=events,
            host_upserts=step.host_upserts.values(),
            host_deletes=step.host_deletes,
            challenge_upserts=step.challenges,
        )
        for record in upserts:
            self.known[record.guid] = record
        for guid in the_plan.forgets:
            self.known.pop(guid, None)
            self.domains.forget(guid)

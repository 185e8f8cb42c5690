"""One tick: list, plan, reserve, execute, commit.

The thin shell around the pure planner. It owns the in-memory copy of the
store's records, so an idle tick costs one list call and a diff, not a scan
of the database. What needs no DNS answer is planned and executed at once;
instances waiting for DNS are planned, stored and handed to the running
executor group by group as their answers arrive. Outcomes are committed in
batches while the tick runs: a crash loses at most one batch, and every
action is safe to repeat (requests are keyed by title, destroys of a
destroyed entry are no-ops).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import structlog

from cdnreq.aiotasks import next_or_stop
from cdnreq.config import Config
from cdnreq.dns.challenge import SecretError, load_secret, read_secret
from cdnreq.heap import collector_paused, give_back, release_for_reload
from cdnreq.master import LocalResourceError, MasterClient, MasterError
from cdnreq.model import InstanceGuid, Listing, Record
from cdnreq.reconcile.admitting import Admission
from cdnreq.reconcile.applying import Applying
from cdnreq.reconcile.domains import DomainRun, Domains, DomainStep, Lookups
from cdnreq.reconcile.execute import Outcome, execute
from cdnreq.reconcile.names import Names
from cdnreq.reconcile.report import INTERRUPTED, TickReport
from cdnreq.reconcile.sleepers import Sleepers
from cdnreq.reconcile.snapshot import Snapshot, snapshot_of
from cdnreq.reconcile.guardrun import GuardRun
from cdnreq.decide import changes
from cdnreq.decide.actions import IdleCache
from cdnreq.decide.plan import Kind, Plan, plan, plan_decided, read_backs_in
from cdnreq.decide.reservation import reservation
from cdnreq.progress import Progress
from cdnreq.resources import starved
from cdnreq.store import StoreError, TickStore
from cdnreq.wiring import domain_policy_of, policy_of, resolver_of

UNNAMED = "unnamed"  # guard state: hosts their owner stopped naming (Domains.streaks)

log = structlog.get_logger("cdnreq.tick")

StageHook = Callable[[str, Any], None]
"""Sees the tick's decisions as they are made (`cdnreq plan`):
("planned", (Plan, DomainStep)) for the first stage, ("decided", (Plan,
DomainStep)) for each stage DNS decides later, ("held", HeldUpdates) at the
end. Plans are as the guards left them: what is handed to the executor."""


class Reconciler:
    """What lives between ticks: the configuration, the master, the store,
    the resolver, and the in-memory copy of the store's state."""

    def __init__(
        self,
        *,
        config: Config,
        store: TickStore,
        master: MasterClient,
        resolver: Lookups | None = None,
        progress: Progress | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = 500,
        flush_every_s: float = 1.0,
        executor: Callable[..., Any] = execute,
        on_stage: StageHook | None = None,
        read_secret: Callable[[Path], bytes] = load_secret,
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
        self.executor = executor  # `cdnreq plan` passes one that only records the actions
        self.on_stage = on_stage
        self.read_secret = read_secret  # `cdnreq plan` must not create a missing secret
        self.known: dict[InstanceGuid, Record] | None = None
        self.domains: Domains | None = None
        self.idle = IdleCache()
        self.sleepers, self.names = Sleepers(), Names()
        self._quiet_progress = False
        self._streaks: dict[str, Any] | None = None
        self.admission = Admission()  # newcomers not known yet (decide/admission.py)

    async def load(self) -> None:
        """Read the store (and the domain secret) into memory."""
        secret = self.read_secret(self.config.secret_path())
        self.read_secret = read_secret  # made at the first load only: one lost later fails the ticks, naming it
        self.idle, self.sleepers, self.names = IdleCache(), Sleepers(), Names()
        self.known = await self.store.load(awake_only=True)
        self.domains = Domains(
            policy=domain_policy_of(self.config),
            secret=secret,
            resolver=self.resolver,
            hosts=(await self.store.load_hosts()).values(),
            challenges=await self.store.load_challenges(awake_only=True),
            confirm_ticks=self.config.daemon.confirm_ticks,
            streaks=(await self.store.load_guards()).get(UNNAMED),
            kept=await self.store.load_decisions(awake_only=True),
        )
        await self.sleepers.restore(self.store, self.known, self.domains, policy_of(self.config))
        self._streaks = self.domains.streaks()
        # The loaded state lives as long as the process: keep the collector
        # from walking it again and again (two full passes over 600 MB cost
        # more than a second a tick at 100,000 instances).
        gc.unfreeze()  # what an earlier load froze, dropped since, is found too
        gc.collect()
        gc.freeze()
        give_back()  # the rows read, freed

    def snapshot(self) -> Snapshot:
        """What observers may read (a walk over the fleet: the caller paces it)."""
        index = self.domains.index.by_host.values() if self.domains is not None else None
        return snapshot_of(self.known, index, self.sleepers.phases())

    @property
    def calls_in_flight(self) -> int:
        return self.master.in_flight

    async def reconfigure(
        self, config: Config, *, master: MasterClient | None = None, resolver: Lookups | None = None
    ) -> None:
        """Between ticks: run the next tick with `config`, and with new
        clients when given (the old ones are closed)."""
        self.config = config
        if master is not None:
            old, self.master = self.master, master
            await old.close()
        if resolver is not None:
            old_resolver, self.resolver = self.resolver, resolver
            if self.domains is not None:
                self.domains.resolver = resolver
            await old_resolver.close()

    def reread(self) -> None:
        """The store was changed from outside a tick (an operator action, a
        new leader's term): the next tick reads it again. The copy goes now,
        freed before the load builds the next: never two held at once."""
        self.known, self.domains = None, None
        self.idle, self.sleepers, self.names = IdleCache(), Sleepers(), Names()
        release_for_reload()

    async def close(self) -> None:
        await self.master.close()
        await self.resolver.close()

    async def tick(self, stop: asyncio.Event | None = None, *, at_once: bool = False) -> TickReport:
        """One tick. Stopped mid-way (`stop` set while work was left, or
        cancelled at the shutdown timeout) it is recorded as INTERRUPTED, not
        ok: what was done is committed, the rest waits for the next tick.
        `at_once`: started without waiting for the schedule, because the last
        one left newcomers waiting (report.admit_again): no new sighting for
        the guards that count ticks (decide/admission.py)."""
        self.admission.begin(at_once)
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
            report.error = "interrupted: cancelled with calls still in flight at the shutdown timeout"
            report.interrupted = True
            report.duration_s = self.clock() - started
            end = self.store.end_tick(
                report.id, finished_at=self.clock(), result=INTERRUPTED, summary=report.summary()
            )
            await asyncio.shield(asyncio.ensure_future(end))
            log.warning("tick interrupted", tick=report.id, **report.summary())
            raise
        finally:
            self.progress.finish_tick(report.ok, report.summary(), self.clock())
            give_back()  # the listing and the plan, freed
        self.admission.end(report)
        return report

    async def _tick(self, report: TickReport, stop: asyncio.Event | None) -> None:
        calls_before = Counter(self.master.calls)
        try:
            await self._run(report, stop)
            report.error = starved(report.shortages, sum(report.results.values()))
            report.ok = report.error is None
            if report.interrupted:
                report.ok = False
                also = f"; {report.error}" if report.error else ""
                report.error = f"interrupted: the daemon stopped during this tick{also}"
        except MasterError as error:  # a shortage here is not the master's
            report.error = f"{'local resources' if isinstance(error, LocalResourceError) else 'master'}: {error}"
        except StoreError as error:
            report.error = f"database: {error}"
            self.known = None  # reload: memory may be ahead of the database
        except SecretError as error:  # the domain secret lost under the daemon
            report.error = f"domain secret: {error}"
            self.known = None
        except Exception as error:  # a bug must fail one tick, not the daemon
            log.exception("tick crashed")
            report.error = f"internal error: {type(error).__name__}: {error}"
            self.known = None
        finally:
            report.duration_s = self.clock() - report.started_at
            report.master_calls = dict(Counter(self.master.calls) - calls_before)
        if report.interrupted and not (report.error or "").startswith("interrupted"):
            report.interrupted = False  # it failed on its own account: a failure, not an interruption
        try:
            await self.store.end_tick(
                report.id,
                finished_at=self.clock(),
                result=INTERRUPTED if report.interrupted else "ok" if report.ok else "failed",
                summary=report.summary(),
            )
        except StoreError as error:
            report.ok = False
            report.error = report.error or f"database: {error}"
        if report.interrupted:
            log.warning("tick interrupted", **report.summary())
        else:
            (log.info if report.ok else log.error)(
                "tick done" if report.ok else "tick failed", **report.summary()
            )

    async def _run(self, report: TickReport, stop: asyncio.Event | None) -> None:
        """List, decide, store the decisions, apply them, record the outcomes."""
        await self._refresh()
        with collector_paused():  # the listing and the plan: 100,000s of short-lived objects
            # the listing is let go of here, not held to the tick's end: what
            # the collector finds alive when it resumes, it walks
            guard, run, first = await self._decide(await self._list(report), report)
        await self._reserve_first(guard, run, first, report)  # before any call: a crash errs on holding
        applying = Applying(self, first, report, stop)
        try:
            if run.later:  # requests go out while the rest waits for DNS
                self.progress.phase("dns", run.dns_total, self.clock())
                self._quiet_progress = True
                with collector_paused():  # the step's objects, as in the first stage
                    await self._decide_later(run, first, applying, report, stop, guard)
                if guard.view() != report.held_updates:  # a later stage held more
                    await guard.save(None, report.id)
                    report.held_updates = guard.view()
                self._quiet_progress = False
            await self._reserve_last(guard, run, report)
            await applying.finish()
        finally:
            self._quiet_progress = False
            await applying.settle()

    async def _refresh(self) -> None:
        """Read the store again when a failure or an operator made the copy stale."""
        if self.known is None or self.domains is None:
            await self.load()
        assert self.domains is not None
        if (policy := domain_policy_of(self.config)) != self.domains.policy:  # else the same object: see gate._pending
            self.domains.policy = policy
        self.domains.confirm_ticks = self.config.daemon.confirm_ticks

    async def _list(self, report: TickReport) -> Listing:
        """The listing, with at most [daemon].admit_per_tick newcomers (decide/admission.py)."""
        assert self.known is not None
        self.progress.phase("listing", None, self.clock())
        listing = await self.master.list_hosted(self.config.master.instance_guid)
        if listing.unusable:  # each is told why; nothing else happens to them this tick
            log.warning("unusable listing entries", count=len(listing.unusable),
                        entries=dict(list(listing.unusable.items())[:20]))
        return self.admission.admit(listing, self.known, self.sleepers.keys(), self.clock(), self.config.daemon, report)

    async def _decide(self, listing: Listing, report: TickReport) -> tuple[GuardRun, DomainRun, Plan]:
        """Validate, gate what needs no DNS answer, plan, and let the guards sift the plan."""
        assert self.known is not None and self.domains is not None
        now = self.clock()
        policy = policy_of(self.config)
        sighting, listed_at = self.admission.sighting, self.admission.queue.listed_at  # decide/admission.py
        guard = await GuardRun.start(self.store, self.config, self.known, now, self.sleepers, sighting)
        self.idle = await self.sleepers.settle(listing, now, store=self.store, known=self.known, domains=self.domains,
                                               idle=self.idle, policy=policy, keep_absent=guard.keeps_absent(listing))
        await self.names.keep(listing, self.known, self.sleepers.keys(), self.store)  # before any change is written
        self.progress.phase("validating", len(listing.instances), now)
        run = self.domains.start(listing.instances, self.known, now, report.id, asleep=self.sleepers.keys(),
                                 listed_at=listed_at, sighting=sighting)
        self.progress.phase("planning", None, self.clock())
        the_plan = plan(
            listing, self.known, now, policy, gates=run.first.gates, ownership=self.domains.index, idle=self.idle,
            later=run.later, recent=guard.recent, approved_removals=guard.approved_removals, asleep=self.sleepers,
            listed_at=listed_at, held_before=guard.held_before,
        )
        self.idle = the_plan.idle or IdleCache()
        the_plan = guard.sift(the_plan)
        report.hold_reason = the_plan.hold_reason
        report.held_removals = the_plan.counts.get("held", 0)  # retained entries listed destroyed too
        return guard, run, the_plan

    async def _reserve_first(self, guard: GuardRun, run: DomainRun, the_plan: Plan, report: TickReport) -> None:
        assert self.domains is not None
        now = run.now
        planned = Counter(the_plan.counts)
        planned.update(run.first.counts)
        report.planned = dict(planned)
        leaving = [a.guid for a in the_plan.actions if a.kind is Kind.DESTROY and a.forget]
        if leaving:  # their hosts and challenges go with the decision, see Domains.leave
            run.first.merge(self.domains.leave(leaving, now, report.id))
        self._stage("planned", (the_plan, run.first))
        await guard.save(the_plan, report.id)
        report.removals_fingerprint = guard.removals_fingerprint
        report.held_updates = guard.view()
        await self._reserve(the_plan, run.first, now, report.id)

    async def _reserve_last(self, guard: GuardRun, run: DomainRun, report: TickReport) -> None:
        """What the domain step decided at its end (hosts released, streaks)."""
        assert self.domains is not None
        self._stage("held", guard.updates.state())
        await self._reserve(Plan(()), run.finish(), run.now, report.id)
        if (streaks := self.domains.streaks()) != self._streaks:  # idle ticks write nothing
            await self.store.save_guards({UNNAMED: streaks}, run.now)
            self._streaks = streaks

    async def _decide_later(self, run: DomainRun, first: Plan, applying: Applying, report: TickReport,
                            stop: asyncio.Event | None, guard: GuardRun) -> None:
        """Plan, store and hand over each group of instances as DNS decides
        it; an instance still waiting for its answers is never requested."""
        assert self.known is not None and self.domains is not None
        acted = {a.guid for a in first.actions}
        read_backs = read_backs_in(first.actions)  # the tick's cap, over its stages
        async with contextlib.aclosing(run.resolve()) as parts:
            while True:  # the lookups still running at a stop are not waited for: nothing needs them
                ended, part = await next_or_stop(anext(parts, None), stop)
                if not ended or part is None:
                    break
                decided = [run.present.get(g) or run.settled[g] for g in part.gates]
                # an owner asleep names all its hosts and is listed: none can be taken
                # from it; were one, it is woken to be planned with its record
                await self.sleepers.wake(part.taken_from, store=self.store, known=self.known, domains=self.domains)
                losers = [self.known[g] for g in part.taken_from if g not in acted and g in self.known]
                the_plan = plan_decided(
                    decided,
                    self.known,
                    run.now,
                    policy_of(self.config),
                    gates=part.gates,
                    ownership=self.domains.index,
                    losers=losers,
                    asleep=self.sleepers,
                    listed_at=self.admission.queue.listed_at,
                    read_backs=read_backs,
                )
                read_backs += read_backs_in(the_plan.actions)
                the_plan = guard.sift(the_plan)
                self._stage("decided", (the_plan, part))
                acted.update(a.guid for a in the_plan.actions)
                applying.planned.update(the_plan.counts)
                applying.planned.update(part.counts)
                await self._reserve(the_plan, part, run.now, report.id)
                applying.feed.extend(the_plan.actions)
                if applying.executing.done():
                    break  # the executor failed: raised by the caller
        if stop is not None and stop.is_set():
            report.interrupted = True  # DNS stages left undecided (or, rarely, just decided: stop came between)

    def _stage(self, name: str, decided: Any) -> None:
        if self.on_stage is not None:
            self.on_stage(name, decided)

    def observe_outcome(self, outcome: Outcome) -> None:
        if not self._quiet_progress:  # while DNS runs, its phase counts lookups
            self.progress.advance()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _reserve(self, the_plan: Plan, step: DomainStep, now: float, tick: int) -> None:
        """Store what was decided before any call is made (see decide/reservation.py)."""
        assert self.known is not None and self.domains is not None
        if the_plan.hold_reason is not None:
            log.error("removals held", count=the_plan.counts.get("held", len(the_plan.held)), reason=the_plan.hold_reason)
        reserved = reservation(the_plan, now, tick)
        if not (reserved or step.events or step.host_upserts or step.host_deletes
                or step.challenges or step.challenge_deletes or step.decisions):
            return
        feed = changes.of_reservation(self.known, reserved, self.domains.index.take_was(), step, now)
        await self.store.commit(
            upserts=reserved.upserts,
            events=[*step.events, *reserved.events],
            host_upserts=step.host_upserts.values(),
            host_deletes=step.host_deletes,
            challenge_upserts=step.challenges,
            challenge_deletes=step.challenge_deletes,
            decisions=step.decisions.values(),
            changes=feed,
        )
        for record in reserved.upserts:
            self.known[record.guid] = record

"""Operator actions, applied: read what the decision needs, decide
(cdnreq/decide/operator.py), write the change in one transaction.

Called by the daemon (under its `writing` lock, between ticks) for a
request on `POST /actions/NAME`, and by the command itself, holding the
store's lock, when no daemon runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from cdnreq import render
from cdnreq.store.outbox import Outbox, summary
from cdnreq.scrub import printable
from cdnreq.decide import changes as feed
from cdnreq.master import MasterError
from cdnreq.decide import operator as decide
from cdnreq.reconcile.execute import Master, read_back_destroyed
from cdnreq.reconcile.guardrun import APPROVAL, HELD_REMOVALS, UPDATES, guard_policy_of, held_view
from cdnreq.decide.guards import GuardPolicy, HeldRemovals, HeldUpdates
from cdnreq.decide.operator import Change, OperatorAction, Refusal
from cdnreq.store import Engine

log = structlog.get_logger("cdnreq.operator")

__all__ = ["Result", "apply", "guard_policy_of"]


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool  # False: refused, `message` says why
    message: str


async def apply(
    store: Engine, master: Master | None, action: OperatorAction, *, policy: GuardPolicy | None = None,
    now: float | None = None,
) -> Result:
    """Decide and write one operator action; a refusal writes nothing."""
    now = time.time() if now is None else now
    if action.name == decide.REDELIVER:
        return await _redeliver(store, action, now)
    decision = await _decide(store, master, action, now)
    if isinstance(decision, Refusal):
        log.warning("operator action refused", action=action.name, reason=decision.reason, who=action.by)
        return Result(False, decision.reason)
    await _write(store, decision, now)
    log.info("operator action", action=action.name, result=decision.message, who=action.by)
    return Result(True, _message(decision, policy or GuardPolicy()))


async def _redeliver(store: Engine, action: OperatorAction, now: float) -> Result:
    outbox = Outbox(store, action.consumer or "")
    dead = (await summary(store, now)).get(outbox.consumer, {}).get("dead", 0)
    if not dead:
        return Result(False, f"consumer {printable(outbox.consumer)!r} has no dead-lettered delivery")
    await outbox.redeliver(now)
    log.info("operator action", action=action.name, consumer=outbox.consumer, deliveries=dead, who=action.by)
    return Result(True, f"{dead} dead-lettered deliveries to {printable(outbox.consumer)} are sent again")


async def _decide(store: Engine, master: Master | None, action: OperatorAction, now: float) -> Change | Refusal:
    if action.name == decide.APPROVE:
        guards = await store.load_guards()
        updates = HeldUpdates.from_json(guards.get(UPDATES))
        removals = HeldRemovals.from_json(guards.get(HELD_REMOVALS))
        return decide.approve(action, updates, removals, now, APPROVAL)
    if action.name == decide.RETRY:
        return decide.retry(action, await store.get(action.guid or ""), now)
    if action.name == decide.RELEASE:
        return decide.release(action, await store.load_hosts(), await store.load(), now)
    if action.name == decide.FORGET:
        return await _forget(store, master, action, now)
    return Refusal(f"unknown operator action {action.name!r}")


async def _forget(store: Engine, master: Master | None, action: OperatorAction, now: float) -> Change | Refusal:
    record = await store.get(action.guid or "")
    check = decide.forget_check(action, record)
    if isinstance(check, Refusal):
        return check
    assert record is not None
    read = None
    if check is not None:
        if master is None:
            return Refusal(f"{record.guid}: no master to read its technical entry {check} back from")
        try:
            read = await read_back_destroyed(master, check)
        except MasterError as error:
            return Refusal(f"{record.guid}: could not read its technical entry {check} back from the master: {error}")
    return decide.forget(action, record, read, now)


async def _write(store: Engine, change: Change, now: float) -> None:
    if change.guards:
        await store.save_guards(change.guards, now)
    before = await store.load_hosts() if change.host_upserts or change.host_deletes else {}
    await store.commit(
        upserts=change.upserts,
        forgets=change.forgets,
        events=change.events,
        host_upserts=change.host_upserts,
        host_deletes=change.host_deletes,
        changes=feed.of_hosts(before, list(change.host_upserts), list(change.host_deletes), now),
    )


def _message(change: Change, policy: GuardPolicy) -> str:
    """What the operator reads: for an approval, the sets approved as
    `cdnreq status` lists them."""
    lines = [change.message]
    if change.approved_updates is not None:
        view = held_view(change.approved_updates, policy)
        if view is not None:
            lines.append(render.held_updates(view, approved=True).rstrip("\n"))
    if change.approved_removals is not None:
        removals = change.approved_removals
        lines.append(f"approved {len(removals.guids)} removal(s), fingerprint {removals.fingerprint}")
        lines.append(f"  {removals.reason}")
        lines += [f"  {g}" for g in removals.guids[:5]]
        lines.append("  applied at the next tick, if no other removal is held with them")
    return "\n".join(lines) + "\n"

"""`cdnreq plan`: what the next tick would do, from the daemon's own tick.

One real tick runs against the live master and a read-only snapshot of the
store, with the stand-ins of cdnreq/reconcile/dry.py: the listing is read,
validated, checked by DNS and planned by the same code as `cdnreq once`, and
the actions handed to the executor are shown instead of carried out. No
write reaches the master, the database or the file system; no lock is
taken, so it runs next to the daemon. Exit codes: 0 a plan was made, 1 none
could be (master unreachable...), 2 configuration refused, 3 the database
was lost (missing while backups of it exist: `run` would refuse too) or
cannot be read. With no database at all (a first deployment), the plan starts
from an empty store in a temporary directory, as the first tick would.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

from cdnreq.config import Config
from cdnreq.service.exits import EXIT_DATABASE, EXIT_OK, EXIT_TICK_FAILED
from cdnreq.wiring import master_client
from cdnreq.explain import iso
from cdnreq.fdlimit import fit_config, raise_fd_limit
from cdnreq.model import InstanceGuid, Record
from cdnreq.preflight import master_context
from cdnreq.reconcile.dry import ActionLog, DryStore, ReadOnlyMaster, read_secret
from cdnreq.decide.gate import Gate, Status
from cdnreq.decide.guards import HeldUpdates
from cdnreq.decide.plan import Action, Kind, Plan
from cdnreq.decide.domainstep import DomainStep
from cdnreq.reconcile.tick import Reconciler, TickReport
from cdnreq.scrub import printable
from cdnreq.store.engines import is_postgres, open_engine
from cdnreq.store import Engine, Store, start_refusal

KINDS = ("request", "update", "destroy", "publish", "poll")  # in the order they are shown
TITLES = {
    "request": "would request", "update": "would update", "destroy": "would destroy",
    "publish": "would publish", "poll": "would read back",
}


class Stages:
    """The tick's decisions, as Reconciler.on_stage hands them over."""

    def __init__(self) -> None:
        self.plans: list[Plan] = []
        self.gates: dict[str, Gate] = {}
        self.held_updates = HeldUpdates()

    def __call__(self, name: str, decided: Any) -> None:
        if name == "held":
            self.held_updates = decided
            return
        plan, step = decided
        self.plans.append(plan)
        if isinstance(step, DomainStep):
            self.gates.update(step.gates)


def _action_row(action: Action) -> dict[str, Any]:
    row = {
        "instance_guid": action.guid,
        "title": action.record.title,
        "reason": action.reason,
        "why": action.gate.why if action.gate is not None else None,
    }
    if action.kind is Kind.DESTROY:
        row["forget_after_read_back"] = action.forget  # False: kept (retained, or still listed)
    return row


def _held(first: Plan, updates: HeldUpdates, confirm_ticks: int) -> dict[str, Any]:
    """Removals held by the removal guard, updates held by the update guard.
    The removals are the set the tick keeps for `cdnreq approve`
    (Plan.withheld): the records it marks removing, and the retained
    entries listed destroyed and the sleepers it holds without a write."""
    return {
        "removals": {"reason": first.hold_reason, "instances": sorted(first.withheld)},
        "updates": {
            "reason": updates.reason,
            "fingerprint": updates.fingerprint,
            "instances": [
                {"instance_guid": g, "seen": streak, "needed": confirm_ticks}
                for g, (_, streak) in sorted(updates.streaks.items())
            ],
        },
    }


def document(
    actions: Iterable[Action],
    stages: Stages,
    dry: DryStore,
    report: TickReport,
    known: Mapping[InstanceGuid, Record],
    now: float,
    confirm_ticks: int,
    waiting: Iterable[str] = (),
) -> dict[str, Any]:
    """The plan as one JSON-ready document, every list sorted: the same
    state of master and store gives the same document."""
    would: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    refused = {g: gate for g, gate in stages.gates.items() if gate.status is Status.INVALID}
    for action in actions:
        would[action.counted_as].append(_action_row(action))
        if action.gate is not None and action.gate.status is Status.INVALID:  # unusable listing entries too
            refused.setdefault(action.guid, action.gate)
    for rows in would.values():
        rows.sort(key=lambda r: (r["instance_guid"], r["reason"]))
    first = stages.plans[0] if stages.plans else Plan(())
    gates = stages.gates
    held_updates = stages.held_updates
    doc: dict[str, Any] = {
        "tick": report.id,
        "ok": report.error is None,
        "error": report.error,
        "would": would,
        "held": _held(first, held_updates, confirm_ticks),
        "errors": [{"instance_guid": g, "error": gate.why} for g, gate in sorted(refused.items())],
        "pending": sorted(
            ({"instance_guid": g, "why": gate.why} for g, gate in gates.items() if gate.status is Status.PENDING),
            key=lambda r: r["instance_guid"],
        ),
        "backoff": [
            {"instance_guid": r.guid, "retry_at": iso(r.retry_at), "last_error": r.last_error}
            for r in sorted(known.values(), key=lambda r: r.guid)
            if r.retry_at is not None and r.retry_at > now
        ],
        "challenges": sorted(
            ({"instance_guid": c.guid, "domain": c.domain} for c in dry.challenges),
            key=lambda r: r["instance_guid"],
        ),
        "waiting_admission": sorted(waiting),  # new, left for a later tick: [daemon].admit_per_tick
        "planned": {k: v for k, v in sorted(report.planned.items()) if v},
        "master_calls": dict(sorted(report.master_calls.items())),
        "writes_skipped": dict(sorted(dry.writes.items())),
    }
    doc["counts"] = counts(doc)
    return doc


def counts(doc: Mapping[str, Any]) -> dict[str, int]:
    held = doc["held"]
    out = {kind: len(doc["would"][kind]) for kind in KINDS}
    out.update(
        held_removals=len(held["removals"]["instances"]),
        held_updates=len(held["updates"]["instances"]),
        errors=len(doc["errors"]),
        pending=len(doc["pending"]),
        backoff=len(doc["backoff"]),
        challenges=len(doc["challenges"]),
        waiting_admission=len(doc.get("waiting_admission", ())),
    )
    return out


def _rows(out: list[str], title: str, rows: list[Mapping[str, Any]], *fields: str) -> None:
    if not rows:
        return
    out.append(f"{title} ({len(rows)}):")
    for row in rows:
        parts = [str(row[f]) for f in fields if row.get(f) not in (None, "")]
        out.append("  " + "  ".join(parts))


def render(doc: Mapping[str, Any]) -> str:
    """The plan for a reader: one group per kind of action, then what is
    held and why, then the errors per instance, then the totals."""
    if not doc["ok"]:
        return printable(f"no plan: {doc['error']}") + "\n"
    out = []
    if doc.get("first_tick"):
        out.append("no database yet: this is the plan of the first tick, from an empty store")
    out.append(f"plan of tick {doc['tick']} (dry run: nothing was sent to the master or written)")
    for kind in KINDS:
        _rows(out, TITLES[kind], doc["would"][kind], "instance_guid", "title", "reason", "why")
    removals, updates = doc["held"]["removals"], doc["held"]["updates"]
    if removals["instances"]:
        out.append(f"held removals ({len(removals['instances'])}): {removals['reason']}")
        out += [f"  {g}" for g in removals["instances"]]
    if updates["instances"]:
        out.append(f"held updates ({len(updates['instances'])}): {updates['reason']}")
        out += [f"  {r['instance_guid']}  seen {r['seen']} of {r['needed']} ticks" for r in updates["instances"]]
    _rows(out, "errors", doc["errors"], "instance_guid", "error")
    _rows(out, "waiting for DNS proof", doc["pending"], "instance_guid", "why")
    _rows(out, "backing off", doc["backoff"], "instance_guid", "retry_at", "last_error")
    _rows(out, "would issue a DNS challenge", doc["challenges"], "instance_guid", "domain")
    if doc.get("waiting_admission"):
        out.append(f"new instances left for later ticks ({len(doc['waiting_admission'])}):"
                   " [daemon].admit_per_tick; the daemon takes the first listed first, a plan by guid")
        out += [f"  {g}" for g in doc["waiting_admission"]]
    c = doc["counts"]
    out.append(
        "totals: " + ", ".join(f"{name} {c[key]}" for name, key in (
            ("request", "request"), ("update", "update"), ("destroy", "destroy"), ("publish", "publish"),
            ("read back", "poll"), ("held", "held_removals"),
            ("held updates", "held_updates"), ("errors", "errors"), ("pending", "pending"),
        ))
    )
    if any(c[k] for k in ("request", "update", "poll")):
        out.append(FOLLOW_UPS)
    # guids, titles and reasons come from the master and its customers: an
    # escape sequence in one must not repaint the operator's terminal
    return "".join(printable(line) + "\n" for line in out)


FOLLOW_UPS = (
    "(a request, update or read-back is also followed by a publication to its customer when what the"
    " customer is shown changes: that the entry is being deployed, then the technical CDN's answer."
    " Those depend on the master's answers, so they are not in `publish`.)"
)


async def make_plan(config: Config, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Run one dry tick; StoreError when the snapshot cannot be read."""
    if is_postgres(config):  # read as a standby reads (each read its own snapshot), never the lease
        shared = await open_engine(config, lock=False)
        if shared.schema_version > 0:
            return await _plan_on(config, shared, ssl_context)
        await shared.close()  # no node has led yet: the first tick starts from nothing, as below
    elif config.daemon.database.exists():
        return await _plan_on(config, await Store.open_snapshot(config.daemon.database), ssl_context)
    with tempfile.TemporaryDirectory(prefix="cdnreq-plan-") as scratch:  # never the configured place
        doc = await _plan_on(config, await Store.open(Path(scratch) / "empty.db", lock=False), ssl_context)
    doc["first_tick"] = True
    return doc


async def _plan_on(config: Config, snapshot: Engine, ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    dry = DryStore(snapshot)
    stages, log = Stages(), ActionLog()
    try:
        async with master_client(config, None, ssl_context) as client:
            master = ReadOnlyMaster(client)
            reconciler = Reconciler(
                config=config, store=dry, master=master,  # type: ignore[arg-type]
                executor=log, on_stage=stages, read_secret=read_secret,
            )
            try:
                await reconciler.load()
                report = await reconciler.tick()
            finally:
                await reconciler.resolver.close()
    finally:
        await dry.close()
    if master.refused:  # never: the dry executor calls nothing
        report.error = f"internal error: a write to the master was attempted: {dict(master.refused)}"
    return document(
        log.actions, stages, dry, report, reconciler.known or {}, time.time(), config.daemon.confirm_ticks,
        reconciler.admission.queue.left,
    )


def run_plan(
    config: Config, *, as_json: bool, out: TextIO = sys.stdout, config_path: Path | None = None
) -> int:
    # a bad certificate: refused naming the key (ConfigError, exit 2), as `once` does
    ssl_context = master_context(config, config_path or "the configuration")
    database = config.daemon.database
    if not database.exists():  # lost, or never made? `run` tells them apart by the backups
        refusal = start_refusal(database, config.backup_path(), missing=True, config=config_path)
        if refusal is not None:
            print(f"cdnreq: {refusal}", file=sys.stderr)
            return EXIT_DATABASE
    config = fit_config(config, raise_fd_limit())
    doc = asyncio.run(make_plan(config, ssl_context))
    if as_json:  # a failure too: {"ok": false, "error": ...} for scripts
        json.dump(doc, out, indent=2, sort_keys=True)
        out.write("\n")
    elif doc["ok"]:
        out.write(render(doc))
    if not doc["ok"]:
        print(printable(f"cdnreq: no plan could be made: {doc['error']}"), file=sys.stderr)
        return EXIT_TICK_FAILED
    return EXIT_OK

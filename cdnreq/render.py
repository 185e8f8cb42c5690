"""Text for people: the status summary, a progress bar, an instance explained.

Pure functions from the JSON the endpoint serves (or the store's records) to
lines on a terminal.
"""

from __future__ import annotations

from typing import Any, Iterable

from cdnreq.explain import iso
from cdnreq.model import Phase, Record
from cdnreq.scrub import printable


def _text(lines: Iterable[str]) -> str:
    """Lines for a terminal: a value holding an escape sequence or a newline
    (a guid, a master's error) is shown escaped, never interpreted."""
    return "".join(printable(line) + "\n" for line in lines)


def record_row(record: Record) -> dict[str, Any]:
    return {
        "instance_guid": record.guid,
        "title": record.title,
        "state": record.phase.value,
        "requested_state": record.requested_state.value if record.requested_state else None,
        "last_action": record.last_action,
        "last_error": record.last_error,
        "failures": record.failures,
        "retry_at": iso(record.retry_at),
        "updated_at": iso(record.updated_at),
        "technical_instance_guid": record.tech_guid,
    }


def table(records: Iterable[Record], *, everything: bool) -> str:
    """One line per instance; live ones only with `everything`."""
    rows = sorted(records, key=lambda r: r.guid)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.phase.value] = counts.get(r.phase.value, 0) + 1
    shown = [r for r in rows if everything or r.phase is not Phase.LIVE]
    out = []
    if shown:
        header = ("INSTANCE_GUID", "STATE", "LAST ACTION", "LAST ERROR")
        lines = [tuple(map(printable, (r.guid, r.phase.value, r.last_action or "-", r.last_error or "-")))
                 for r in shown]
        widths = [max([len(header[i])] + [len(line[i]) for line in lines]) for i in range(3)]
        for line in [header, *lines]:
            out.append("  ".join(c.ljust(w) for c, w in zip(line[:3], widths, strict=True)) + "  " + line[3])
    summary = ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items())) or "no instance"
    hidden = "" if everything or len(shown) == len(rows) else " (live ones not listed; --all lists them)"
    out.append(f"{len(rows)} instances: {summary}{hidden}")
    return _text(out)


def summary(status: dict[str, Any]) -> str:
    """The daemon's own view: readiness, the last or running tick."""
    readiness = status.get("readiness", {})
    if status.get("pid") is None:  # read from the database: no daemon to be ready or not
        lines = [f"cdnreq {status.get('version')}: no daemon running"]
    else:
        lines = [
            f"cdnreq {status.get('version')} (pid {status.get('pid')}): "
            + ("ready" if status.get("ready") else f"NOT READY: {readiness.get('reason')}")
        ]
    if readiness.get("last_success_at"):
        lines.append(f"last successful tick: {readiness['last_success_at']}")
    progress = status.get("progress") or {}
    if progress.get("running"):
        lines.append(progress_line(progress))
    last = progress.get("last")
    if last:
        cut = (last.get("summary") or {}).get("interrupted")
        state = "ok" if last.get("ok") else "INTERRUPTED" if cut else "FAILED"
        lines.append(f"last tick {last.get('tick')}: {state} at {last.get('finished_at')} in {last.get('duration_s')} s")
        results = (last.get("summary") or {}).get("results") or {}
        if results:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(results.items())))
        error = (last.get("summary") or {}).get("error")
        if error:
            lines.append(f"  error: {error}")
        waiting = (last.get("summary") or {}).get("waiting_admission")
        if waiting:
            lines.append(f"  {waiting} new instances wait for a later tick ([daemon].admit_per_tick)")
    last_summary = (last or {}).get("summary") or {}
    removals = status.get("held_removals") or (
        {"count": last_summary.get("held_removals"), "reason": last_summary["hold_reason"],
         "fingerprint": last_summary.get("removals_fingerprint")}
        if last_summary.get("hold_reason") else None
    )
    if removals:
        lines.append(f"REMOVALS HELD: {removals.get('count') or 0}: {removals.get('reason')}")
        if removals.get("fingerprint"):
            lines.append(f"  `cdnreq approve --fingerprint {removals['fingerprint']}` applies them at the next tick")
    updates = status.get("held_updates") or last_summary.get("held_updates")
    if updates:
        lines.extend(_held_lines(updates))
    return _text(lines)


def held_updates(held: dict[str, Any], approved: bool = False) -> str:
    """Held updates: how many, why, which ones, and how to let them through."""
    return _text(_held_lines(held, approved))


def _held_lines(held: dict[str, Any], approved: bool = False) -> list[str]:
    head = "approved" if approved else "UPDATES HELD:"
    lines = [
        f"{head} {held.get('count')} update(s), fingerprint {held.get('fingerprint')},"
        f" seen {held.get('streak')} of {held.get('needed')} ticks",
        f"  {held.get('reason')}",
    ]
    lines += [f"  {s.get('guid')}: {s.get('reason')}" for s in held.get("sample") or ()]
    if approved:
        lines.append("  applied at the daemon's next tick, if the held set is still the same")
    else:
        lines.append(f"  `cdnreq approve --fingerprint {held.get('fingerprint')}` applies them at the next tick")
    return lines


def progress_line(progress: dict[str, Any], width: int = 30) -> str:
    """`tick 12 executing [#####.....] 340/1000 ETA 12 s`."""
    phases = progress.get("phases") or []
    current = phases[-1] if phases else {}
    done, total = current.get("done") or 0, current.get("total")
    if total:
        filled = min(width, int(width * done / total))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    else:
        bar = f"{done} done"
    eta = progress.get("eta_s")
    eta_text = f" ETA {eta:.0f} s" if isinstance(eta, (int, float)) else ""
    return printable(f"tick {progress.get('tick')} {progress.get('phase') or 'starting'} {bar}{eta_text}")


def explained(data: dict[str, Any]) -> str:
    lines = [f"{data['instance_guid']}: {data['state']}", f"  {data['why']}"]
    for key in ("title", "technical_instance_guid", "requested_state", "last_action", "last_error", "retry_at"):
        if data.get(key) not in (None, "", 0):
            lines.append(f"  {key}: {data[key]}")
    for host in data.get("hosts") or []:
        failing = f", proof missing since {host['failing_since']}" if host.get("failing_since") else ""
        lines.append(f"  host {host['host']}: proven {host['proven_at']}, checked {host['checked_at']}{failing}")
    challenge = data.get("challenge")
    if challenge:
        lines.append(f"  challenge: TXT {challenge['txt_record']} = {challenge['txt_value']}")
    for f in data.get("import_findings") or []:
        lines.append(f"  imported with a finding, {f['kind']}: {f['found']}; {f['decision']}")
    if data.get("published"):
        lines.append("  published to the customer:")
        for key, value in sorted(data["published"].items()):
            lines.append(f"    {key}: {value}")
    if data.get("events"):
        lines.append("  recent events (newest first):")
        for event in data["events"]:
            detail = f" ({event['detail']})" if event.get("detail") else ""
            if event["action"] == "operator":  # cdnreq/decide/operator.py: no tick, who asked
                lines.append(f"    {event['at']} operator: {event['outcome']}{detail}")
                continue
            lines.append(f"    {event['at']} tick {event['tick']}: {event['action']} {event['outcome']}{detail}")
    return _text(lines)


SHOWN_FINDINGS = 50


def imported(last: dict[str, Any] | None) -> str:
    """The last import from the cron requester and what it found (each
    finding with the decision taken), so the damage it inherited stays in
    sight after the cut-over."""
    if not last:
        return ""
    summary = ", ".join(f"{k}: {v}" for k, v in last["summary"].items())
    lines = [f"imported from the cron requester at {iso(last['at'])} ({last['source']}): {summary}"]
    for f in last["findings"][:SHOWN_FINDINGS]:
        lines.append(f"  {f['kind']}: {f['guid'] or f['reference']}: {f['found']}; {f['decision']}")
    more = last["findings_total"] - min(len(last["findings"]), SHOWN_FINDINGS)
    if more > 0:
        lines.append(f"  ... and {more} more (cdnreq status --json lists {len(last['findings'])})")
    return "".join(printable(line) + "\n" for line in lines)

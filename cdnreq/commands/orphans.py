"""`cdnreq orphans`: the technical entries no known instance owns.

Lists the entries [technical_cdn].host_instance_guid hosts under cdnreq's
title prefix and [legacy].request_prefix that no record of the store owns
(cdnreq/decide/orphans.py decides). The listing is made first and the
store read after it: cdnreq stores a title before it requests it, so an
entry a running daemon requests meanwhile is already in what is read.
Without --destroy nothing is written and the store is read as a snapshot,
next to a running daemon. --destroy holds the store's lock (no daemon may
run), passes the tick's mass-removal guard, destroys each orphan by its
title as a tick destroys, reads it back, and records an event per orphan.

Exit codes: 0 no orphan, or all destroyed; 1 orphans remain (listed, or a
destroy failed or was not read back destroyed) or the master could not
list the entries; 2 the configuration lacks [technical_cdn].host_instance_guid;
3 the sweep is held by the guard, or (--destroy) the store is locked or missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any, Callable

from cdnreq.config import Config
from cdnreq.service.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_OK, EXIT_TICK_FAILED
from cdnreq.wiring import master_client
from cdnreq.master import MasterError
from cdnreq.model import Event, Record
from cdnreq.preflight import master_context
from cdnreq.reconcile.execute import Master, Settings, absent_answer, destroy_title, read_back_destroyed
from cdnreq.reconcile.guardrun import guard_policy_of
from cdnreq.decide.orphans import Orphan, Sweep, prefixes_of, sweep
from cdnreq.wiring import settings_of
from cdnreq.scrub import printable
from cdnreq.store import Engine, Store, StoreLocked
from cdnreq.store.engines import is_postgres, open_engine, store_missing

EXIT_REMAIN = EXIT_TICK_FAILED
EXIT_HELD = 3
ACTION = "orphan-destroy"  # the events' action
DESTROYED, STILL_THERE, FAILED = "destroyed", "still there", "failed"


def register(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Add `orphans` to cdnreq's parser (`command` is cli's helper)."""
    orphans = command(
        "orphans", _run,
        "list the technical entries under cdnreq's and the legacy prefixes that no known instance owns",
    )  # fmt: skip
    orphans.add_argument(
        "--destroy", action="store_true",
        help="destroy them (no cdnreq may be running), unless the mass-removal guard holds them",
    )  # fmt: skip
    orphans.add_argument(
        "--approve", metavar="FINGERPRINT",
        help="with --destroy: go ahead although held, if FINGERPRINT (printed when held) is this set of orphans'",
    )  # fmt: skip
    orphans.add_argument("--json", action="store_true", help="one JSON document instead of text")
    orphans.epilog = (
        "exit status: 0 no orphan, or all destroyed; 1 orphans remain or the master failed;"
        " 2 [technical_cdn].host_instance_guid is not set; 3 held by the guard, or the store is locked"
    )


def _run(args: argparse.Namespace, config: Config) -> int:
    host = config.technical_cdn.host_instance_guid
    if host is None:
        print(
            "cdnreq: orphans: [technical_cdn].host_instance_guid is not set: it names the technical CDN"
            " instance whose entries are listed",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.approve is not None and not args.destroy:
        print("cdnreq: orphans: --approve goes with --destroy", file=sys.stderr)
        return EXIT_CONFIG
    if args.destroy and (missing := store_missing(config)) is not None:
        print(
            f"cdnreq: orphans --destroy: {missing}: cdnreq has not run yet,"
            " so no entry can be told from an orphan",
            file=sys.stderr,
        )
        return EXIT_DATABASE
    ssl_context = master_context(config, args.config or "the configuration")
    try:
        doc = asyncio.run(_orphans(config, host, args, ssl_context))
    except StoreLocked as error:
        refusal = f"{error}: stop cdnreq first, then run it again"
        if args.json:
            _dump({"ok": False, "error": refusal})
        print(printable(f"cdnreq: orphans --destroy: {refusal}"), file=sys.stderr)
        return EXIT_DATABASE
    if args.json:
        _dump(doc)
    else:
        _say(render(doc), sys.stdout)
    if not doc["ok"]:
        print(printable(f"cdnreq: orphans: {doc['error']}"), file=sys.stderr)
        return EXIT_REMAIN
    code = exit_code(doc, destroy=args.destroy)
    if code == EXIT_HELD:
        held = f"cdnreq: orphans --destroy held, nothing destroyed: {doc['guard']['reason']}"
        print(printable(held), file=sys.stderr)
    return code


async def _orphans(config: Config, host: str, args: argparse.Namespace, ssl_context: Any) -> dict[str, Any]:
    """List, then read the store, then decide; destroy when asked and let."""
    # the writer's lock first: a daemon running refuses the sweep before any call
    store = await open_engine(config, lock=True) if args.destroy else None
    try:
        async with master_client(config, None, ssl_context) as master:
            try:
                entries = await master.list_entries(host)
            except MasterError as error:
                return {"ok": False, "error": f"cannot list the entries of {host}: {error}"}
            records = await _records(config, store)  # after the listing, never before
            prefixes = prefixes_of(config)
            found = sweep(
                entries, prefixes, (r.title for r in records), (r.tech_guid for r in records),
                len(records), guard_policy_of(config), args.approve,
            )  # fmt: skip
            doc = document(found, host, prefixes, args.approve)
            if store is not None and found.hold is None and found.orphans:
                doc["destroy"] = [await _destroy(master, settings_of(config), store, o) for o in found.orphans]
            return doc
    finally:
        if store is not None:
            await store.close()


async def _records(config: Config, store: Engine | None) -> list[Record]:
    """Every record, whatever its phase; a snapshot next to a running daemon."""
    if store is not None:
        return list((await store.load()).values())
    if store_missing(config) is not None:
        return []
    if is_postgres(config):  # a standby's reads: never the lease
        snapshot = await open_engine(config, lock=False)
    else:
        snapshot = await Store.open_snapshot(config.daemon.database)
    try:
        return list((await snapshot.load()).values())
    finally:
        await snapshot.close()


async def _destroy(master: Master, settings: Settings, store: Engine, orphan: Orphan) -> dict[str, Any]:
    """Destroy one orphan by its title, read it back by its guid, record the outcome."""
    entry = orphan.entry
    outcome, detail = await destroy_orphan(master, settings, entry.title, entry.guid)
    await store.commit(events=[Event(entry.guid, ACTION, outcome.replace(" ", "-"), time.time(),
                                     f"title {entry.title}; {detail}")])  # fmt: skip
    return {**_row(orphan), "outcome": outcome, "detail": detail}


async def destroy_orphan(master: Master, settings: Settings, title: str, guid: str) -> tuple[str, str]:
    """(outcome, the master's words). A destroy answered "no such entry" is
    read back like any other: the read-back decides."""
    try:
        answer = await destroy_title(master, settings, title)
    except MasterError as error:
        if not absent_answer(error):
            return FAILED, f"destroy: {error.detail}"
        answered = ""
    else:
        answered = "" if answer.guid == guid else f"; the master answered for {answer.guid}"
    try:
        destroyed, why = await read_back_destroyed(master, guid)
    except MasterError as error:
        return FAILED, f"read-back: {error.detail}{answered}"
    return (DESTROYED if destroyed else STILL_THERE), f"{why}{answered}"


def _row(orphan: Orphan) -> dict[str, Any]:
    entry = orphan.entry
    return {"title": entry.title, "guid": entry.guid, "prefix": orphan.prefix, "state": entry.state}


def document(found: Sweep, host: str, prefixes: tuple[str, ...], approve: str | None) -> dict[str, Any]:
    return {
        "ok": True,
        "error": None,
        "host_instance_guid": host,
        "prefixes": list(prefixes),
        "orphans": [_row(o) for o in found.orphans],
        "counts": {
            "orphans": len(found.orphans), "owned": found.owned, "under_prefixes": found.under,
            "ignored": len(found.ignored), "unreadable": found.unreadable,
        },  # fmt: skip
        "guard": {
            "held": found.hold is not None,
            "reason": found.hold,
            "fingerprint": found.fingerprint,
            "approve_mismatch": approve is not None and approve != found.fingerprint,
        },
        "destroy": None,
    }


def exit_code(doc: dict[str, Any], *, destroy: bool) -> int:
    if not doc["orphans"]:
        return EXIT_OK
    if not destroy:
        return EXIT_REMAIN
    if doc["guard"]["held"]:
        return EXIT_HELD
    return EXIT_OK if all(r["outcome"] == DESTROYED for r in doc["destroy"] or ()) else EXIT_REMAIN


def render(doc: dict[str, Any]) -> str:
    """One line per orphan (title, guid, prefix; the outcome after a destroy),
    then the counts and the guard's verdict."""
    if not doc["ok"]:
        return ""
    c, guard = doc["counts"], doc["guard"]
    rows = doc["destroy"] if doc["destroy"] is not None else doc["orphans"]
    out = []
    for row in rows:
        line = f"{row['title']}  {row['guid']}  {row['prefix']}"
        if "outcome" in row:
            line += f"  {row['outcome']}" + (f": {row['detail']}" if row["outcome"] != DESTROYED else "")
        out.append(line)
    prefixes = ", ".join(repr(p) for p in doc["prefixes"])
    out.append(
        f"orphans: {c['orphans']} of {c['under_prefixes']} entries under {prefixes} on {doc['host_instance_guid']}"
        f" ({c['owned']} owned; {c['ignored']} under other prefixes, left alone"
        + (f"; {c['unreadable']} without a title or guid" if c["unreadable"] else "") + ")"
    )
    if doc["destroy"] is not None:
        tally = Counter(r["outcome"] for r in doc["destroy"])
        out.append(", ".join(f"{what} {tally[what]}" for what in (DESTROYED, STILL_THERE, FAILED)))
    elif doc["orphans"]:
        if guard["held"]:
            out.append(f"--destroy is held: {guard['reason']}")
            out.append(
                f"to destroy exactly these {c['orphans']}: cdnreq orphans --destroy --approve {guard['fingerprint']}"
            )
        else:
            out.append(f"--destroy would destroy them (fingerprint {guard['fingerprint']})")
    return "\n".join(out) + "\n"


def _dump(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _say(text: str, to: Any) -> None:
    """Each line escaped: titles and the master's words may hold escape sequences."""
    to.write("".join(printable(line) + "\n" for line in text.rstrip("\n").split("\n")) if text else "")

"""`cdnreq events tail` and `cdnreq webhooks status|retry`: the change feed
and its deliveries from the command line.

`events tail` reads the feed from the store (beside a running daemon, on
any engine): the last changes, or those after `--after`, filtered like
GET /changes, and with `--follow` the new ones as they are written; a
cursor GET /changes would answer 410 (pruned past, restored over, ahead of
the store) is warned about on stderr, naming why. Every
line is escaped: a guid or an error may hold an escape sequence.
`webhooks status` shows each consumer's outbox; `webhooks retry NAME` sends
its dead-lettered deliveries again, through the daemon when one runs
(an operator action, like `cdnreq retry`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from cdnreq.config import Config
from cdnreq.decide.changes import KINDS
from cdnreq.decide.deliveries import shown_target
from cdnreq.decide.operator import REDELIVER
from cdnreq.scrub import printable
from cdnreq.service.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_OK
from cdnreq.service.feed import gone
from cdnreq.service.opening import open_store
from cdnreq.store.engines import store_missing
from cdnreq.store.outbox import summary

TAIL_DEFAULT = 20
FOLLOW_EVERY_S = 1.0
PAGE = 1000


def _verb(verbs: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A verb, which also takes --config after it (`cdnreq events tail --config FILE`)."""
    verb = verbs.add_parser(name, help=help, description=help)
    verb.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help="TOML configuration file")
    return verb


def register(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    events = command("events", _events, "the change feed: what changed for customers (see GET /changes)")
    verbs = events.add_subparsers(dest="verb", required=True, metavar="VERB")
    tail = _verb(verbs, "tail", "print the latest changes (and, with --follow, the new ones)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new changes until interrupted")
    tail.add_argument("--kind", action="append", default=[], choices=sorted(KINDS), help="only this kind (repeatable)")
    tail.add_argument("--instance", action="append", default=[], metavar="GUID", help="only this instance (repeatable)")
    tail.add_argument("--after", type=int, metavar="ID", help="start after this id (default: the last 20)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    hooks = command("webhooks", _webhooks, "the consumers' webhook deliveries")
    hook_verbs = hooks.add_subparsers(dest="verb", required=True, metavar="VERB")
    status = _verb(hook_verbs, "status", "each consumer's outbox: queued, dead-lettered, oldest, error")
    status.add_argument("--json", action="store_true", help="one JSON document")
    retry = _verb(hook_verbs, "retry", "send a consumer's dead-lettered deliveries again")
    retry.add_argument("consumer", metavar="NAME")


def _events(args: argparse.Namespace, config: Config) -> int:
    if (missing := store_missing(config)) is not None:
        print(f"cdnreq: {missing}: cdnreq has not run yet", file=sys.stderr)
        return EXIT_DATABASE
    try:
        asyncio.run(_tail(config, args))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


async def _tail(config: Config, args: argparse.Namespace) -> None:
    store = await open_store(config, lock=False)
    try:
        oldest, last = await store.feed_bounds()
        if args.after is not None and (why := gone(args.after, oldest, last, await store.feed_gaps())):
            # GET /changes answers 410 there: the lines that follow are not all the cursor missed
            print(f"cdnreq: warning: {why}", file=sys.stderr, flush=True)
        after = args.after if args.after is not None else max(0, last - TAIL_DEFAULT)
        if args.after is None and (args.kind or args.instance):
            after = await _last_matching(store, args, last)
        while True:
            rows = await store.changes_after(after, PAGE, kinds=args.kind, guids=args.instance)
            for row in rows:
                print(_line(row, args.json), flush=True)
            after = rows[-1][0] if rows else after
            if len(rows) == PAGE:
                continue
            if not args.follow:
                return
            await asyncio.sleep(FOLLOW_EVERY_S)
    finally:
        await store.close()


async def _last_matching(store: Any, args: argparse.Namespace, last: int) -> int:
    """The cursor before the last TAIL_DEFAULT matching changes (pages from the start: bounded memory)."""
    kept: list[int] = []
    after = 0
    while after < last:
        rows = await store.changes_after(after, PAGE, kinds=args.kind, guids=args.instance)
        if not rows:
            break
        kept = (kept + [r[0] for r in rows])[-TAIL_DEFAULT:]
        after = rows[-1][0]
    return kept[0] - 1 if kept else last


def _line(row: tuple, as_json: bool) -> str:
    id_, at, guid, kind, payload, title = row
    if as_json:
        return json.dumps({"id": id_, "at": at, "instance_guid": guid, "customer_title": title, "kind": kind,
                           "payload": json.loads(payload)},
                          sort_keys=True)
    when = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return printable(f"{id_}  {when}  {guid}  {kind}  {payload}")


def _webhooks(args: argparse.Namespace, config: Config) -> int:
    if args.verb == "retry":
        return _redeliver(args, config)
    if (missing := store_missing(config)) is not None:
        print(f"cdnreq: {missing}: cdnreq has not run yet", file=sys.stderr)
        return EXIT_DATABASE
    found = asyncio.run(_outboxes(config))
    if args.json:
        print(json.dumps(found, sort_keys=True, indent=2))
        return EXIT_OK
    if not found:
        print("no consumer has a url: no webhooks ([[consumer]] url and secret_file)")
    for name, state in found.items():
        oldest = state["oldest_undelivered_s"]
        print(printable(f"{name}  {state['target']}  queued {state['pending']}  dead {state['dead']}  "
                        f"not queued yet {state['not_queued_yet']}"
                        + (f"  oldest {oldest:.0f} s" if oldest is not None else "")
                        + (f"  last error: {state['last_error']}" if state["last_error"] else "")))
    return EXIT_OK


async def _outboxes(config: Config) -> dict[str, Any]:
    store = await open_store(config, lock=False)
    try:
        _, last = await store.feed_bounds()
        found = await summary(store, time.time())
    finally:
        await store.close()
    shown = {}
    for consumer in config.consumer:
        if consumer.url is None:
            continue
        state = found.get(consumer.name, {"pending": 0, "dead": 0, "last_error": None, "oldest_undelivered_s": None})
        shown[consumer.name] = {"target": shown_target(consumer.url), **state,
                                "not_queued_yet": max(0, last - state.get("cursor", last))}
    return shown


def _redeliver(args: argparse.Namespace, config: Config) -> int:
    """The operator action `redeliver`, through the daemon when one answers."""
    from cdnreq.commands.actions import run_action
    from cdnreq.decide.operator import OperatorAction

    if args.consumer not in {c.name for c in config.consumer}:
        print(printable(f"cdnreq: no [[consumer]] named {args.consumer!r} in the configuration"), file=sys.stderr)
        return EXIT_CONFIG
    return run_action(config, OperatorAction(REDELIVER, consumer=args.consumer))

"""`cdnreq approve`, `retry`, `release`, `forget`: operator actions.

With a daemon answering on [daemon].listen, the action is sent to it
(`POST /actions/NAME`, always with the token) and applied between two of
its ticks. With none, the command takes the store's lock and applies it
itself; a `cdnreq once` running meanwhile makes it exit 3.

Exit codes: 0 done, 1 refused (the reason is printed) or sent to a daemon
that gave no answer in time (it may still apply it after its running tick:
look with `cdnreq explain`), 2 the daemon refused the token (401) or has
none configured (403), 3 the store is locked.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from dataclasses import replace
from typing import Any, Callable, TextIO

from cdnreq.endpoint_client import NoAnswer, NotRunning, post
from cdnreq.config import Config
from cdnreq.configfile import ConfigError
from cdnreq.preflight import read_token
from cdnreq.service.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_OK, EXIT_TICK_FAILED
from cdnreq.service.opening import open_store
from cdnreq.store.engines import store_missing
from cdnreq.wiring import master_client
from cdnreq.operator import Result, apply, guard_policy_of
from cdnreq.preflight import master_context
from cdnreq.scrub import printable
from cdnreq.decide.operator import APPROVE, FORGET, RELEASE, RETRY, OperatorAction, who

EXIT_REFUSED = EXIT_TICK_FAILED
EXIT_AUTH = EXIT_CONFIG
ANSWER_TIMEOUT_S = 300.0  # the action waits for a running tick to end


def register(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """Add the four commands to cdnreq's parser (`command` is cli's helper)."""
    approve = command(APPROVE, _run, "apply the removals and updates held by the guards once, at the next tick")
    approve.add_argument(
        "--fingerprint", action="append", default=[],
        help="approve only this held set (from `cdnreq status`); may be repeated. Without it, every held set",
    )  # fmt: skip
    retry = command(RETRY, _run, "skip an instance's backoff: its failed call is tried again at the next tick")
    retry.add_argument("guid", metavar="INSTANCE_GUID")
    release = command(RELEASE, _run, "free a host proven by an instance, or hand it to another one (--to)")
    release.add_argument("host", metavar="HOST")
    release.add_argument("--to", metavar="INSTANCE_GUID", help="the instance that takes the host over")
    forget = command(
        FORGET, _run,
        "drop the record of an instance gone from the master, once its technical entry is read back destroyed",
    )  # fmt: skip
    forget.add_argument("guid", metavar="INSTANCE_GUID")


def _action(args: argparse.Namespace) -> OperatorAction:
    return OperatorAction(
        name=args.command,
        guid=getattr(args, "guid", None),
        host=getattr(args, "host", None),
        to=getattr(args, "to", None),
        fingerprints=tuple(getattr(args, "fingerprint", None) or ()),
        by=who(_user(), os.getuid()),
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _run(args: argparse.Namespace, config: Config) -> int:
    return run_action(config, _action(args))


def run_action(config: Config, action: OperatorAction) -> int:
    """Send `action` to the daemon, or apply it here when none runs; the exit code."""
    action = replace(action, by=who(_user(), os.getuid()))
    try:
        token = read_token(config)
    except ConfigError:
        token = None  # not readable by this user: the daemon will say 401/403
    query = action.query() + [("user", _user()), ("uid", str(os.getuid()))]
    try:
        code, body = asyncio.run(
            post(config, f"/actions/{action.name}", token, query, timeout_s=ANSWER_TIMEOUT_S)
        )
    except NoAnswer as error:  # not applied here too: the daemon may still apply it
        print(f"cdnreq: {action.name}: {error}; it may still be applied after the running tick:"
              " look with `cdnreq status` or `cdnreq explain`", file=sys.stderr)
        return EXIT_REFUSED
    except NotRunning:
        return _local(config, action)
    message = str((body or {}).get("message") or (body or {}).get("error") or body)
    if code in (401, 403):
        hint = "" if token else " (the token file could not be read)"
        _say(f"cdnreq: the daemon refused the action ({code}): {message}{hint}", sys.stderr)
        return EXIT_AUTH
    if code == 200:
        _say(message, sys.stdout)
        return EXIT_OK
    _say(f"cdnreq: {action.name} refused: {message}", sys.stderr)
    return EXIT_REFUSED


def _local(config: Config, action: OperatorAction) -> int:
    """No daemon: hold the store's lock (StoreLocked is exit 3, in cli.main)."""
    if (missing := store_missing(config)) is not None:
        print(f"cdnreq: {missing}: cdnreq has not run yet", file=sys.stderr)
        return EXIT_DATABASE
    result = asyncio.run(_apply_locked(config, action))
    if not result.ok:
        _say(f"cdnreq: {action.name} refused: {result.message}", sys.stderr)
        return EXIT_REFUSED
    _say(result.message, sys.stdout)
    return EXIT_OK


def _say(text: str, to: TextIO) -> None:
    """Each line escaped: the messages name guids the master listed, which
    may hold an escape sequence that would repaint the operator's terminal."""
    to.write("".join(printable(line) + "\n" for line in text.rstrip("\n").split("\n")))


async def _apply_locked(config: Config, action: OperatorAction) -> Result:
    store = await open_store(config, lock=True)
    try:
        if action.name != FORGET:
            return await apply(store, None, action, policy=guard_policy_of(config))
        async with master_client(config, None, master_context(config, "the configuration")) as master:
            return await apply(store, master, action, policy=guard_policy_of(config))
    finally:
        await store.close()


"""`cdnreq` on the command line: run, once, check-config, status.

Exit codes: 0 success, 1 the tick failed, 2 the configuration was refused,
3 the database cannot be used (locked, newer schema, not a database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from cdnreq import logs
from cdnreq.config import Config, ConfigError, effective_toml, load_config
from cdnreq.daemon import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_OK,
    EXIT_TICK_FAILED,
    Daemon,
    open_store,
    run_once,
)
from cdnreq.dns.challenge import SecretError
from cdnreq.model import Record
from cdnreq.store import StoreError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"cdnreq: configuration refused:\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return args.handler(args, config)
    except StoreError as error:
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_DATABASE
    except SecretError as error:
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdnreq",
        description="Keep a SlapOS technical CDN in step with the shared instances customers order.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--config", "-c", required=True, type=Path, help="TOML configuration file")
        sub.set_defaults(handler=handler)
        return sub

    command("run", _run, "run the daemon until SIGTERM or SIGINT")
    command("once", _once, "run exactly one tick; exit 0 if it succeeded")
    command("check-config", _check_config, "validate and print the effective configuration")
    status = command("status", _status, "show what the store knows of each instance")
    status.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    return parser


def _run(args: argparse.Namespace, config: Config) -> int:
    logs.configure(config.logging.format, config.logging.level)
    return asyncio.run(Daemon(args.config, config).run())


def _once(args: argparse.Namespace, config: Config) -> int:
    logs.configure(config.logging.format, config.logging.level)
    report = asyncio.run(run_once(config))
    return EXIT_OK if report.ok else EXIT_TICK_FAILED


def _check_config(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(effective_toml(config))
    return EXIT_OK


def _status(args: argparse.Namespace, config: Config) -> int:
    if not config.daemon.database.exists():
        print(f"cdnreq: no database at {config.daemon.database}: cdnreq has not run yet", file=sys.stderr)
        return EXIT_DATABASE
    records = asyncio.run(_load(config))
    rows = sorted(records.values(), key=lambda r: r.guid)
    if args.json:
        json.dump([_as_json(r) for r in rows], sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return EXIT_OK
    sys.stdout.write(_table(rows))
    return EXIT_OK


async def _load(config: Config) -> dict[str, Record]:
    store = await open_store(config, lock=False)
    try:
        return dict(await store.load())
    finally:
        await store.close()


def _as_json(record: Record) -> dict[str, Any]:
    return {
        "instance_guid": record.guid,
        "title": record.title,
        "state": record.phase.value,
        "requested_state": record.requested_state.value if record.requested_state else None,
        "last_action": record.last_action,
        "last_error": record.last_error,
        "failures": record.failures,
        "retry_at": _iso(record.retry_at),
        "updated_at": _iso(record.updated_at),
        "technical_instance_guid": record.tech_guid,
    }


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _table(rows: list[Record]) -> str:
    header = ("INSTANCE_GUID", "STATE", "LAST ACTION", "LAST ERROR")
    lines = [(r.guid, r.phase.value, r.last_action or "-", r.last_error or "-") for r in rows]
    widths = [max([len(header[i])] + [len(line[i]) for line in lines]) for i in range(3)]
    out = []
    for line in [header, *lines]:
        out.append("  ".join(c.ljust(w) for c, w in zip(line[:3], widths)) + "  " + line[3])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.phase.value] = counts.get(r.phase.value, 0) + 1
    summary = ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items())) or "no instance"
    out.append(f"{len(rows)} instances: {summary}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())

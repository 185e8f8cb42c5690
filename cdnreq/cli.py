"""`cdnreq` on the command line: run, once, check-config, status, explain, plan, backup, restore,
the operator actions approve, retry, release, forget (cdnreq/commands/actions.py),
and orphans (cdnreq/commands/orphans.py, with its own exit codes).

Exit codes: 0 success, 1 the tick failed, 2 the configuration was refused,
3 the database cannot be used (locked, newer schema, not a database).
`cdnreq status` has its own (see status_exit): 0 ready, 1 not ready or a
reload refused or no daemon, 2 no daemon and no database.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cdnreq import __version__, logs, render
from cdnreq.aiotasks import run_bounded
from cdnreq.endpoint_client import NotRunning, fetch, instance_path
from cdnreq.commands import actions, feed, import_legacy, migrate_store, orphans
from cdnreq.commands.status_refused import reachable
from cdnreq.config import Config
from cdnreq.configfile import CONFIG_ENV, DEFAULT_CONFIG, ConfigError, config_path, effective_toml, load_config
from cdnreq.preflight import read_token
from cdnreq.service.daemon import Daemon
from cdnreq.service.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_OK, EXIT_TICK_FAILED
from cdnreq.service.once import run_once
from cdnreq.service.opening import open_store
from cdnreq.store.engines import is_postgres, store_missing
from cdnreq.store.pgbackups import BACKUPS_ARE_POSTGRES, RESTORES_ARE_POSTGRES
from cdnreq.explain import explain, iso
from cdnreq.dns.challenge import SecretError
from cdnreq.model import Record
from cdnreq.preflight import check
from cdnreq.reloadstate import describe as describe_config
from cdnreq.scrub import printable
from cdnreq.store import StoreError, StoreUnreachable, restore, take_backup
from cdnreq.store.restoring import lost_store_evidence, restore_secret


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.config, origin = config_path(args.config, os.environ)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"cdnreq: configuration refused:\n{error}", file=sys.stderr)
        if origin is not None:
            print(f"cdnreq: no --config given; {args.config} is {origin}", file=sys.stderr)
        if args.handler is _status:
            return _status_of_refused_file(args)
        return EXIT_CONFIG
    try:
        code = args.handler(args, config)
        sys.stdout.flush()  # here, so a reader that left is met by the handler below
        return code
    except StoreUnreachable as error:  # passing: systemd starts the daemon again (RestartPreventExitStatus=2 3)
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_TICK_FAILED
    except StoreError as error:
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_DATABASE
    except ConfigError as error:  # from preflight.check: the same words as check-config
        print(f"cdnreq: configuration refused:\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    except SecretError as error:
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cdnreq plan --json | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdnreq",
        description="Keep a SlapOS technical CDN in step with the shared instances customers order.",
    )
    parser.add_argument("--version", action="version", version=f"cdnreq {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--config", "-c", type=Path, default=None,
            help=f"TOML configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
        )
        sub.set_defaults(handler=handler)
        return sub

    fresh = (
        "start even though the database is missing or empty while backups exist"
        " (deletes nothing; without it cdnreq refuses, exit 3)"
    )
    run = command("run", _run, "run the daemon until SIGTERM or SIGINT")
    run.add_argument("--fresh", action="store_true", help=fresh)
    once = command("once", _once, "run one tick (more while new instances wait for admission); exit 0 if it succeeded")
    once.add_argument("--fresh", action="store_true", help=fresh)
    command("check-config", _check_config, "validate and print the effective configuration")
    status = command("status", _status, "the daemon's state, the running tick's progress, and the instances")
    status.add_argument("--json", action="store_true", help="one JSON document instead of text")
    status.add_argument("--all", action="store_true", help="list live instances too")
    status.epilog = (
        "exit status: 0 the daemon is ready; 1 it is not ready, or its last reload was refused,"
        " or no daemon answers; 2 no daemon answers and there is no database"
    )
    explain_ = command("explain", _explain, "why one instance is in its state")
    explain_.add_argument("instance_guid", metavar="INSTANCE_GUID")
    explain_.add_argument("--json", action="store_true", help="the JSON document instead of text")
    plan = command("plan", _plan, "show what the next tick would do, changing nothing (works next to the daemon)")
    plan.add_argument("--json", action="store_true", help="one JSON document instead of text")
    actions.register(command)
    import_legacy.register(command)
    orphans.register(command)
    migrate_store.register(command)
    feed.register(command)
    backup = command(
        "backup", _backup, "write an online backup of the database to [store].backup_dir; print its path"
    )
    backup.add_argument(
        "--fresh", action="store_true",
        help="back up an empty database even though the newest backup is not empty",
    )
    restore_ = command(
        "restore", _restore, "put a backup in place as the database (no cdnreq may be running)"
    )
    restore_.add_argument("backup_file", metavar="FILE", type=Path, help="a backup, e.g. from [store].backup_dir")
    return parser


def installed_version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    try:
        return importlib.metadata.version("cdnreq")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def _run(args: argparse.Namespace, config: Config) -> int:
    logs.configure(config.logging.format, config.logging.level)
    return run_bounded(Daemon(args.config, config, fresh=args.fresh).run())


def _once(args: argparse.Namespace, config: Config) -> int:
    logs.configure(config.logging.format, config.logging.level)
    report = run_bounded(run_once(config, fresh=args.fresh, config_path=args.config))
    return EXIT_OK if report.ok else EXIT_TICK_FAILED


def _plan(args: argparse.Namespace, config: Config) -> int:
    from cdnreq.commands.plan import run_plan

    logs.configure(config.logging.format, "warning")  # the plan is the output; the log only warns
    return run_plan(config, as_json=args.json, config_path=args.config)


def _backup(args: argparse.Namespace, config: Config) -> int:
    """Online: next to a running daemon (the store is opened without its lock;
    the backup API reads a consistent snapshot through WAL)."""
    if is_postgres(config):
        print(f"cdnreq: {BACKUPS_ARE_POSTGRES}", file=sys.stderr)
        return EXIT_DATABASE
    database = config.daemon.database
    if not database.exists():
        print(f"cdnreq: no database at {database}: nothing to back up", file=sys.stderr)
        return EXIT_DATABASE
    path = asyncio.run(_take_backup(config, args))
    print(path)
    return EXIT_OK


async def _take_backup(config: Config, args: argparse.Namespace) -> Path:
    store = await open_store(config, lock=False)
    try:
        if not args.fresh and await store.is_empty():
            # A backup of an empty store would become the newest one and let a
            # daemon start on the lost store: the very thing backups prevent.
            evidence = await asyncio.to_thread(lost_store_evidence, config.backup_path())
            if evidence is not None:
                raise StoreError(
                    f"not backing up: the database {config.daemon.database} is empty but the newest backup "
                    f"{evidence[0]} is not. Restore it (cdnreq restore {evidence[0]} --config {args.config}), "
                    "or add --fresh to back up the empty store anyway"
                )
        return await take_backup(
            store, config.backup_path(), secret=config.secret_path(), keep=config.store.backup_keep
        )
    finally:
        await store.close()


def _restore(args: argparse.Namespace, config: Config) -> int:
    """Offline: refused (exit 3) while a cdnreq holds the database's lock."""
    if is_postgres(config):
        print(f"cdnreq: {RESTORES_ARE_POSTGRES}", file=sys.stderr)
        return EXIT_DATABASE
    database = config.daemon.database
    result = restore(args.backup_file, database)
    print(f"restored {result.backup.path} ({result.backup.describe()}) as {database}")
    if result.replaced is not None:
        print(f"the database it replaced is kept as {result.replaced}")
    secret = restore_secret(args.backup_file, config.secret_path())
    if secret == "restored":
        print(f"the domain secret was missing: restored it from the backups as {config.secret_path()}")
    elif secret == "differs":
        print(
            f"cdnreq: warning: the domain secret {config.secret_path()} differs from the one saved with the "
            f"backups ({args.backup_file.parent}); the stored tokens stay valid, new challenges use the current secret",
            file=sys.stderr,
        )
    return EXIT_OK


def _check_config(args: argparse.Namespace, config: Config) -> int:
    """Refuses (exit 2) whatever `run` would refuse: preflight.check is the one home of both."""
    check(config, args.config)
    sys.stdout.write(effective_toml(config))
    return EXIT_OK


STATUS_NO_DAEMON_NO_DATABASE = 2


def status_exit(status: dict[str, Any] | None) -> int:
    """`cdnreq status`'s exit code, for scripts and monitoring: 0 the daemon
    is ready on the configuration it was last given; 1 it is not ready, or
    its last reload was refused (the file on disk is not what runs), or no
    daemon answers (the database exists). No daemon and no database is 2."""
    if status is None:
        return EXIT_TICK_FAILED
    refused = ((status.get("config") or {}).get("last_reload") or {}).get("ok") is False
    return EXIT_OK if status.get("ready") and not refused else EXIT_TICK_FAILED


def _status(args: argparse.Namespace, config: Config) -> int:
    token = _token(config)
    try:
        code, status = asyncio.run(fetch(config, "/status", token))
    except NotRunning as error:
        status, reason = None, f"not running ({error})"
    else:
        if code != 200 or not isinstance(status, dict):  # a refused token is not a daemon's state
            error = status.get("error") if isinstance(status, dict) else None
            why = " to this token: is [daemon].token_file readable by this user?" if code in (401, 403) else ""
            status, reason = None, f"answered HTTP {code} ({error or 'not a status'}){why}"
    missing = store_missing(config)
    database = missing is None
    if status is None and not database:
        print(f"cdnreq: no daemon answers and {missing}: cdnreq has not run yet", file=sys.stderr)
        return STATUS_NO_DAEMON_NO_DATABASE
    if status is not None and not args.json and sys.stdout.isatty():
        status = _follow(config, token, status)
    records, imported = asyncio.run(_load(config)) if database else ({}, None)
    if args.json:
        rows = [render.record_row(r) for r in sorted(records.values(), key=lambda r: r.guid)]
        json.dump({"daemon": status, "instances": rows, "import": imported}, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return status_exit(status)
    if status is not None:
        sys.stdout.write(render.summary(status))
        sys.stdout.writelines(line + "\n" for line in describe_config(status.get("config")))
    else:
        sys.stdout.write(printable(f"daemon: {reason}; from the database:") + "\n")
        sys.stdout.write(render.summary(asyncio.run(_last_tick(config))))
    sys.stdout.write(render.table(records.values(), everything=args.all))
    sys.stdout.write(render.imported(imported))
    return status_exit(status)


def _status_of_refused_file(args: argparse.Namespace) -> int:
    """The daemon may well run on an older configuration: show it, and exit
    non-zero since this file would be refused at the next reload or start."""
    reached = reachable(args.config)
    if reached is None:
        return EXIT_CONFIG
    print("cdnreq: the file above is refused; what runs, reached through its [daemon] section:", file=sys.stderr)
    try:
        code = _status(args, reached)
    except StoreUnreachable as error:  # passing: systemd starts the daemon again (RestartPreventExitStatus=2 3)
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_TICK_FAILED
    except StoreError as error:
        print(f"cdnreq: {error}", file=sys.stderr)
        return EXIT_DATABASE
    return EXIT_TICK_FAILED if code == EXIT_OK else code


def _follow(config: Config, token: str | None, status: dict[str, Any]) -> dict[str, Any]:
    """A live progress bar while a tick runs (on a terminal only)."""
    try:
        while (status.get("progress") or {}).get("running"):
            sys.stdout.write("\r\033[K" + render.progress_line(status["progress"]))
            sys.stdout.flush()
            time.sleep(0.5)
            _, status = asyncio.run(fetch(config, "/status", token))
    except (NotRunning, KeyboardInterrupt):
        pass
    sys.stdout.write("\r\033[K")
    return status


def _explain(args: argparse.Namespace, config: Config) -> int:
    try:
        code, data = asyncio.run(fetch(config, instance_path(args.instance_guid), _token(config)))
        if code == 404:
            data = None
    except NotRunning:
        if (missing := store_missing(config)) is not None:
            print(f"cdnreq: {missing}: cdnreq has not run yet", file=sys.stderr)
            return EXIT_DATABASE
        data = asyncio.run(_explain_from_store(config, args.instance_guid))
    if data is None:
        print(f"cdnreq: no instance {args.instance_guid!r} is known", file=sys.stderr)
        return EXIT_TICK_FAILED
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render.explained(data))
    return EXIT_OK


def _token(config: Config) -> str | None:
    try:
        return read_token(config)
    except ConfigError:
        return None


async def _load(config: Config) -> tuple[dict[str, Record], dict[str, Any] | None]:
    """The instances, and the last import from the cron requester with its findings."""
    store = await open_store(config, lock=False)
    try:
        return dict(await store.load()), await store.last_import()
    finally:
        await store.close()


async def _last_tick(config: Config) -> dict[str, Any]:
    """What `summary` needs, from the ticks table, when no daemon runs."""
    store = await open_store(config, lock=False)
    try:
        ticks = await store.last_ticks(1)
    finally:
        await store.close()
    status: dict[str, Any] = {"version": __version__, "pid": None, "ready": False,
                              "readiness": {"reason": "no daemon is running"}, "progress": {}}
    if ticks:
        t = ticks[0]
        summary = t["summary"] or {"interrupted": True, "error": "did not finish: the process ended during this tick"}
        status["progress"]["last"] = {
            "tick": t["id"], "ok": t["result"] == "ok", "finished_at": iso(t["finished_at"]) or "-",
            "duration_s": summary.get("duration_s", "-"), "summary": summary,
        }
    return status


async def _explain_from_store(config: Config, guid: str) -> dict[str, Any] | None:
    store = await open_store(config, lock=False)
    try:
        return await explain(
            store, guid, label=config.domain.challenge_label,
            retention_s=config.domain.retention_s, now=time.time(),
        )
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())

"""`cdnreq migrate-store --from URL --to URL`: move a store to another engine
(SQLite to PostgreSQL for several nodes, or back), offline.

Both stores are opened as a writer would: the source's lock or lease is
held for the whole copy (no daemon may change it meanwhile; stop them
first), the destination must be empty. The copy is verified table by table
(cdnreq.store.copying); the source is left as it was. PostgreSQL's side
uses [store].password_file, sslmode and ssl_ca_file of --config.

Exit codes: 0 copied and verified, 3 refused or failed (the message says
why; a destination left half-filled says so and is refused by the daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Callable

from cdnreq.config import Config
from cdnreq.service.exits import EXIT_DATABASE, EXIT_OK
from cdnreq.store.copying import CopyReport, copy_store
from cdnreq.store.engines import open_at
from cdnreq.store.errors import StoreError
from cdnreq.store.url import PostgresAt, StoreUrlError, parse_store_url


def register(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    sub = command("migrate-store", _run, "copy the store to another engine (offline; verified by counts and digests)")
    sub.add_argument("--from", dest="source", required=True, metavar="URL",
                     help="the store to copy: sqlite:///PATH or postgresql://USER@HOST/DB")
    sub.add_argument("--to", dest="target", required=True, metavar="URL", help="an empty store to fill")


def _run(args: argparse.Namespace, config: Config) -> int:
    try:
        source, target = parse_store_url(args.source), parse_store_url(args.target)
    except StoreUrlError as error:
        print(f"cdnreq: migrate-store: {error}", file=sys.stderr)
        return EXIT_DATABASE
    if source == target:
        print(f"cdnreq: migrate-store: --from and --to are the same store ({source.display()})", file=sys.stderr)
        return EXIT_DATABASE
    report = asyncio.run(_copy(config, source, target))
    print(f"copied {source.display()} to {target.display()} in {report.seconds:.1f} s, verified:")
    for table, rows in report.rows.items():
        print(f"  {table}: {rows} rows, sha256 {report.digests[table][:16]}")
    if report.escaped:
        print(f"  {report.escaped} text values held a NUL character, which PostgreSQL cannot store: "
              "written as \\u0000")
    return EXIT_OK


async def _copy(config: Config, source: Any, target: Any) -> CopyReport:
    src = await open_at(config, source, lock=True)
    try:
        dst = await open_at(config, target, lock=True)
        try:
            if not await dst.is_empty():
                raise StoreError(f"{target.display()} already holds a store: migrate-store fills an empty one")

            def progress(table: str, rows: int) -> None:
                print(f"  {table}: {rows} rows copied", file=sys.stderr)

            try:
                return await copy_store(src, dst, nul_escaped=isinstance(target, PostgresAt), progress=progress)
            except StoreError as error:
                raise StoreError(f"{error} (the destination may hold part of the copy: the daemon refuses it "
                                 "until it is emptied)") from error
        finally:
            await dst.close()
    finally:
        await src.close()

"""`cdnreq import-legacy`: take over the cron requester's state.

Reads the old requester's databases (copies: the originals are never
opened), what the master lists and what the technical CDN hosts (read-only
calls), lets cdnreq.legacy.adopt decide, prints the summary and every
finding, and unless --dry-run writes it all in one transaction together
with the import's own record. Refused over a non-empty store (the daemon's
own state is never overwritten) unless --merge, which adds only instances,
titles and hosts the store does not know. Exit codes: 0 imported (or would
be), 1 the master could not be read, 2 configuration or legacy data refused,
3 the store is not empty, locked or unreadable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cdnreq.config import Config
from cdnreq.service.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_OK, EXIT_TICK_FAILED
from cdnreq.wiring import master_client
from cdnreq.legacy.adopt import AdoptPolicy, Adoption, Known, adopt
from cdnreq.legacy.findings import CONFLICTS
from cdnreq.legacy.read import LegacyError, read_legacy
from cdnreq.legacy.state import VALID, LegacyState
from cdnreq.master import MasterError
from cdnreq.preflight import master_context
from cdnreq.wiring import domain_policy_of, policy_of
from cdnreq.scrub import printable
from cdnreq.store import Engine, Store, StoreLocked
from cdnreq.store.engines import is_postgres, open_engine
from cdnreq.store import imports
from cdnreq.store.errors import StoreError


def register(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    sub = command(
        "import-legacy", _run,
        "take over the cron requester's state (its databases are only read) so cdnreq serves its"
        " customers without new challenges or second entries",
    )
    sub.add_argument(
        "--from", dest="sources", action="append", required=True, type=Path, metavar="DIR_OR_DB",
        help="the old requester's database directory, or one of its databases; may be repeated",
    )
    sub.add_argument("--dry-run", action="store_true", help="show what would be imported; write nothing")
    sub.add_argument("--merge", action="store_true", help="import into a store that is not empty (adds only what it does not know)")
    sub.add_argument("--json", action="store_true", help="one JSON document instead of text")


class Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _run(args: argparse.Namespace, config: Config) -> int:
    try:
        doc = asyncio.run(_import(args, config))
    except Refused as refused:
        print(printable(f"cdnreq: {refused}"), file=sys.stderr)
        if args.json:  # scripts read stdout: the refusal too, as one document
            json.dump({"ok": False, "error": str(refused)}, sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
        return refused.code
    if args.json:
        doc["ok"] = True
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(doc))
    return EXIT_OK


async def _import(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    prefix, host = config.legacy.request_prefix, config.technical_cdn.host_instance_guid
    if not prefix:
        raise Refused(EXIT_CONFIG, "[legacy].request_prefix is not set: give the old requester's request-name-prefix")
    if not host:
        raise Refused(EXIT_CONFIG, "[technical_cdn].host_instance_guid is not set: the technical CDN instance hosting the entries")
    try:
        state = read_legacy(args.sources)
    except LegacyError as error:
        raise Refused(EXIT_CONFIG, f"legacy state refused: {error}") from None
    ssl_context = master_context(config, getattr(args, "config", None) or "the configuration")
    try:
        async with master_client(config, None, ssl_context) as client:
            listing = await client.list_hosted(config.master.instance_guid)
            entries = await client.list_entries(host)
    except MasterError as error:
        raise Refused(EXIT_TICK_FAILED, f"cannot read the master: {error}") from None
    policy = AdoptPolicy(
        legacy_prefix=prefix, reference_style=config.legacy.reference_style,
        request_prefix=config.technical_cdn.request_prefix, spec_hash=policy_of(config).spec_hash,
        domain=domain_policy_of(config),
    )
    listed = {i.guid: i for i in listing.instances}
    store = await _open(config, args.dry_run)
    try:
        known = await _known(store, args.merge)
        now = time.time()
        adoption = adopt(state, listed, entries.by_title(), policy, now, known, frozenset(listing.unusable))
        _check_mapping(state, adoption, listed, entries.entries, config)
        if not args.dry_run and store is not None:
            await store.commit(
                upserts=adoption.records, host_upserts=adoption.claims,
                challenge_upserts=adoption.challenges, shown=adoption.shown, events=adoption.events,
                also=imports.steps(now, _source(args), _summary(adoption), adoption.findings),
            )
    except StoreError as error:
        raise Refused(EXIT_DATABASE, str(error)) from None
    finally:
        if store is not None:
            await store.close()
    return _document(state, adoption, args, entries.unreadable)


async def _open(config: Config, dry_run: bool) -> Engine | None:
    database = config.daemon.database
    try:
        if is_postgres(config):  # the dry run reads as a standby; the import takes the lease
            store = await open_engine(config, lock=not dry_run)
            if dry_run and store.schema_version == 0:  # an empty database: no store yet, as no SQLite file
                await store.close()
                return None
            return store
        if dry_run:
            return await Store.open_snapshot(database) if database.exists() else None
        return await Store.open(database)
    except StoreLocked as error:
        raise Refused(EXIT_DATABASE, f"{error} (stop cdnreq before importing)") from None
    except StoreError as error:  # read-only, not a cdnreq database, newer schema: stopping cdnreq will not help
        raise Refused(EXIT_DATABASE, str(error)) from None


async def _known(store: Engine | None, merge: bool) -> Known:
    if store is None or await store.is_empty():
        return Known()
    if not merge:
        raise Refused(
            EXIT_DATABASE,
            f"{store.path} already holds instances: import-legacy fills an empty store; --merge adds"
            " only what it does not know",
        )
    records, hosts = await store.load(), await store.load_hosts()
    return Known(
        guids=frozenset(records), titles=frozenset(r.title for r in records.values()),
        hosts={h: c.guid for h, c in hosts.items()},
        bare=frozenset(g for g, r in records.items() if r.tech_guid is None and r.param_hash is None),
    )


def _check_mapping(
    state: LegacyState, adoption: Adoption, listed: dict[str, Any], entries: Any, config: Config
) -> None:
    """Refuse an import that a glitch or a wrong setting would make wrong: a
    master or technical CDN listing nothing while the old requester served
    customers (a lost listing, or the wrong host instance), entries under the
    legacy prefix but no request stage's database (a file left out), or no live
    customer of the old requester listed by the master (the references were
    read the wrong way: the first tick would take every entry for gone)."""
    legacy = sum(1 for e in entries if e.title.startswith(config.legacy.request_prefix))
    if legacy and not state.requested:
        raise Refused(
            EXIT_CONFIG,
            f"the technical CDN hosts {legacy} entries under [legacy].request_prefix but no database"
            " given holds the request stage's table (valid rows holding what was published): without"
            " it every live customer would be taken for one still waiting for its entry; pass --from"
            " with it",
        )
    live = sum(1 for r in state.requested.values() if r.state == VALID)
    if live and not listed:
        raise Refused(
            EXIT_TICK_FAILED,
            f"the master lists no customer while the old requester served {live}: a master that"
            " lost its listing for a moment must not decide an import; try again",
        )
    if live and not entries:
        raise Refused(
            EXIT_TICK_FAILED,
            f"the technical CDN ([technical_cdn].host_instance_guid) lists no entry while the old"
            f" requester served {live}: is it the instance hosting them? (try again if so)",
        )
    if live and not adoption.counts["references listed"]:
        raise Refused(
            EXIT_CONFIG,
            f"none of the {live} live customers of the old requester is listed by the master under"
            f" [legacy].reference_style = {config.legacy.reference_style!r}: check that setting",
        )


def _source(args: argparse.Namespace) -> str:
    return ", ".join(str(p) for p in args.sources)


def _summary(adoption: Adoption) -> dict[str, int]:
    c = adoption.counts
    return {
        "instances": c["instances"], "live": c["live"], "requested": c["requested"],
        "retained": c["retained"], "new": c["new"], "proven hosts": c["proven hosts"],
        "pending challenges": c["pending challenges"],
        "conflicts": sum(1 for f in adoption.findings if f.kind in CONFLICTS),
        "findings": len(adoption.findings),
    }


def _document(state: LegacyState, adoption: Adoption, args: argparse.Namespace, unreadable: int) -> dict[str, Any]:
    return {
        "dry_run": bool(args.dry_run),
        "sources": [{"path": s.path, "role": s.role, "rows": s.rows} for s in state.sources],
        "summary": _summary(adoption),
        "findings": [f.as_dict() for f in adoption.findings],
        "unreadable_entries": unreadable,
    }


def render(doc: dict[str, Any]) -> str:
    out = ["would import (dry run: nothing written)" if doc["dry_run"] else "imported"]
    for s in doc["sources"]:
        out.append(printable(f"  {s['path']}: {s['role']} ({s['rows']} rows)"))  # a file's name is anyone's text
    out.append("  " + ", ".join(f"{k}: {v}" for k, v in doc["summary"].items()))
    if doc["unreadable_entries"]:
        out.append(f"  the technical CDN listed {doc['unreadable_entries']} entries without a title or guid (ignored)")
    if doc["findings"]:
        out.append("findings:")
        for f in doc["findings"]:
            who = f["guid"] or f["reference"]
            out.append(printable(f"  {f['kind']}: {who}: {f['found']}; {f['decision']}"))
    return "\n".join(out) + "\n"

"""The technical CDN's own list of the entries it hosts.

`cdnreq orphans` and `cdnreq import-legacy` read it (never the tick): the
same `instance_node_instance_list` call as the customers' listing, asked for
the technical CDN's hosting instance. Unlike the customers' listing, the
title is what matters here: it is the only link from an entry back to the
customer it was requested for. Entries without a usable title or guid are
counted, not guessed at.
"""

from __future__ import annotations

from typing import Any

import orjson

from cdnreq.model import Entries, TechnicalEntry


class EntriesMalformed(ValueError):
    pass


def read_entries(raw: bytes | bytearray) -> Entries:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise EntriesMalformed(f"not JSON: {error}") from None
    items = body.get("result_list") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise EntriesMalformed("no result_list array")
    return parse_entries(items)


def parse_entries(items: list[Any]) -> Entries:
    entries: list[TechnicalEntry] = []
    unreadable = 0
    for item in items:
        title = item.get("title") if isinstance(item, dict) else None
        guid = item.get("instance_guid") if isinstance(item, dict) else None
        if not isinstance(title, str) or not title or not isinstance(guid, str) or not guid:
            unreadable += 1
            continue
        parameters = item.get("parameters")
        state = item.get("state")
        entries.append(TechnicalEntry(
            title, guid,
            parameters if isinstance(parameters, dict) else {},
            state if isinstance(state, str) else None,
        ))
    return Entries(tuple(entries), unreadable)

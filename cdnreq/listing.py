"""The master's listing, read so that one broken entry is one unusable entry.

orjson reads a healthy listing whole (the fast path: 100,000 instances in a
fraction of a second). A body orjson refuses (one customer's NaN, lone
surrogate, 1,100 levels of nesting or stray byte) is not a failed listing:
cdnreq.listing_salvage cuts `result_list` into one byte span per entry and
reads each entry on its own. An entry that still cannot be read becomes
unusable with a reason, its `instance_guid` recovered from the entry's top
level; without a guid it counts as anonymous (which holds every removal). A body whose structure is broken (truncated,
not JSON, no `result_list`) is refused whole: a partial listing would make
the missing instances look gone. A body too large to read whole is read in
slices (cdnreq.listing_slices), with the same result.

Pure: bytes in, a Listing out.
"""

from __future__ import annotations

import hashlib
import json
import sys
from operator import attrgetter
from typing import Any, Iterable, Iterator

import orjson

from cdnreq.listing_salvage import Broken, ListingMalformed, salvage
from cdnreq.listing_slices import sliced
from cdnreq.model import FrozenJson, Listing, RequestedState, SharedInstance, digest, fast_maker

# A larger body is read in slices (listing_slices): read whole, orjson's own
# document adds about twice the body to the objects (at 100,000 instances a
# peak 40 MB higher, for 10% less time).
LARGE = 4 << 20
ESCAPED = 6  # a master may spell one byte of a value as six (\u0001): the room a listed entry may take
ENTRY_SLACK = 64 << 10  # the entry's other fields (guid, title, state...)
DIFFERENT = "listed twice with different content"
MAX_TITLE = 256  # characters of a customer's title kept: scopes match prefixes (config: at most 200)


def read_listing(raw: bytes | bytearray, max_parameters_bytes: int | None = None) -> Listing:
    """The listing in a body of `instance_node_instance_list`. A large body
    in a bytearray is consumed (emptied) as its entries are read.

    When read entry by entry, an entry far larger than `max_parameters_bytes`
    allows is not parsed: as Python objects a body of small keys takes ten
    times its size, and one customer's huge entry would exhaust the memory of
    the daemon serving every other customer."""
    bound = None if max_parameters_bytes is None else max_parameters_bytes * ESCAPED + ENTRY_SLACK
    if len(raw) > LARGE and isinstance(raw, bytearray):
        return parse_listing(sliced(raw, bound, max_parameters_bytes))
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return parse_listing(salvage(raw, bound, max_parameters_bytes))
    if not isinstance(answer, dict):
        raise ListingMalformed("answer is not a JSON object")
    entries = answer.pop("result_list", None)
    if not isinstance(entries, list):
        raise ListingMalformed("answer has no result_list array", excerpt=False)
    del answer
    return parse_listing(entries)


def parse_listing(entries: Iterable[Any]) -> Listing:
    """The listing's entries as SharedInstances.

    Each entry is released once read (from `entries` when it is a list; a
    large body's slices come one by one), so the parsed JSON and the
    instances built from it are never both whole in memory (at 100,000
    instances each is about 80 MB). The parameters are kept as the canonical
    text their hash is computed from (a FrozenJson, parsed again only to
    validate an instance whose gate is not settled, or to request it). The
    loop is the idle tick's first pass over every instance: the healthy
    case goes straight through.
    """
    instances: list[SharedInstance] = []
    unusable: dict[str, str] = {}
    unusable_titles: dict[str, str] = {}
    anonymous = 0
    make, states, append = _make_instance, _STATES, instances.append
    canonical, sha256, intern = _canonical, hashlib.sha256, sys.intern
    for entry in _released(entries):
        if entry.__class__ is dict:
            guid = entry.get("instance_guid")
            if guid.__class__ is not str or not guid or "\x00" in guid or not (guid.isascii() or addressable(guid)):
                anonymous += 1
                continue
            guid = intern(guid)  # a known guid: the store's one object (rows.py), not a copy kept among the listing's
            parameters = entry.get("parameters", _MISSING)
            raw_state = entry.get("state", _MISSING)
            state = states.get(raw_state) if raw_state.__class__ is str else None
            title = entry.get("title")
            if title.__class__ is not str:  # checked when stored (cdnreq.decide.names)
                title = None
            elif len(title) > MAX_TITLE:  # a huge title is not held through the tick
                title = title[:MAX_TITLE]
            if parameters.__class__ is dict and state is not None:
                text = canonical(parameters)
                if text is not None:  # kept as the text it was hashed from: a third of the dict's size
                    append(make(guid, state, FrozenJson(text), sha256(text).hexdigest(), title))
                    continue
                try:
                    append(make(guid, state, parameters, digest(parameters), title))
                    continue
                except RecursionError:  # orjson reads 1,024 levels, the standard library writes fewer
                    reason = "parameters: nested too deeply to be encoded"
                except (ValueError, TypeError):
                    reason = "parameters: cannot be encoded as JSON"
            elif parameters.__class__ is FrozenJson and state is not None:  # see listing_salvage._compact
                append(make(guid, state, parameters, sha256(parameters.raw).hexdigest(), title))
                continue
            else:
                reason = _refusal(parameters, raw_state)
            if title is not None:
                unusable_titles.setdefault(guid, title)
        elif isinstance(entry, Broken) and addressable(entry.guid):
            guid, reason = entry.guid, entry.reason
        else:
            anonymous += 1
            continue
        unusable.setdefault(guid, reason)  # listed twice, broken twice: the first reason
    kept, duplicates = _once(instances, unusable)
    if len(kept) + duplicates < len(instances):  # some listed twice differently: unusable, with a title
        for instance in instances:
            if instance.title is not None and instance.guid in unusable:
                unusable_titles.setdefault(instance.guid, instance.title)
    return Listing(kept, unusable, anonymous, duplicates, unusable_titles)


def _released(entries: Iterable[Any]) -> Iterator[Any]:
    """The entries, each dropped from a list once handed out."""
    if not isinstance(entries, list):
        yield from entries
        return
    for index, entry in enumerate(entries):
        entries[index] = None
        yield entry
        del entry


def _canonical(parameters: dict[str, Any]) -> bytes | None:
    """model.canonical_json() of parameters orjson writes as they are, out
    of orjson's buffer (which holds 4 KB for a short text); None for the
    others, hashed and validated as parsed: orjson refuses huge integers
    and lone surrogates, and writes NaN and Infinity as null."""
    try:
        text = orjson.dumps(parameters, option=SORTED)
    except TypeError:  # orjson.JSONEncodeError
        return None
    return None if b"null" in text else bytes(memoryview(text))


def _refusal(parameters: Any, raw_state: Any) -> str:
    if parameters is _MISSING:
        return "parameters: missing from the listing"
    if parameters.__class__ is not dict and parameters.__class__ is not FrozenJson:
        return f"parameters: not a JSON object (got {_kind(parameters)})"
    if raw_state is _MISSING:
        return "state: missing from the listing"
    return f"state: {_show(raw_state)} is not one of started, stopped, destroyed"


def _once(instances: list[SharedInstance], unusable: dict[str, str]) -> tuple[tuple[SharedInstance, ...], int]:
    """Each guid once: identical repeats are counted and dropped; a guid
    listed with different content (or also as unusable) is unusable this
    tick, never "first one wins"."""
    guids = set(map(_GUID, instances))
    if len(guids) == len(instances) and (not unusable or guids.isdisjoint(unusable)):
        return tuple(instances), 0  # the usual case: one pass in C
    first: dict[str, SharedInstance] = {}
    duplicates = 0
    for instance in instances:
        guid = instance.guid
        if guid in unusable:
            continue
        seen = first.get(guid)
        if seen is None:
            first[guid] = instance
        elif seen.state is instance.state and seen.param_hash == instance.param_hash:
            duplicates += 1
        else:
            del first[guid]
            unusable[guid] = DIFFERENT
    return tuple(first.values()), duplicates  # listed usable and unusable: the unusable reason stands


_make_instance = fast_maker(SharedInstance)
SORTED = orjson.OPT_SORT_KEYS  # model.canonical_json's spelling
_STATES = {s.value: s for s in RequestedState}
_MISSING: Any = object()
_GUID = attrgetter("guid")


def addressable(guid: Any) -> bool:
    """A guid cdnreq can store and publish to: a non-empty string of
    Unicode scalar values (a lone surrogate can be neither), without NUL
    (PostgreSQL's text cannot hold one, and a guid is a key on every engine)."""
    if not isinstance(guid, str) or not guid or "\x00" in guid:
        return False
    try:
        guid.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


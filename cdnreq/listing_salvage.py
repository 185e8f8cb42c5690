"""The entry-by-entry reading of a listing body orjson refused, or too large
to read whole.

`result_list` is cut into one byte span per entry by a small scanner
(strings, escapes, depth), and each entry is read on its own. An entry that
still cannot be read becomes Broken with a reason, its `instance_guid`
recovered from the entry's top level. A body whose structure is broken
(truncated, not JSON, no `result_list`) is refused whole (ListingMalformed).

Pure: bytes in, entries out (cdnreq.listing builds the Listing).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

import orjson

from cdnreq.model import FrozenJson

MAX_DEPTH = 512  # an entry nested deeper is unusable (the standard library's parser recurses)
COMPACT = 8 << 10  # parameters larger than this, read entry by entry, are kept as their text

class ListingMalformed(ValueError):
    """The body as a whole is not a listing; `excerpt`: show the body's start."""

    def __init__(self, problem: str, *, excerpt: bool = True):
        self.problem = problem
        self.excerpt = excerpt
        super().__init__(problem)


@dataclass(frozen=True, slots=True)
class Broken:
    """An entry that could not be read: its guid when recovered, and why."""

    guid: str | None
    reason: str


# -- the scanner for a body orjson refused ---------------------------------------------------

# a whole string (escapes included), a structural character, or a lone quote
# (a string never closed: the body is broken)
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]|"', re.DOTALL)
_NEXT = re.compile(rb'["\[\]{},:]')
_BACKSLASH = ord("\\")
_QUOTE, _COLON, _COMMA = ord('"'), ord(":"), ord(",")
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")
_SPACE = b" \t\r\n"
_BLANKS = re.compile(rb"[ \t\r\n]*")


def _tokens(raw: bytes | bytearray) -> Iterator[tuple[int, int, int]]:
    """(start, character, end) of each string and structural character; a
    string's end is -1 when it is never closed. A string's closing quote is
    found by memchr (bytes.find), not character by character: a listing of
    10,000 x 64 KiB is mostly strings."""
    search, find = _NEXT.search, raw.find
    pos = 0
    while (match := search(raw, pos)) is not None:
        at = match.start()
        char = raw[at]
        if char != _QUOTE:
            pos = at + 1
            yield at, char, pos
            continue
        end = find(b'"', at + 1)
        while end != -1 and _escaped(raw, end):
            end = find(b'"', end + 1)
        if end == -1:
            yield at, char, -1
            return
        pos = end + 1
        yield at, char, pos


def _escaped(raw: bytes | bytearray, quote: int) -> bool:
    """Whether the quote at `quote` is escaped (an odd run of backslashes before it)."""
    run = 0
    while raw[quote - 1 - run] == _BACKSLASH:
        run += 1
    return run % 2 == 1


def salvage(raw: bytes | bytearray, bound: int | None = None, cap: int | None = None) -> list[Any]:
    """The entries of `result_list`, each parsed alone: a dict (or any JSON
    value) when it can be read, else Broken. Raises ListingMalformed when
    the body's own structure (outside the entries) is broken."""
    view = memoryview(raw)
    return [
        _oversized(view[start:end], cap) if bound is not None and end - start > bound
        else _entry(view[start:end])
        for start, end in _entry_spans(raw)
    ]


def _compact(entry: Any, *, exact: bool) -> Any:
    """An entry whose parameters are large, with the parameters kept as their
    canonical JSON text (a FrozenJson, parsed again by validation alone).

    Parsed, 64 KiB of small keys take ten times that as Python objects; the
    entries of a body read entry by entry are all alive until the listing is
    built, so 10,000 such entries would take gigabytes. As text they take
    their size. `exact`: orjson read the entry, so it writes it back as it
    was; otherwise (NaN, a lone surrogate, a huge integer: orjson would write
    null or refuse) the standard library writes it, escaped, and reads back
    the same values."""
    if entry.__class__ is not dict:
        return entry
    parameters = entry.get("parameters")
    if parameters.__class__ is not dict or len(parameters) < 8:
        return entry
    try:
        if exact:
            text = orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS)
        else:
            text = json.dumps(parameters, sort_keys=True, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError, RecursionError):
        return entry
    if len(text) > COMPACT:
        entry["parameters"] = FrozenJson(bytes(text))
    return entry


def read_entry(entry: Any) -> Any:
    """An entry orjson read (within a slice of the body): as _entry() gives it."""
    return _compact(entry, exact=True)


def _oversized(span: bytearray | memoryview, cap: int | None) -> Broken:
    """An entry too large to be read into memory: its guid from a scan."""
    raw = span if isinstance(span, bytearray) else bytes(span)
    return Broken(
        _guid(raw, _members(raw)),
        f"parameters: the entry takes {len(raw)} bytes in the listing, far more than the {cap}"
        " allowed ([validation].max_parameters_bytes); not read",
    )


def consumed(raw: bytearray, bound: int | None = None, cap: int | None = None) -> list[Any]:
    """The entries of a large body, read from the last one back, the body
    cut short behind each: it shrinks while the entries grow, so the
    daemon holds about one copy of the listing, not three (the body,
    orjson's own document, the objects) as when read whole."""
    spans = _entry_spans(raw)
    entries = []
    for start, end in reversed(spans):
        if bound is not None and end - start > bound:
            entries.append(_oversized(raw[start:end], cap))
        else:
            entries.append(_entry(memoryview(raw[start:end])))
        del raw[start:]
    entries.reverse()
    return entries


def _entry_spans(raw: bytes | bytearray) -> list[tuple[int, int]]:
    """Byte spans of result_list's elements (whitespace trimmed)."""
    depth = 0
    key: bytes | None = None  # the last string seen at the top level
    named: bytes | None = None  # the key whose value comes next at the top level
    in_list = False
    found = False
    spans: list[tuple[int, int]] = []
    start = 0
    end_of_body = None
    for at, char, after in _tokens(raw):
        if char == _QUOTE:
            if after == -1:
                raise ListingMalformed("answer is not JSON (a string is never closed)")
            if depth == 1:
                key = bytes(raw[at:after])
            continue
        if end_of_body is not None:
            raise ListingMalformed("answer is not JSON (text after the top-level object)")
        if char in _OPEN:
            if depth == 0 and char != ord("{"):
                raise ListingMalformed("answer is not a JSON object")
            if depth == 1 and named == b'"result_list"' and char == ord("["):
                if found:
                    raise ListingMalformed("answer has two result_list arrays", excerpt=False)
                found = in_list = True
                start = after
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ListingMalformed("answer is not JSON (unbalanced brackets)")
            if depth == 1 and in_list:
                if char != ord("]"):
                    raise ListingMalformed("answer is not JSON (result_list is not closed)")
                _add_span(raw, start, at, spans, last=True)
                in_list = False
            elif depth == 0:
                if char != ord("}"):
                    raise ListingMalformed("answer is not JSON (unbalanced brackets)")
                end_of_body = after
        elif char == _COMMA:
            if depth == 2 and in_list:
                _add_span(raw, start, at, spans, last=False)
                start = after
            elif depth == 1:
                key = named = None
        elif char == _COLON and depth == 1:
            named, key = key, None
    if depth != 0 or end_of_body is None:
        raise ListingMalformed("answer is not JSON (truncated)")
    if raw[end_of_body:].strip(_SPACE):
        raise ListingMalformed("answer is not JSON (text after the top-level object)")
    if not found:
        raise ListingMalformed("answer has no result_list array", excerpt=False)
    return spans


def _add_span(raw: bytes | bytearray, start: int, end: int, spans: list[tuple[int, int]], *, last: bool) -> None:
    while start < end and raw[start] in _SPACE:
        start += 1
    while end > start and raw[end - 1] in _SPACE:
        end -= 1
    if start == end:
        if last and not spans:
            return  # an empty array
        raise ListingMalformed("answer is not JSON (an empty element in result_list)")
    spans.append((start, end))


def _entry(span: memoryview) -> Any:
    """One entry, parsed on its own; Broken when it cannot be."""
    try:
        return _compact(orjson.loads(span), exact=True)
    except orjson.JSONDecodeError:
        pass
    raw = bytes(span)
    if _more_than_one_value(raw):
        # a missing comma: one span holds two entries, and the second, read as
        # the first's trailing text, would vanish without a trace
        raise ListingMalformed("answer is not JSON (two values in one element of result_list)")
    members = _members(raw)
    deep = next((name for name, depth, _ in members if depth > MAX_DEPTH), None)
    problem = "unbalanced brackets"
    if deep is None:
        try:  # what only orjson refuses: NaN, Infinity, lone surrogates, huge numbers
            return _compact(json.loads(raw), exact=False)
        except RecursionError:
            deep = "entry"
        except ValueError as error:
            problem = str(error).split(":")[0]
    guid = _guid(raw, members)
    if deep is not None:
        return Broken(guid, f"{deep}: nested deeper than {MAX_DEPTH} levels")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        name, offset = _member_at(members, error.start)
        return Broken(guid, f"{name}: not valid UTF-8 at byte {offset}")
    return Broken(guid, f"entry: not valid JSON ({problem})")


def _more_than_one_value(raw: bytes) -> bool:
    """Whether an element that opens with a bracket goes on after it closes."""
    if not raw.startswith((b"{", b"[")):
        return False  # a scalar's entry is anonymous, whatever follows it
    depth = 0
    for _, char, after in _tokens(raw):
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth == 0:
                return bool(raw[after:].strip(_SPACE))
        elif after == -1:
            return False
    return False


def _members(raw: bytes) -> list[tuple[str, int, int]]:
    """The entry's top-level keys: (name as shown, how deep its value nests,
    where its value starts). Empty when the entry is not an object."""
    members: list[tuple[str, int, int]] = []
    if not raw.startswith(b"{"):
        return members
    depth = 0
    key: bytes | None = None
    current: list[Any] | None = None  # [name, deepest, start] of the value being read
    for at, char, after in _tokens(raw):
        if char == _QUOTE:
            if after == -1:
                break
            if depth == 1 and current is None:
                key = raw[at:after]
        elif char in _OPEN:
            depth += 1
            if current is not None and depth - 1 > current[1]:
                current[1] = depth - 1
        elif char in _CLOSE:
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and char == _COLON and key is not None:
            current, key = [_key_name(key), 0, after], None
        elif depth == 1 and char == _COMMA and current is not None:
            members.append((current[0], current[1], current[2]))
            current = None
    if current is not None:
        members.append((current[0], current[1], current[2]))
    return members


def _key_name(token: bytes) -> str:
    """A key as shown in a message: escaped, cut to 60 characters."""
    try:
        name = json.loads(token)
    except ValueError:
        name = token[1:-1].decode("utf-8", "backslashreplace")
    shown = json.dumps(name)[1:-1]
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _guid(raw: bytes, members: list[tuple[str, int, int]]) -> str | None:
    """The entry's instance_guid, when it is a string at its top level (the
    last one, as a JSON parser would read it)."""
    for name, _, start in reversed(members):
        if name == "instance_guid":
            match = _TOKENS.match(raw, _BLANKS.match(raw, start).end())
            if match is None or raw[match.start()] != _QUOTE or match.end() - match.start() < 2:
                return None
            try:
                guid = json.loads(match.group())
            except ValueError:
                return None
            return guid if isinstance(guid, str) else None
    return None


def _member_at(members: list[tuple[str, int, int]], offset: int) -> tuple[str, int]:
    """The top-level key whose value holds byte `offset`, and the offset in that value."""
    name, start = "entry", 0
    for key, _, value_start in members:
        if value_start <= offset:
            name, start = key, value_start
    return name, offset - start

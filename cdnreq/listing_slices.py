"""A large listing body read in slices by orjson, not entry by entry in Python.

A body over `listing.LARGE` is not read whole (orjson's document and the
objects would take several times the body). The scanner of
cdnreq.listing_salvage cuts it entry by entry, but in Python: at 300,000
instances that scan was half of an idle tick. A healthy body of the master's
shape (`{"result_list": [...]}`) is cut instead at candidate entry
boundaries (a `}` and a `{` around a comma) into slices of about `SLICE`
bytes, each read by orjson as an array.

Why a wrong cut cannot go unnoticed: the first slice starts right after the
list's `[`, a true boundary. A slice that starts at a true boundary and that
orjson reads whole ends at a true boundary too (parsing followed the body's
real strings and brackets from the start), so the next slice starts at one.
A candidate inside a string or a nested value gives a slice orjson refuses;
the next candidate is tried, a few times. When none is read (a customer's
NaN, a huge entry, a string of `},{` across the cut), the scanner reads the
entries of about one slice, from the last true boundary, past what orjson
refused, and slicing resumes after them: one customer's entry costs one
slice read in Python, not the rest of the body. Whatever the scanner must
judge whole (the list's end, a broken body) is read by it from the last
true boundary: the same entries, Broken reasons and errors as if the whole
body had been scanned.

Pure: bytes in, entries out. The body is consumed (emptied) as it is read.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import orjson

from cdnreq.listing_salvage import (
    _CLOSE, _COMMA, _OPEN, _QUOTE, ListingMalformed, _entry, _entry_spans, _oversized, _tokens, consumed, read_entry,
)

SLICE = 1 << 20  # bytes read by orjson at once, about: they take about ten times that as objects
LIMIT = 4 << 20  # a slice is never longer (nor longer than the bound of an entry's size)
TRIES = 8  # candidates tried for one cut before the scanner reads a slice's worth
REACH = 4096  # the blanks around a candidate's comma, at most, past the limit

_HEAD = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"result_list"[ \t\r\n]*:[ \t\r\n]*\[')
_TAIL = re.compile(rb'\][ \t\r\n]*\}[ \t\r\n]*\Z')
_CUT = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
HEADER = b'{"result_list":['


def sliced(raw: bytearray, bound: int | None = None, cap: int | None = None) -> Iterator[Any]:
    """The entries of `result_list`, as listing_salvage.consumed() gives them,
    slice by slice: a caller that builds the listing as they come never holds
    every entry parsed at once (at 100,000 instances, 80 MB)."""
    head = _HEAD.match(raw)
    tail = _TAIL.search(raw, max(head.end(), len(raw) - 4096)) if head is not None else None
    if head is None or tail is None:
        yield from consumed(raw, bound, cap)  # another shape: the scanner checks every byte of it
        return
    end = tail.start()
    del raw[end:]  # the list's contents stay, from head.end()
    del raw[: head.end()]
    # A slice no longer than `bound` holds no entry the scanner would refuse
    # to read (listing_salvage._oversized): the entries are the same.
    limit = min(bound, LIMIT) if bound is not None else LIMIT
    at = min(SLICE, limit // 2)
    while raw:
        piece = _next_slice(raw, at, limit)
        if piece is None:
            try:
                piece = _scanned(raw, at, bound, cap)
            except ListingMalformed:
                # two values in one element: the body's error, unless its
                # structure is broken further on (the scanner says so first)
                raw[0:0] = HEADER
                raw += b"]}"
                _entry_spans(raw)
                raise
        if piece is None:
            break
        yield from piece
    if raw:
        raw[0:0] = HEADER  # the rest, from a true boundary, with the body's end that was checked
        raw += b"]}"
        yield from consumed(raw, bound, cap)


def _next_slice(raw: bytearray, at: int, limit: int) -> list[Any] | None:
    """The entries of the next slice, cut from the front of `raw` at the
    first candidate from `at` on; None when no cut in reach gives one
    orjson reads (the scanner reads past it)."""
    # A candidate past the limit is of no use: the search stops there (past a
    # candidate it misses, the scanner reads), never at the end of the body.
    reach = min(len(raw), limit + REACH)
    for _ in range(TRIES):
        cut = _CUT.search(raw, at, reach)
        if cut is None:  # the last slice (the whole rest was searched when it is within the limit)
            return _read(raw, len(raw)) if len(raw) <= limit else None
        if cut.start() + 1 > limit:
            return None
        entries = _read(raw, cut.start() + 1, cut.end() - 1)
        if entries is not None:
            return entries
        at = cut.end()
    return None


def _read(raw: bytearray, end: int, next_start: int | None = None) -> list[Any] | None:
    """raw[:end] read as the contents of an array, then dropped from `raw`
    (up to `next_start`); None, and `raw` untouched, when orjson refuses it.
    The last slice, whose end is the list's own, may be refused only by what
    the scanner must judge."""
    try:
        entries = orjson.loads(b"[" + raw[:end] + b"]")
    except orjson.JSONDecodeError:
        return None
    del raw[: end if next_start is None else next_start]
    return [read_entry(entry) for entry in entries]


def _scanned(raw: bytearray, at: int, bound: int | None, cap: int | None) -> list[Any] | None:
    """The entries at the front of `raw` up to byte `at` at least (past what
    orjson refused), each cut and read as listing_salvage.consumed() cuts
    and reads it, then dropped from `raw`; None, and `raw` untouched, when
    the scanner must read the rest whole (the list's last element, its end,
    an empty element or a broken structure: their errors come first).
    `raw` starts at a true boundary, where the scanner's state is known: in
    result_list, before an element."""
    spans: list[tuple[int, int]] = []
    depth = 0
    start = 0
    for at_char, char, after in _tokens(raw):
        if char == _QUOTE:
            if after == -1:
                return None
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth < 0:
                return None  # result_list ends before `at` (or the body is broken)
        elif char == _COMMA and depth == 0:
            first, end = _BLANK_START.match(raw, start).end(), at_char
            while end > first and raw[end - 1] in _SPACE:
                end -= 1
            if first == end:
                return None
            spans.append((first, end))
            start = after
            if after >= at:
                break
    else:
        return None
    following = _BLANK_START.match(raw, start).end()
    if following == len(raw) or raw[following] in _EMPTY:
        return None  # an empty element next (a comma before the list's end or another comma)
    entries = [
        _oversized(raw[first:end], cap) if bound is not None and end - first > bound
        else _entry(memoryview(raw[first:end]))
        for first, end in spans
    ]
    del raw[:start]
    return entries


_BLANK_START = re.compile(rb"[ \t\r\n]*")
_SPACE = b" \t\r\n"
_EMPTY = b",]}"

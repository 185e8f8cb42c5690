"""Attacks on the slice path (cdnreq.listing_slices): a hostile customer who
controls their own entry, a faulty master who controls the whole body.

The reference is listing_salvage.consumed(), the scanner that reads every
byte: sliced() must give what it gives, and one customer's entry must not
cost every other customer the slice path's speed.
"""

from __future__ import annotations

import pytest

from cdnreq import listing_salvage, listing_slices
from cdnreq.listing_salvage import ListingMalformed, consumed
from cdnreq.listing_slices import sliced


def entry(guid: str, parameters: bytes = b'{"url":"https://a.example"}') -> bytes:
    return b'{"instance_guid":"%s","state":"started","parameters":%s}' % (guid.encode(), parameters)


def listing(*items: bytes, head: bytes = b'{"result_list":[', tail: bytes = b"]}") -> bytes:
    return head + b",".join(items) + tail


def outcome(read, body: bytes, bound: int | None = None) -> object:
    try:
        return list(read(bytearray(body), bound, None if bound is None else bound // 7))
    except ListingMalformed as error:
        return ("malformed", str(error), error.excerpt)


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of entries the Python scanner read (each span it parsed)."""
    spans: list[int] = []
    entry_, oversized = listing_salvage._entry, listing_salvage._oversized

    def counted_entry(span):
        spans.append(len(span))
        return entry_(span)

    def counted_oversized(span, cap):
        spans.append(len(span))
        return oversized(span, cap)

    for module in (listing_salvage, listing_slices):
        if hasattr(module, "_entry"):
            monkeypatch.setattr(module, "_entry", counted_entry)
        if hasattr(module, "_oversized"):
            monkeypatch.setattr(module, "_oversized", counted_oversized)
    return spans


GOOD = [entry(f"G{n}") for n in range(2000)]  # about 140 KB
HOSTILE = {
    "a NaN": entry("H", b'{"x":NaN}'),
    "a lone surrogate": entry("H", b'{"x":"\\ud800"}'),
    "an integer beyond 64 bits": entry("H", b'{"x":%d}' % 2**70),
    "1,100 levels": entry("H", b"[" * 1100 + b"]" * 1100),
    "an entry over the bound": entry("H", b'{"x":"%s"}' % (b"y" * 5000)),
    "a string of fake boundaries": entry("H", b'{"x":"%s"}' % (b"},{" * 1000)),
}


@pytest.mark.parametrize("where", [0, 300, 1000, 1999])
@pytest.mark.parametrize("hostile", list(HOSTILE.values()), ids=list(HOSTILE))
def test_one_customer_s_entry_does_not_send_the_rest_of_the_body_to_the_scanner(
    hostile: bytes, where: int, scanned: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: any one customer (a NaN in their parameters; an entry over
    the bound; a string of `},{` across a cut) made sliced() hand the whole
    rest of the body to the Python scanner: at 300,000 instances (69.5 MB)
    the read took 5.3-5.7 s instead of 0.8 s, on every tick, for everyone.
    The scanner reads past the entry orjson refused, and slicing resumes."""
    monkeypatch.setattr(listing_slices, "SLICE", 2048)
    body = listing(*GOOD[:where], hostile, *GOOD[where:])
    bound = 4000
    expected = outcome(consumed, body, bound)
    scanned.clear()
    assert outcome(sliced, body, bound) == expected
    assert sum(scanned) <= 2 * bound + len(hostile)  # the scanner read about a slice, not the rest (140 KB)


def test_a_broken_body_after_a_scanned_entry_is_still_refused_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing_slices, "SLICE", 256)
    nan = HOSTILE["a NaN"]
    for body in [
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b",]}"),  # a trailing comma
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b", ]}"),
        listing(*GOOD[:50], nan, b"", *GOOD[50:100]),  # an empty element
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b"]"),  # truncated
        listing(*GOOD[:50], nan + b" " + GOOD[50], *GOOD[51:100]),  # a missing comma
        listing(*GOOD[:50], nan, GOOD[50] + b" " + GOOD[51], *GOOD[52:100]),
        listing(*GOOD[:50], nan, GOOD[50] + b" " + GOOD[51], *GOOD[52:100], tail=b"]"),  # both: truncated wins
        listing(*GOOD[:50], nan, GOOD[50] + b" " + GOOD[51], *GOOD[52:100], b'"open]}'),
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b'],"result_list":[]}'),  # two lists
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b',],"x":[1]}'),  # a trailing comma, a key after the list
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b', \n],"x":[1]}'),
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b",,]}"),
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b",}]}"),
        listing(*GOOD[:50], nan, *GOOD[50:100], tail=b"}}"),  # the list closed by a brace
    ]:
        expected = outcome(consumed, body)
        assert expected[0] == "malformed"
        assert outcome(sliced, body) == expected, body[-40:]
    valid = listing(*GOOD[:50], nan, *GOOD[50:100], tail=b'],"x":[1]}')  # a key after the list
    assert outcome(sliced, valid) == outcome(consumed, valid) != []


@pytest.mark.parametrize("slice_size", [1, 64, 4096])
def test_scanned_and_sliced_entries_keep_their_order_and_reasons(
    slice_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing_slices, "SLICE", slice_size)
    items = list(GOOD[:300])
    for n, hostile in enumerate(HOSTILE.values()):
        items.insert(40 * n + 7, hostile.replace(b'"H"', b'"H%d"' % n))
    items.insert(100, b"1")  # anonymous scalars, arrays, strings
    items.insert(150, b'[{"a":1},{"b":2}]')
    items.insert(200, b'"},{"')
    body = listing(*items, head=b' {"result_list" :\n[ ', tail=b" ]\n} ")
    assert outcome(sliced, body, 4000) == outcome(consumed, body, 4000)
    assert outcome(sliced, body) == outcome(consumed, body)


class _CountingSearch:
    """listing_slices._CUT, counting the bytes each search may cover."""

    def __init__(self, pattern) -> None:
        self.pattern, self.searched = pattern, 0

    def search(self, raw, pos=0, endpos=None):
        self.searched += (len(raw) if endpos is None else min(endpos, len(raw))) - pos
        return self.pattern.search(raw, pos, len(raw) if endpos is None else endpos)


def test_the_search_for_a_cut_stays_within_a_slice_s_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack on the scanner's resumption: with no candidate boundary ahead
    (a master listing its entries as arrays), each slice searched the whole
    rest of the body for one before the scanner read a slice's worth: the
    read was quadratic (68.6 MB: 16.4 s, the scanner alone 9.1 s). A
    candidate past a slice's limit is of no use: the search stops there."""
    search = _CountingSearch(listing_slices._CUT)
    monkeypatch.setattr(listing_slices, "_CUT", search)
    items = [b'["G%d",{"url":"https://a.example/%d"},"started"]' % (n, n) for n in range(3000)]
    items[10] = b'["N",{"x":NaN}]'
    body = listing(*items)
    assert outcome(sliced, body, 4000) == outcome(consumed, body, 4000)
    assert search.searched <= 4 * len(body)

"""A large body read in slices by orjson gives exactly what the scanner gives.

The slices are cut at candidate boundaries found without parsing; a cut
inside a customer's string or nested value must never change an entry, hide
one, or turn a broken body into a listing. The reference is
listing_salvage.consumed(), the scanner that reads every byte.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdnreq import listing_slices
from cdnreq.listing_salvage import ListingMalformed, consumed
from cdnreq.listing_slices import sliced

TRICKY = ["},{", "}, {", '"},{"', "\\", '\\"},{\\"', "]}", "{", "}", ",", "é", "\u2028"]

texts = st.one_of(st.sampled_from(TRICKY), st.text(alphabet='ab{},[]":\\ ', max_size=12))
leaves = st.one_of(st.integers(-5, 5), texts, st.booleans(), st.none())
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def entries(draw: st.DrawFn, n: int) -> bytes:
    kind = draw(st.sampled_from(["good", "good", "good", "nan", "scalar", "big", "deep"]))
    guid = f"G{n}"
    if kind == "scalar":
        return draw(st.sampled_from([b"1", b'"x"', b"null", b"[]"]))
    if kind == "deep":
        return b'{"instance_guid":"%s","parameters":' % guid.encode() + b"[" * 600 + b"]" * 600 + b"}"
    parameters = draw(st.dictionaries(texts, values, max_size=4))
    if kind == "big":
        parameters["pad"] = [{"k": "v" * 40}] * draw(st.integers(20, 60))
    text = json.dumps({"instance_guid": guid, "state": "started", "parameters": parameters},
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if kind == "nan":
        text = text[:-2] + ', "n": NaN}}'
    return text.encode()


SEPARATORS = [b",", b", ", b",\n  ", b"\n,"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(0, 8))
    items = [draw(entries(n)) for n in range(count)]
    parts = []
    for n, item in enumerate(items):
        if n:
            parts.append(draw(st.sampled_from(SEPARATORS)))
        parts.append(item)
    inner = b"".join(parts)
    head = draw(st.sampled_from([b'{"result_list":[', b' {"result_list" : [ ', b'{"other":1,"result_list":[']))
    tail = draw(st.sampled_from([b"]}", b" ] } \n", b'],"x":[1]}']))
    body = head + inner + tail
    damage = draw(st.sampled_from(["none"] * 6 + ["comma", "trailing", "cut", "double"]))
    if damage == "comma" and b"},{" in body:
        body = body.replace(b"},{", b"} {", 1)
    elif damage == "trailing":
        body = head + inner + b"," + tail
    elif damage == "cut":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif damage == "double":
        body = body[:-1] + b',"result_list":[]}'
    return body


def outcome(read, body: bytes, bound: int | None) -> object:
    try:
        return list(read(bytearray(body), bound, None if bound is None else bound // 7))
    except ListingMalformed as error:
        return ("malformed", str(error))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), slice_size=st.sampled_from([1, 16, 200, 1 << 20]), bound=st.sampled_from([None, 900, 4000]))
def test_slices_read_what_the_scanner_reads(body: bytes, slice_size: int, bound: int | None) -> None:
    original = listing_slices.SLICE
    listing_slices.SLICE = slice_size
    try:
        assert outcome(sliced, body, bound) == outcome(consumed, body, bound)
    finally:
        listing_slices.SLICE = original


def test_a_cut_inside_a_customer_s_string_or_list_is_never_taken() -> None:
    """Every candidate boundary of this body is inside a value but the real ones."""
    tricky = {"a": "},{", "b": [{"x": 1}, {"y": "}, {"}], "c": '"},{"'}
    body = orjson.dumps({"result_list": [
        {"instance_guid": f"G{n}", "state": "started", "parameters": tricky} for n in range(50)
    ]})
    original = listing_slices.SLICE
    listing_slices.SLICE = 1
    try:
        got = list(sliced(bytearray(body)))
    finally:
        listing_slices.SLICE = original
    assert [e["instance_guid"] for e in got] == [f"G{n}" for n in range(50)]
    assert all(e["parameters"] == tricky for e in got)


def test_the_body_is_consumed_as_it_is_read() -> None:
    raw = bytearray(orjson.dumps({"result_list": [{"instance_guid": f"G{n}"} for n in range(10)]}))
    list(sliced(raw))
    assert raw == b""


@pytest.mark.parametrize("hostile", [b'{"instance_guid":"H","parameters":{"n":NaN}}', b'{"instance_guid":"H","x":"' + b"y" * 5000 + b'"}'])
def test_after_a_slice_orjson_refuses_the_scanner_reads_the_rest(hostile: bytes) -> None:
    good = [b'{"instance_guid":"G%d","state":"started","parameters":{}}' % n for n in range(200)]
    body = b'{"result_list":[' + b",".join(good[:100] + [hostile] + good[100:]) + b"]}"
    original = listing_slices.SLICE
    listing_slices.SLICE = 64
    try:
        got = list(sliced(bytearray(body), 3000, 400))
    finally:
        listing_slices.SLICE = original
    assert got == consumed(bytearray(body), 3000, 400)
    assert len(got) == 201

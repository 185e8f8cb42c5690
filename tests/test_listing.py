"""Issue 10, items 1, 10 and 11: one broken listing entry is one instance's
error, never a failed listing nor the tick's.

Each hostile entry sits between two healthy ones in a body as a master
sends it. It must come out as that instance's error, with a message naming
the field: either unusable in the listing (what cannot be read at all:
nesting past 512 levels, a byte that is not UTF-8, a missing field, a guid
listed twice with different content) or refused by validation (what can be
read but not forwarded: lone surrogates, NaN, infinities, integers beyond
64 bits, nesting past 32 levels). The healthy entries are always intact.
"""

from __future__ import annotations

import orjson
import pytest

from cdnreq import listing as listing_module
from cdnreq import listing_slices
from cdnreq.listing import ListingMalformed, parse_listing, read_listing
from cdnreq.model import Listing
from cdnreq.model import FrozenJson, RequestedState, SharedInstance, digest
from cdnreq.validate.encoding import encoding_problems
from cdnreq.validate.verdict import validate

GOOD = {"A": {"url": "https://a.example"}, "B": {"url": "https://b.example", "enable_cache": "true"}}
HOSTILE_RUN: list[str] = []


def entry(params: bytes, guid: bytes = b"H", state: bytes = b'"started"') -> bytes:
    return b'{"instance_guid":"%s","title":"t","parameters":%s,"state":%s}' % (guid, params, state)


def body(*hostile: bytes) -> bytes:
    good = [orjson.dumps({"instance_guid": g, "parameters": p, "state": "started"}) for g, p in GOOD.items()]
    return b'{"result_list":[' + b",".join([good[0], *hostile, good[1]]) + b'],"count":3}'


def params(unknown: bytes) -> bytes:
    return b'{"url":"https://h.example","foo":%s}' % unknown


def refusal(listing: Listing, guid: str = "H") -> tuple[str, ...]:
    """The instance's error: its unusable reason, or what validation refuses."""
    if guid in listing.unusable:
        return (listing.unusable[guid],)
    instance = next(i for i in listing.instances if i.guid == guid)
    return validate(instance.parameters).errors


def assert_others_intact(listing: Listing) -> None:
    others = {i.guid: i for i in listing.instances if i.guid != "H"}
    assert {g: dict(i.parameters) for g, i in others.items()} == GOOD
    assert all(i.state is RequestedState.STARTED for i in others.values())
    assert {g: i.param_hash for g, i in others.items()} == {g: SharedInstance.of(g, p).param_hash for g, p in GOOD.items()}
    assert listing.anonymous == 0 and set(listing.unusable) <= {"H"}


NEST_250 = b"[" * 250 + b"]" * 250
NEST_1100 = b"[" * 1100 + b"]" * 1100
CASES = [
    ("lone surrogate in a key", entry(b'{"url":"https://h.example","\\ud800x":"v"}'),
     "\\ud800x: the name holds a lone surrogate ('\\ud800' at character 0)"),
    ("lone surrogate in a value", entry(params(b'"a\\udc80b"')),
     "foo: the value holds a lone surrogate ('\\udc80' at character 1)"),
    ("lone surrogate deep in a value", entry(params(b'{"x":["\\ud800"]}')),
     "foo: the value holds a lone surrogate ('\\ud800' at character 0)"),
    ("nested 250 levels", entry(params(NEST_250)), "foo: nested deeper than 32 levels"),
    ("nested 1,100 levels", entry(params(NEST_1100)), "parameters: nested deeper than 512 levels"),
    ("nested 1,020 levels", entry(params(b"[" * 1020 + b"]" * 1020)), "parameters: nested too deeply to be encoded"),
    ("2**70", entry(params(b"%d" % 2**70)), "foo: the number 1.1805916207174113e+21 is beyond the 64-bit integer range"),
    ("2**70 next to a NaN", entry(params(b"[%d, NaN]" % 2**70)),
     "foo: the integer 1180591620717411303424 does not fit in 64 bits"),
    ("NaN", entry(params(b"NaN")), "foo: NaN is not a JSON number (only finite numbers are)"),
    ("Infinity", entry(params(b"Infinity")), "foo: Infinity is not a JSON number (only finite numbers are)"),
    ("-Infinity", entry(params(b"-Infinity")), "foo: -Infinity is not a JSON number (only finite numbers are)"),
    ("1e400", entry(params(b"1e400")), "foo: Infinity is not a JSON number (only finite numbers are)"),
    ("0xff in a string", entry(params(b'"ab\xffcd"')), "parameters: not valid UTF-8 at byte 36"),
    ("0xff in the state", entry(b"{}", state=b'"start\xffed"'), "state: not valid UTF-8 at byte 6"),
    ("missing parameters", b'{"instance_guid":"H","state":"started"}', "parameters: missing from the listing"),
    ("missing state", b'{"instance_guid":"H","parameters":{"url":"https://h.example"}}', "state: missing from the listing"),
    ("broken JSON", entry(b'{"url": tru}'), "entry: not valid JSON (Expecting value)"),
    ("listed twice, different parameters", entry(params(b"1")) + b"," + entry(params(b"2")),
     "listed twice with different content"),
    ("listed twice, different state", entry(params(b"1")) + b"," + entry(params(b"1"), state=b'"stopped"'),
     "listed twice with different content"),
    ("listed twice, one broken", entry(params(b"1")) + b"," + entry(params(b"NaN")), "listed twice with different content"),
]


@pytest.fixture(params=["whole", "in slices", "in small slices"])
def large(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Read as a small body (orjson first), or as a large one: in slices
    (read by the scanner from where orjson refuses one), and in slices
    small enough that every candidate cut is tried."""
    if request.param != "whole":
        monkeypatch.setattr(listing_module, "LARGE", 0)
    if request.param == "in small slices":
        monkeypatch.setattr(listing_slices, "SLICE", 16)
    return request.param != "whole"


@pytest.mark.parametrize(("hostile", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_hostile_entry_is_that_instance_s_error_alone(hostile: bytes, expected: str, large: bool) -> None:
    HOSTILE_RUN.append(expected)
    raw = bytearray(body(hostile))
    listing = read_listing(raw)
    assert not large or len(raw) <= len(b'{"result_list":[')  # a large body is consumed as it is read
    assert refusal(listing) == (expected,)
    assert_others_intact(listing)


def test_every_hostile_entry_at_once(large: bool) -> None:
    """All of them in one listing, each under its own guid."""
    hostile = [h.replace(b'"instance_guid":"H"', b'"instance_guid":"H%d"' % n) for n, (_, h, _) in enumerate(CASES)]
    listing = read_listing(bytearray(body(*hostile)))
    for n, (_, _, expected) in enumerate(CASES):
        assert refusal(listing, f"H{n}") == (expected,), n
    assert {i.guid for i in listing.instances} >= set(GOOD)
    assert listing.anonymous == 0


def test_identical_duplicates_count_once(large: bool) -> None:
    listing = read_listing(bytearray(body(entry(params(b"1")), entry(params(b"1")))))
    assert listing.duplicates == 1 and not listing.unusable
    assert [i.guid for i in listing.instances] == ["A", "H", "B"]


@pytest.mark.parametrize("guid", [b"H\xff", b"\\ud800", b""], ids=["not UTF-8", "lone surrogate", "empty"])
def test_an_entry_whose_guid_cannot_be_read_is_anonymous(guid: bytes) -> None:
    listing = read_listing(body(entry(params(b"NaN"), guid=guid)))
    assert listing.anonymous == 1 and not listing.unusable
    assert {i.guid for i in listing.instances} == set(GOOD)


def test_a_deep_entry_without_guid_is_anonymous() -> None:
    listing = read_listing(body(b'{"parameters":' + NEST_1100 + b"}", b"[" * 2000 + b"]" * 2000))
    assert listing.anonymous == 2 and {i.guid for i in listing.instances} == set(GOOD)


@pytest.mark.parametrize("raw", [
    body(entry(params(b"NaN")))[:-10],  # truncated inside the body
    body(entry(params(b"NaN")))[:-2],  # result_list closed, the object not
    b'{"result_list":[{"instance_guid":"A","parameters":{"x":"unterminated}}]}',
    b'{"result_list":[' + entry(params(b"NaN")) + b"]} trailing",
    b'{"other":[' + entry(params(b"NaN")) + b"]}",
    b'[' + entry(params(b"NaN")) + b"]",
    b"<html>NaN</html>",
    b'{"result_list":[' + entry(params(b"NaN")) + b",]}",
    b'{"result_list":[' + entry(params(b"NaN")) + b"}}",
    b'{"result_list" [' + entry(params(b"NaN")) + b"]}",
    # issue 10 #1 #11 (attack): a comma lost between two entries made the second
    # the first's trailing text; it vanished without a trace, as if gone
    b'{"result_list":[' + entry(params(b"1")) + b" " + entry(params(b"2"), guid=b"C") + b"]}",
    b'{"result_list":[' + entry(params(b"1")) + b":" + entry(params(b"NaN"), guid=b"C") + b"]}",
    b'{"result_list":[' + entry(params(b"1")) + b" 0, " + entry(params(b"2"), guid=b"C") + b"]}",
], ids=["truncated", "unclosed", "unterminated string", "trailing text", "no result_list", "array", "html",
        "empty element", "list closed by a brace", "no colon", "comma missing", "colon for a comma",
        "text after an entry"])
def test_a_body_whose_structure_is_broken_fails_whole(raw: bytes, large: bool) -> None:
    """A partial listing would make the missing instances look gone."""
    with pytest.raises(ListingMalformed):
        read_listing(bytearray(raw))


SMALL_KEYS = b"{" + b",".join(b'"%x":0' % n for n in range(40000)) + b"}"  # ten times its size as objects


@pytest.mark.parametrize("broken", [False, True], ids=["valid JSON", "with a NaN"])
def test_an_entry_far_larger_than_the_parameters_cap_is_not_read(broken: bool) -> None:
    """Issue 10 #2 (attack): read entry by entry (a large body), an entry of
    small keys became ten times its size in memory before the per-instance
    cap refused it: one customer's huge entry (or thousands at the cap) could
    take the daemon of every customer past its memory. An entry larger than
    the cap allows (six bytes per byte, as a master may escape) is not
    parsed; it is that instance's error, naming the cap and the size."""
    hostile = entry(SMALL_KEYS[:-1] + (b',"z":NaN}' if broken else b"}"))
    raw = bytearray(body(hostile))
    original = listing_module.LARGE
    listing_module.LARGE = 0
    try:
        listing = read_listing(raw, 4096)
    finally:
        listing_module.LARGE = original
    reason = listing.unusable.get("H", "")
    assert reason.startswith("parameters: the entry takes %d bytes" % len(hostile)), listing.unusable
    assert "4096 allowed ([validation].max_parameters_bytes)" in reason
    assert_others_intact(listing)
    small = read_listing(bytearray(body(entry(params(b'"%s"' % (b"x" * 4000))))), 4096)
    assert "H" not in small.unusable  # at the cap, an entry is read and validation decides


async def test_the_daemon_s_master_client_reads_the_listing_with_the_parameters_cap(tmp_path, monkeypatch) -> None:
    from cdnreq.config import Config
    from cdnreq.wiring import master_client

    seen: list[tuple] = []

    async def post(self, name, body):
        return 200, bytearray(b'{"result_list":[]}')

    monkeypatch.setattr("cdnreq.master.MasterClient._post", post)
    monkeypatch.setattr("cdnreq.master.read_listing", lambda raw, *cap: seen.append(cap) or Listing(()))
    config = Config.model_validate({
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
        "daemon": {"database": str(tmp_path / "cdnreq.db")},
        "domain": {"secret_file": str(tmp_path / "domain-secret")},
        "validation": {"max_parameters_bytes": 5000},
    })
    await master_client(config).list_hosted("REQUESTER")
    assert seen == [(5000,)]


def test_parse_listing_of_a_healthy_listing_is_unchanged() -> None:
    entries = [{"instance_guid": g, "parameters": p, "state": "started"} for g, p in GOOD.items()]
    listing = parse_listing(entries)
    assert [i.guid for i in listing.instances] == list(GOOD) and listing.unusable == {} and listing.duplicates == 0
    assert entries == [None, None]  # released as read


@pytest.mark.parametrize("path", ["salvage", "consumed"])
def test_large_parameters_read_entry_by_entry_are_kept_as_text_and_judged_alike(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, 2: read entry by entry, every entry is alive until the
    listing is built; 64 KiB of small keys take ten times that parsed, so
    10,000 of them took gigabytes. Large parameters stay text until
    validation, with the same hash and the same verdict as parsed ones."""
    small_keys = {f"k{n:05}": n for n in range(6000)}  # ~65 KB: at the cap, refused by validation
    large_ok = {"url": "https://backend.example", **{f"x{n}": "v" * 500 for n in range(20)}}  # ~10 KB, valid
    nan = {**{f"k{n:05}": n for n in range(2000)}, "bad": float("nan")}
    entries = {"A": small_keys, "B": large_ok, "C": nan, "D": {"url": "https://small.example"}}
    body = orjson.dumps({"result_list": [
        {"instance_guid": g, "state": "started", "parameters": p} for g, p in entries.items()
        if g != "C"]})
    c = b'{"instance_guid":"C","state":"started","parameters":' + __import__("json").dumps(nan).encode() + b"}"
    body = body[:-2] + b"," + c + b"]}"  # NaN: orjson refuses the body, read entry by entry
    if path == "consumed":
        monkeypatch.setattr(listing_module, "LARGE", 1024)
        body = bytearray(body)
    listing = read_listing(body)
    got = {i.guid: i for i in listing.instances}
    assert set(got) == {"A", "B", "C", "D"} and listing.unusable == {}
    for guid in "ABC":
        assert isinstance(got[guid].parameters, FrozenJson), guid
    assert isinstance(got["D"].parameters, FrozenJson)  # small ones too: every listing keeps the hashed text
    for guid in "ABD":
        assert got[guid].param_hash == digest(entries[guid])
    for guid, params in entries.items():
        assert validate(got[guid].parameters) == validate(params), guid
    assert not validate(got["A"].parameters).ok and "max_parameters_bytes" in validate(got["A"].parameters).errors[0]
    assert validate(got["C"].parameters).errors == tuple(encoding_problems(nan))
    assert validate(got["B"].parameters).ok and validate(got["B"].parameters).forward is not None


def test_hostile_inputs_counted() -> None:
    """Not a property: the number of hostile inputs this file runs, for the report."""
    print(f"\nhostile listing inputs: {len(CASES)} single-entry cases and all {len(CASES)} in one listing,"
          f" each read whole and entry by entry; 3 unreadable guids, 2 deep anonymous entries, 13 broken bodies")

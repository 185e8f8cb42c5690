"""The claims digest a kept decision is checked against at a restart: its
spelling is stored, so a faster computation must give the same text."""

from __future__ import annotations

import hashlib

from cdnreq.decide.dormancy import Dormant, from_store, pack, phases, serving_count, short, unpack
from cdnreq.model import Phase, RequestedState
from cdnreq.decide.gate import HostIndex
from cdnreq.decide.kept import claims_digest, claims_of
from cdnreq.model import HostClaim, InstanceGuid


def claim(host: str, guid: str = "G1", failing: float | None = None) -> HostClaim:
    return HostClaim(host, InstanceGuid(guid), "example.com", 1.5, 2.25, failing)


def spelled(claims: list[HostClaim]) -> str:  # the stored spelling: sorted rows, repr, blake2b-128
    rows = sorted((c.host, c.guid, c.registrable, c.proven_at, c.checked_at, c.failing_since) for c in claims)
    return hashlib.blake2b(repr(rows).encode(), digest_size=16).hexdigest()


def test_the_digest_keeps_its_stored_spelling_whatever_the_order() -> None:
    a, b, c = claim("a.example.com"), claim("b.example.com", failing=3.0), claim("*.example.com")
    assert claims_digest([b, c, a]) == claims_digest([a, b, c]) == spelled([a, b, c])
    assert claims_digest([a]) == spelled([a]) and claims_digest([]) == spelled([])
    index = HostIndex([b, a, claim("other.example.com", "G2")])
    assert claims_of(index, "G1") == spelled([a, b]) and claims_of(index, "G3") == spelled([])


def test_a_mark_that_cannot_be_read_wakes_its_instance() -> None:
    index = HostIndex([claim("a.example.com")])
    good = '["' + "ab" * 32 + '", null, "R"]'
    row = ("G1", good, "live", "started", True, '["a.example.com"]', "ab" * 32, "S", claims_of(index, "G1"), True)
    asleep, awake = from_store([row], "S", "R", index)
    assert list(asleep) == ["G1"] and awake == [] and unpack(asleep["G1"]).served == ("a.example.com",)
    for broken in ("[", "NaN", '["x", "y"]', 7, '["' + "ab" * 32 + '", Infinity, "R"]'):
        asleep, awake = from_store([("G1", broken, *row[2:])], "S", "R", index)
        assert asleep == {} and awake == ["G1"], broken
    asleep, awake = from_store([(*row[:5], "{", *row[6:])], "S", "R", index)  # served unreadable
    assert asleep == {} and awake == ["G1"]
    asleep, awake = from_store([(*row[:2], "no-such-phase", *row[3:])], "S", "R", index)
    assert asleep == {} and awake == ["G1"]


def test_a_sleeper_packed_reads_back_as_it_was() -> None:
    samples = [
        Dormant(short("ab" * 32), RequestedState.STARTED, float("inf"), Phase.LIVE, True, ("a.example", "*.b.example")),
        Dormant(short("not a hex hash"), RequestedState.STOPPED, 12.5, Phase.REQUESTED, False, None),
        Dormant(short(""), RequestedState.STARTED, -1.0, Phase.LIVE, False, ()),
        Dormant(short("x" * 100_000), RequestedState.STARTED, 0.0, Phase.LIVE, True, ("h\u00e9\"\x00",)),
    ]
    for dormant in samples:
        assert len(dormant.param_hash) == 16 and unpack(pack(dormant)) == dormant
    assert short("ab" * 32) != short("cd" + "ab" * 31) and short("a") != short("b")
    assert short("AB" * 32) == short("ab" * 32) == bytes.fromhex("ab" * 16)
    assert phases(pack(d) for d in samples) == {"live": 3, "requested": 1}
    assert serving_count(pack(d) for d in samples) == 2


def test_a_record_whose_served_hosts_cannot_be_packed_stays_awake_and_the_tick_goes_on() -> None:
    """A store written by hand (or restored from elsewhere) may hold served
    hosts JSON reads back as a lone surrogate; packing them must not fail
    the tick: that instance just does not sleep."""
    from dataclasses import replace

    from cdnreq.decide.actions import IdleCache
    from cdnreq.decide.dormancy import rest
    from cdnreq.model import Record, SharedInstance, Title

    instances = [SharedInstance.of(g, {"url": f"https://{g.lower()}.example"}) for g in ("A", "B")]
    gate = object()
    base = Record(InstanceGuid("A"), Title("cdnreq-A"), Phase.LIVE, 1.0, 2.0, tech_guid="T-A",
                  requested_state=RequestedState.STARTED)
    records = {"A": replace(base, served=("www.a.example",)),
               "B": replace(base, guid=InstanceGuid("B"), title=Title("cdnreq-B"), served=("\ud800.example",))}
    idle = IdleCache({g: (records[g], gate, float("inf")) for g in records}, None)
    settled = {i.guid: (i.param_hash, gate) for i in instances}
    decided = rest(instances, {}, idle, records, settled, (), 10.0, rules="R", same_rules=True)  # type: ignore[arg-type]
    assert set(decided.sleep) == set(decided.marks) == {"A"} and not decided.wake
    assert unpack(decided.sleep["A"]).served == ("www.a.example",)

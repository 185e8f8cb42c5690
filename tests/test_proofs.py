"""cdnreq.decide.proofs: which names to ask, which instances wait together."""

from __future__ import annotations

from cdnreq.model import Lookup
from cdnreq.model import HostClaim, InstanceGuid
from cdnreq.decide.gate import DomainPolicy, HostIndex
from cdnreq.decide.proofs import chunks, group, host_names, second_names
from cdnreq.validate.verdict import validate

L = "_slapos-challenge"
POLICY = DomainPolicy(label=L)


def claim(host: str, guid: str, registrable: str) -> HostClaim:
    return HostClaim(host, InstanceGuid(guid), registrable, 1.0, 1.0)


def order(*guids: str) -> dict[str, tuple[float, str]]:
    return {g: (0.0, g) for g in guids}


def test_host_names_most_specific_first_and_none_for_owned_or_taken_hosts() -> None:
    verdict = validate({"custom_domain": "www.a.example", "server-alias": "shop.a.example *.a.example"})
    index = HostIndex([claim("shop.a.example", "A", "a.example")])
    assert host_names(verdict, "A", index, {"A"}, POLICY) == [
        (f"{L}.www.a.example", f"{L}.a.example"),
        (f"{L}.a.example",),
    ]
    # an active rival holds a host: refused anyway, nothing to ask
    assert host_names(verdict, "B", index, {"A", "B"}, POLICY) == []


def test_parents_are_asked_only_for_hosts_their_own_name_did_not_prove() -> None:
    wanted = [(f"{L}.www.a.example", f"{L}.a.example"), (f"{L}.shop.a.example", f"{L}.a.example")]
    answers = {
        f"{L}.www.a.example": Lookup(f"{L}.www.a.example", "found", ("tok",)),
        f"{L}.shop.a.example": Lookup(f"{L}.shop.a.example", "found", ("other",)),
    }
    assert second_names(wanted, "tok", answers) == {f"{L}.a.example"}
    assert second_names(wanted[:1], "tok", answers) == set()
    assert second_names(wanted[:1], None, answers) == {f"{L}.a.example"}  # no token: ask everything
    unknown = {f"{L}.www.a.example": Lookup(f"{L}.www.a.example", "unknown", detail="timeout")}
    assert second_names(wanted[:1], "tok", unknown) == {f"{L}.a.example"}


def test_instances_of_one_registrable_wait_together_and_the_rest_is_decided_now() -> None:
    asking = {"A": [(f"{L}.www.a.example", f"{L}.a.example")], "C": [(f"{L}.www.c.example",)]}
    keys = {"A": {"a.example"}, "B": {"a.example"}, "C": {"c.example"}, "D": {"d.example"}, "E": set()}
    now, groups = group(asking=asking, keys=keys, order=order(*keys), rechecks=[])
    assert now == ["D", "E"]  # nothing in their domains waits for DNS
    assert [(g.members, g.names) for g in groups] == [
        (["A", "B"], {f"{L}.www.a.example"}),  # B waits with A: A may prove a host B names
        (["C"], {f"{L}.www.c.example"}),
    ]


def test_an_instance_owning_hosts_elsewhere_ties_both_domains() -> None:
    asking = {"A": [(f"{L}.www.a.example",)], "C": [(f"{L}.www.c.example",)]}
    # B names c.example now but still owns a host under a.example
    keys = {"A": {"a.example"}, "B": {"a.example", "c.example"}, "C": {"c.example"}}
    now, groups = group(asking=asking, keys=keys, order=order(*keys), rechecks=[])
    assert now == []
    assert len(groups) == 1 and groups[0].members == ["A", "B", "C"]


def test_refused_instances_wait_for_nothing() -> None:
    now, groups = group(asking={"A": []}, keys={"A": {"a.example"}}, order=order("A"), rechecks=[])
    assert now == ["A"] and groups == []


def test_rechecks_hold_their_domain_and_the_settled_owner() -> None:
    due = [claim("www.s.example", "S", "s.example")]
    keys = {"P": {"s.example"}, "Q": {"q.example"}}
    now, groups = group(asking={}, keys=keys, order=order("P", "Q"), rechecks=due, settled={"S"})
    assert now == ["Q"]
    assert [(g.members, g.settled, g.rechecks) for g in groups] == [(["P"], ["S"], due)]


def test_chunks_keep_groups_whole() -> None:
    asking = {g: [(f"{L}.www.{g}.example",)] for g in "abcde"}
    keys = {g: {f"{g}.example"} for g in "abcde"}
    keys["b2"] = {"b.example"}
    _, groups = group(asking=asking, keys=keys, order=order(*keys), rechecks=[])
    parts = chunks(groups, 2)
    assert [[g.members for g in part] for part in parts] == [[["a"], ["b", "b2"]], [["c"], ["d"]], [["e"]]]


def test_first_chunks_are_smaller() -> None:
    asking = {f"g{i:02d}": [(f"{L}.www.g{i}.example",)] for i in range(20)}
    keys = {g: {f"{g}.example"} for g in asking}
    _, groups = group(asking=asking, keys=keys, order=order(*keys), rechecks=[])
    assert [len(part) for part in chunks(groups, 8, 2)] == [2, 4, 8, 6]

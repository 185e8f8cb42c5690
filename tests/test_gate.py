"""cdnreq.decide.gate and cdnreq.decide.recheck: pure, no DNS.

Verdicts come from the real validate(), challenges from the real issue(),
DNS answers are Lookups built by hand.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cdnreq.dns.challenge import issue
from cdnreq.model import Lookup
from cdnreq.model import Challenge, HostClaim, InstanceGuid, SharedInstance
from cdnreq.decide import recheck
from cdnreq.decide.gate import (
    Claims,
    DomainPolicy,
    Gate,
    HostIndex,
    Status,
    decide,
)
from cdnreq.decide.proofs import host_names
from cdnreq.validate.hosts import registrable_domain
from cdnreq.validate.verdict import validate

SECRET = b"test-secret-0123456789abcdef-0123"
POLICY = DomainPolicy()
LABEL = POLICY.label  # "_slapos-challenge"
NOW = 1_700_000_000.0
DAY = 86400.0
TAKEN = "already used by another CDN entry"


# -- helpers --------------------------------------------------------------------


def params(custom_domain: str | None = None, aliases: str | None = None, **extra) -> dict:
    p = dict(extra)
    if custom_domain is not None:
        p["custom_domain"] = custom_domain
    if aliases is not None:
        p["server-alias"] = aliases
    return p


def instance(guid: str, custom_domain: str | None = None, aliases: str | None = None, **extra) -> SharedInstance:
    return SharedInstance.of(guid, params(custom_domain, aliases, **extra))


def challenge_for(guid: str, inst: SharedInstance) -> Challenge:
    verdict = validate(inst.parameters)
    assert verdict.custom_domain is not None
    return issue(SECRET, InstanceGuid(guid), verdict.custom_domain, NOW - 10)


def found(name: str, *values: str) -> Lookup:
    return Lookup(name, "found", tuple(values))


def absent(name: str) -> Lookup:
    return Lookup(name, "absent", (), "NXDOMAIN")


def unknown(name: str) -> Lookup:
    return Lookup(name, "unknown", (), "timeout")


def lookups_for(*lookups: Lookup) -> dict[str, Lookup]:
    return {lookup.name: lookup for lookup in lookups}


def run(
    inst: SharedInstance,
    *,
    index: HostIndex | None = None,
    active: set[str] | None = None,
    challenge: Challenge | None = None,
    lookups: dict[str, Lookup] | None = None,
    policy: DomainPolicy = POLICY,
    now: float = NOW,
) -> tuple[Gate, Claims]:
    index = index if index is not None else HostIndex()
    gate, claims = decide(
        inst,
        validate(inst.parameters),
        index=index,
        active=active if active is not None else {inst.guid},
        challenge=challenge,
        lookups=lookups or {},
        policy=policy,
        now=now,
    )
    index.apply(claims)  # as the domain step does before deciding the next instance
    return gate, claims


def own(index: HostIndex, guid: str, custom_domain: str, aliases: str | None = None, *, active: set[str] | None = None) -> None:
    """Make guid the owner of its hosts the regular way: proven at the registrable domain."""
    inst = instance(guid, custom_domain, aliases)
    verdict = validate(inst.parameters)
    assert verdict.ok, verdict.errors
    ch = challenge_for(guid, inst)
    gate, claims = decide(
        inst,
        verdict,
        index=index,
        active=active if active is not None else {guid},
        challenge=ch,
        lookups=lookups_for(found(f"{LABEL}.{verdict.registrable}", ch.token)),
        policy=POLICY,
        now=NOW - DAY,
    )
    index.apply(claims)
    assert gate.status is Status.OK, gate
    assert {c.host for c in claims.upserts} == set(verdict.hosts)


def snapshot(index: HostIndex) -> dict[str, HostClaim]:
    return dict(index.by_host)


# -- proof of a pending instance ---------------------------------------------------


GUID = "SOFTINST-CLAIMANT"
OTHER = "SOFTINST-OTHER"


@pytest.mark.parametrize(
    "custom_domain, aliases, records, expected",
    [
        # at the host itself
        ("www.example.com", None, {"www.example.com": "mine"}, Status.OK),
        # at a parent
        ("a.b.example.com", None, {"b.example.com": "mine"}, Status.OK),
        # at the registrable domain
        ("a.b.example.com", None, {"example.com": "mine"}, Status.OK),
        ("example.com", None, {"example.com": "mine"}, Status.OK),
        # a registrable domain under a multi-label public suffix
        ("www.shop.co.uk", None, {"shop.co.uk": "mine"}, Status.OK),
        # above the registrable domain (the public suffix): proves nothing
        ("www.example.com", None, {"com": "mine"}, Status.PENDING),
        ("www.shop.co.uk", None, {"co.uk": "mine"}, Status.PENDING),
        # below the host, or at a sibling: proves nothing
        ("www.example.com", None, {"x.www.example.com": "mine"}, Status.PENDING),
        ("www.example.com", None, {"shop.example.com": "mine"}, Status.PENDING),
        # another instance's token proves nothing
        ("www.example.com", None, {"www.example.com": "other", "example.com": "other"}, Status.PENDING),
        # a name with several TXT records, one of them the token
        ("www.example.com", None, {"www.example.com": "extra"}, Status.OK),
        # nothing published
        ("www.example.com", None, {}, Status.PENDING),
        # DNS failed: pending, never invalid
        ("www.example.com", None, {"www.example.com": "unknown", "example.com": "unknown"}, Status.PENDING),
        # one name failed, another proves
        ("www.example.com", None, {"www.example.com": "unknown", "example.com": "mine"}, Status.OK),
        # IDN: the record is looked up (and keyed) under the punycode name
        ("www.bücher.example", None, {"xn--bcher-kva.example": "mine"}, Status.OK),
        # wildcard alias: proven at its base or a parent
        ("shop.example.com", "*.shop.example.com", {"shop.example.com": "mine"}, Status.OK),
        ("www.example.com", "*.shop.example.com", {"www.example.com": "mine", "shop.example.com": "mine"}, Status.OK),
        ("www.example.com", "*.shop.example.com", {"example.com": "mine"}, Status.OK),
        ("www.example.com", "*.shop.example.com", {"www.example.com": "mine"}, Status.PENDING),
    ],
)
def test_pending_is_proven(custom_domain, aliases, records, expected) -> None:
    inst = instance(GUID, custom_domain, aliases)
    ch = challenge_for(GUID, inst)
    other = issue(SECRET, InstanceGuid(OTHER), validate(inst.parameters).custom_domain, NOW)
    assert other.token != ch.token
    values = {
        "mine": lambda n: found(n, ch.token),
        "other": lambda n: found(n, other.token),
        "extra": lambda n: found(n, "v=spf1 -all", ch.token, "google-site-verification=abc"),
        "unknown": unknown,
    }
    verdict = validate(inst.parameters)
    assert verdict.ok, verdict.errors
    # every wanted name answers absent unless the table says otherwise
    lookups = {n: absent(n) for n in wanted_names(verdict, GUID, HostIndex(), {GUID}, POLICY)}
    for where, what in records.items():
        name = f"{LABEL}.{where}"
        lookups[name] = values[what](name)
    index = HostIndex()
    gate, claims = run(inst, index=index, challenge=ch, lookups=lookups)
    assert gate.status is expected, gate
    if expected is Status.OK:
        assert gate.hosts == verdict.hosts
        assert gate.forward == verdict.forward
        assert gate.forward_hash == (verdict.forward_hash or inst.param_hash)
        assert [c.host for c in claims.upserts] == list(verdict.hosts)
        for c in claims.upserts:
            assert (c.guid, c.registrable, c.proven_at, c.checked_at, c.failing_since) == (
                GUID, verdict.registrable, NOW, NOW, None)
            assert index.owns(GUID, c.host)
        assert claims.deletes == () and claims.taken_from == ()
    else:
        assert claims == Claims()
        assert index.by_host == {}
        assert gate.forward is None
        assert set(gate.pending) <= set(verdict.hosts) and gate.pending


def wanted_names(verdict, guid, index, active, policy) -> list[str]:
    """Every TXT name the domain step may ask for an instance (proofs.host_names, flattened)."""
    return [name for names in host_names(verdict, guid, index, active, policy) for name in names]


def test_wanted_names() -> None:
    inst = instance(GUID, "a.b.example.com", "*.c.example.com")
    verdict = validate(inst.parameters)
    assert wanted_names(verdict, GUID, HostIndex(), {GUID}, POLICY) == [
        f"{LABEL}.a.b.example.com", f"{LABEL}.b.example.com", f"{LABEL}.example.com",
        f"{LABEL}.c.example.com", f"{LABEL}.example.com",
    ]
    # owned hosts need no lookup
    index = HostIndex([HostClaim("a.b.example.com", GUID, "example.com", NOW, NOW)])
    assert wanted_names(verdict, GUID, index, {GUID}, POLICY) == [f"{LABEL}.c.example.com", f"{LABEL}.example.com"]
    # an active rival: refused anyway, nothing to ask
    index = HostIndex([HostClaim("www.c.example.com", OTHER, "example.com", NOW, NOW)])
    assert wanted_names(verdict, GUID, index, {GUID, OTHER}, POLICY) == []
    # a retained rival: the claimant may take over by proof, so DNS is asked
    assert wanted_names(verdict, GUID, index, {GUID}, POLICY) != []
    # invalid parameters, or no custom_domain: nothing to ask
    assert wanted_names(validate({"custom_domain": "co.uk"}), GUID, HostIndex(), {GUID}, POLICY) == []
    assert wanted_names(validate({}), GUID, HostIndex(), {GUID}, POLICY) == []


def test_no_custom_domain_is_ok_without_dns() -> None:
    gate, claims = run(instance(GUID, url="https://backend.test"))
    assert gate.status is Status.OK and gate.hosts == () and claims == Claims()
    assert "txt_record" not in gate.extras and gate.forward is None  # forwarded as listed


def test_owned_hosts_need_no_lookup() -> None:
    index = HostIndex()
    own(index, GUID, "www.example.com", "api.example.com")
    before = snapshot(index)
    inst = instance(GUID, "www.example.com", "api.example.com")
    # no lookups at all, even an unknown answer would not matter
    gate, claims = run(inst, index=index, challenge=challenge_for(GUID, inst), lookups={})
    assert gate.status is Status.OK and claims == Claims()
    assert snapshot(index) == before


# -- conflicts ---------------------------------------------------------------------


OWNER_A = "SOFTINST-OWNER-AAAA"
OWNER_B = "SOFTINST-OWNER-BBBB"


@pytest.mark.parametrize(
    "owner, claimant, conflicting",
    [
        # (owner custom_domain, aliases), (claimant custom_domain, aliases), [(field, normalised host)]
        (("example.com", None), ("EXAMPLE.Com", None), [("custom_domain", "example.com")]),
        (("example.com", None), ("example.com.", None), [("custom_domain", "example.com")]),
        (("Example.COM.", None), ("example.com", None), [("custom_domain", "example.com")]),
        (("bücher.example", None), ("xn--bcher-kva.example", None), [("custom_domain", "xn--bcher-kva.example")]),
        (("xn--bcher-kva.example", None), ("BÜCHER.example.", None), [("custom_domain", "xn--bcher-kva.example")]),
        # the claimant's alias is the owner's custom_domain
        (("www.example.com", None), ("shop.example.com", "www.example.com"), [("server-alias", "www.example.com")]),
        # the claimant's custom_domain is the owner's alias
        (("www.example.com", "shop.example.com"), ("Shop.Example.com", None), [("custom_domain", "shop.example.com")]),
        # alias against alias
        (("www.example.com", "api.example.com"), ("shop.example.com", "API.example.com"), [("server-alias", "api.example.com")]),
        # the claimant's wildcard alias covers the owner's host
        (("www.example.com", None), ("shop.example.com", "*.example.com"), [("server-alias", "*.example.com")]),
        (("a.b.example.com", None), ("example.com", "*.example.com"), [("server-alias", "*.example.com")]),
        # the claimant's host lies under the owner's wildcard
        (("example.com", "*.example.com"), ("shop.example.com", None), [("custom_domain", "shop.example.com")]),
        (("www.example.com", "*.example.com"), ("deep.shop.example.com", None), [("custom_domain", "deep.shop.example.com")]),
        # a wildcard under the owner's wildcard
        (("www.example.com", "*.example.com"), ("www.example.com.", "*.shop.example.com"),
         [("custom_domain", "www.example.com"), ("server-alias", "*.shop.example.com")]),
        # the apex and its wildcard go to one owner
        (("www.example.com", "*.example.com"), ("example.com", None), [("custom_domain", "example.com")]),
        # several hosts taken: each is named
        (("example.com", "www.example.com"), ("www.example.com", "example.com api.example.com"),
         [("custom_domain", "www.example.com"), ("server-alias", "example.com")]),
    ],
)
def test_conflict_is_refused_without_naming_the_owner(owner, claimant, conflicting) -> None:
    gates = []
    for owner_guid in (OWNER_A, OWNER_B):
        index = HostIndex()
        own(index, owner_guid, *owner)
        before = snapshot(index)
        inst = instance(GUID, *claimant)
        verdict = validate(inst.parameters)
        assert verdict.ok, verdict.errors
        active = {GUID, owner_guid}
        assert wanted_names(verdict, GUID, index, active, POLICY) == []
        # even with a proof at the registrable domain: the owner keeps it
        ch = challenge_for(GUID, inst)
        proof = lookups_for(found(f"{LABEL}.{verdict.registrable}", ch.token))
        gate, claims = run(inst, index=index, active=active, challenge=ch, lookups=proof)
        assert gate.status is Status.INVALID, gate
        assert claims == Claims()
        assert snapshot(index) == before
        errors = json.loads(gate.extras["request-error-list"])
        assert errors == [f"{field}: {json.dumps(host)} is {TAKEN}" for field, host in conflicting]
        message = gate.extras["message"]
        assert gate.error == message
        assert message.startswith("The CDN could not accept this entry: ")
        assert TAKEN in message
        for _, host in conflicting:
            assert host in message
        assert owner_guid not in message and "OWNER" not in message
        assert owner_guid not in json.dumps(dict(gate.extras))
        assert "txt_value" not in gate.extras and ch.token not in json.dumps(dict(gate.extras))
        gates.append(gate)
    # the same refusal whoever the owner is
    assert gates[0] == gates[1]


@pytest.mark.parametrize(
    "owner, claimant",
    [
        (("www.example.com", None), ("shop.example.com", None)),  # siblings
        (("shop.example.com", None), ("example.com", None)),  # parent of someone's host, no wildcard
        (("example.com", None), ("www.example.com", None)),  # child of someone's apex, no wildcard
        (("www.example.com", "*.shop.example.com"), ("api.example.com", "*.api.example.com")),
        (("example.com", None), ("example.org", None)),
    ],
)
def test_neighbours_do_not_conflict(owner, claimant) -> None:
    index = HostIndex()
    own(index, OWNER_A, *owner)
    inst = instance(GUID, *claimant)
    gate, _ = run(inst, index=index, active={GUID, OWNER_A}, challenge=challenge_for(GUID, inst))
    assert gate.status is Status.PENDING, gate


def test_conflict_message_does_not_reveal_the_owners_other_hosts() -> None:
    index = HostIndex()
    own(index, OWNER_A, "example.com", "secret-project.example.com")
    inst = instance(GUID, "www.example.com", "example.com")
    gate, _ = run(inst, index=index, active={GUID, OWNER_A}, challenge=challenge_for(GUID, inst))
    assert gate.status is Status.INVALID
    assert "secret-project" not in json.dumps(dict(gate.extras))


# -- every host must be proven -----------------------------------------------------------


def test_unproven_alias_next_to_proven_custom_domain_stays_pending() -> None:
    inst = instance(GUID, "www.example.com", "api.example.com *.cdn.example.com")
    ch = challenge_for(GUID, inst)
    index = HostIndex()
    lookups = lookups_for(
        found(f"{LABEL}.www.example.com", ch.token),
        absent(f"{LABEL}.api.example.com"),
        absent(f"{LABEL}.cdn.example.com"),
        absent(f"{LABEL}.example.com"),
    )
    gate, claims = run(inst, index=index, challenge=ch, lookups=lookups)
    assert gate.status is Status.PENDING
    assert gate.pending == ("api.example.com", "*.cdn.example.com")
    assert json.loads(gate.extras["pending-host-list"]) == ["api.example.com", "*.cdn.example.com"]
    assert "www.example.com," not in gate.extras["message"].split(" add ")[0]
    # nothing is claimed, not even the proven custom_domain
    assert claims == Claims() and index.by_host == {}

    # one record at the common registrable domain proves them all
    lookups[f"{LABEL}.example.com"] = found(f"{LABEL}.example.com", ch.token)
    gate, claims = run(inst, index=index, challenge=ch, lookups=lookups)
    assert gate.status is Status.OK
    assert sorted(c.host for c in claims.upserts) == sorted(["www.example.com", "api.example.com", "*.cdn.example.com"])
    assert all(index.owns(GUID, h) for h in ("www.example.com", "api.example.com", "*.cdn.example.com"))


def test_record_at_a_common_parent_proves_alias_below_it() -> None:
    inst = instance(GUID, "shop.example.com", "www.shop.example.com")
    ch = challenge_for(GUID, inst)
    gate, claims = run(inst, challenge=ch, lookups=lookups_for(found(f"{LABEL}.shop.example.com", ch.token)))
    assert gate.status is Status.OK and len(claims.upserts) == 2


@pytest.mark.parametrize(
    "custom_domain, aliases",
    [
        ("example.co.uk", "*.co.uk"),
        ("alice.github.io", "github.io"),
        ("alice.github.io", "*.github.io"),
        ("www.example.com", "com"),
        ("www.example.com", "*.com"),
    ],
)
def test_alias_under_a_public_suffix_is_invalid(custom_domain, aliases) -> None:
    inst = instance(GUID, custom_domain, aliases)
    verdict = validate(inst.parameters)
    assert not verdict.ok
    assert wanted_names(verdict, GUID, HostIndex(), {GUID}, POLICY) == []
    gate, claims = run(inst)
    assert gate.status is Status.INVALID and claims == Claims()
    assert "server-alias" in gate.error
    assert json.loads(gate.extras["request-error-list"]) == list(verdict.errors)


def test_custom_domain_that_is_a_public_suffix_is_invalid() -> None:
    gate, _ = run(instance(GUID, "github.io"))
    assert gate.status is Status.INVALID and "public suffix" in gate.error


# -- takeover from a retained owner --------------------------------------------------------


def test_retained_owner_loses_host_to_a_claimant_with_proof() -> None:
    index = HostIndex()
    own(index, OWNER_A, "example.com", "www.example.com *.example.com")
    inst = instance(GUID, "www.example.com")
    ch = challenge_for(GUID, inst)
    lookups = lookups_for(found(f"{LABEL}.www.example.com", ch.token), absent(f"{LABEL}.example.com"))
    # OWNER_A is retained: gone from the master, so not active
    gate, claims = run(inst, index=index, active={GUID}, challenge=ch, lookups=lookups)
    assert gate.status is Status.OK
    assert [(c.host, c.guid) for c in claims.upserts] == [("www.example.com", GUID)]
    assert claims.taken_from == (OWNER_A,)
    # the overlapping wildcard goes too; the apex (no overlap) stays with the owner
    assert claims.deletes == ("*.example.com",)
    assert index.owns(GUID, "www.example.com")
    assert index.hosts_of(OWNER_A) == {"example.com"}
    assert index.by_host["www.example.com"].proven_at == NOW


@pytest.mark.parametrize("answer", ["absent", "unknown", "other"])
def test_retained_owner_keeps_host_without_proof(answer) -> None:
    index = HostIndex()
    own(index, OWNER_A, "example.com")
    before = snapshot(index)
    inst = instance(GUID, "example.com")
    ch = challenge_for(GUID, inst)
    name = f"{LABEL}.example.com"
    owner_token = "cdnreq-the-owners-old-token"
    lookup = {
        "absent": absent(name),
        "unknown": unknown(name),
        "other": found(name, owner_token),
    }[answer]
    gate, claims = run(inst, index=index, active={GUID}, challenge=ch, lookups={name: lookup})
    assert gate.status is Status.PENDING
    assert gate.pending == ("example.com",)
    assert claims == Claims()
    assert snapshot(index) == before


def test_two_claimants_in_one_tick_first_decided_wins() -> None:
    for first, second in ((OWNER_A, OWNER_B), (OWNER_B, OWNER_A)):
        index = HostIndex()
        a, b = instance(first, "www.example.com"), instance(second, "example.com", "www.example.com")
        cha, chb = challenge_for(first, a), challenge_for(second, b)
        lookups = lookups_for(
            found(f"{LABEL}.example.com", cha.token, chb.token),
            absent(f"{LABEL}.www.example.com"),
        )
        active = {first, second}
        ga, ca = run(a, index=index, active=active, challenge=cha, lookups=lookups)
        gb, cb = run(b, index=index, active=active, challenge=chb, lookups=lookups)
        assert ga.status is Status.OK and [c.host for c in ca.upserts] == ["www.example.com"]
        assert gb.status is Status.INVALID and cb == Claims()
        assert json.loads(gb.extras["request-error-list"]) == [f'server-alias: "www.example.com" is {TAKEN}']
        assert first not in gb.error
        assert index.hosts_of(first) == {"www.example.com"} and not index.hosts_of(second)


# -- what the customer is shown ------------------------------------------------------------


def test_extras_of_ok() -> None:
    inst = instance(GUID, "www.example.com", "api.example.com")
    ch = challenge_for(GUID, inst)
    gate, _ = run(inst, challenge=ch, lookups=lookups_for(found(f"{LABEL}.example.com", ch.token)))
    assert gate.status is Status.OK
    assert gate.extras["txt_record"] == f"{LABEL}.www.example.com"
    assert gate.extras["txt_value"] == ch.token
    assert "message" not in gate.extras and gate.error is None


def test_extras_of_pending() -> None:
    inst = instance(GUID, "www.Bücher.example", "*.shop.xn--bcher-kva.example")
    ch = challenge_for(GUID, inst)
    gate, _ = run(inst, challenge=ch)
    assert gate.status is Status.PENDING
    assert gate.error is None and gate.forward is None
    assert gate.extras["txt_record"] == f"{LABEL}.www.xn--bcher-kva.example"
    assert gate.extras["txt_value"] == ch.token
    message = gate.extras["message"]
    assert ch.token in message
    # both ways: one record per host, or one at the registrable domain
    assert f"{LABEL}.www.xn--bcher-kva.example" in message
    assert f"{LABEL}.shop.xn--bcher-kva.example" in message
    assert f"{LABEL}.xn--bcher-kva.example " in message
    assert "every host under xn--bcher-kva.example" in message
    assert json.loads(gate.extras["pending-host-list"]) == ["www.xn--bcher-kva.example", "*.shop.xn--bcher-kva.example"]
    assert gate.pending == ("www.xn--bcher-kva.example", "*.shop.xn--bcher-kva.example")
    assert gate.hosts == ("www.xn--bcher-kva.example", "*.shop.xn--bcher-kva.example")


def test_extras_of_invalid() -> None:
    gate, _ = run(instance(GUID, "www.example.com", "www.example.org"))
    assert gate.status is Status.INVALID
    errors = json.loads(gate.extras["request-error-list"])
    assert len(errors) == 1 and errors[0].startswith("server-alias:") and "example.com" in errors[0]
    assert gate.error == gate.extras["message"] == "The CDN could not accept this entry: " + errors[0]
    assert "txt_value" not in gate.extras and gate.forward is None


def test_ok_shows_a_failing_recheck_as_a_warning() -> None:
    index = HostIndex()
    own(index, GUID, "www.example.com")
    claim = index.by_host["www.example.com"]
    index.put(replace(claim, failing_since=NOW - 2 * DAY))
    inst = instance(GUID, "www.example.com")
    for release, tail in ((False, "please restore it"), (True, "released after the grace period")):
        policy = DomainPolicy(release_on_recheck_failure=release)
        gate, _ = run(inst, index=index, challenge=challenge_for(GUID, inst), policy=policy)
        assert gate.status is Status.OK
        warnings = json.loads(gate.extras["warning-list"])
        assert len(warnings) == 1
        assert warnings[0].startswith('"www.example.com": the DNS proof of ownership is missing since 2023-11-12')
        assert tail in warnings[0]


def test_host_index_bookkeeping() -> None:
    a = HostClaim("example.com", OWNER_A, "example.com", NOW, NOW)
    w = HostClaim("*.example.com", OWNER_A, "example.com", NOW, NOW)
    index = HostIndex([a, w])
    assert index.rivals("www.example.com", "example.com", GUID) == [w]
    assert sorted(c.host for c in index.rivals("example.com", "example.com", GUID)) == ["*.example.com", "example.com"]
    assert index.rivals("www.example.com", "example.com", OWNER_A) == []
    assert index.rivals("www.example.org", "example.org", GUID) == []
    index.put(replace(a, guid=GUID))
    assert index.hosts_of(OWNER_A) == {"*.example.com"} and index.hosts_of(GUID) == {"example.com"}
    index.drop_guid(OWNER_A)
    assert set(index.by_host) == {"example.com"} and index.in_domain("example.com") == ("example.com",)
    assert index.owned(OWNER_A) == () and index.owned(GUID) == ("example.com",)
    assert OWNER_A not in index._by_guid, "an owner without hosts leaves no entry behind"
    index.put(replace(w, guid=GUID))
    index.put(HostClaim("www.example.com", GUID, "example.com", NOW, NOW))
    assert index.owned(GUID) == ("example.com", "*.example.com", "www.example.com")
    assert index.in_domain("example.com") == ("example.com", "*.example.com", "www.example.com")
    index.drop("*.example.com")
    assert index.owned(GUID) == ("example.com", "www.example.com")
    index.drop("example.com")
    assert index.owned(GUID) == ("www.example.com",) and index.in_domain("example.com") == ("www.example.com",)
    assert index._by_guid[GUID] == "www.example.com"  # one host: held as its string
    assert set(index.owned_by_others({GUID})) == set() and set(index.owned_by_others(set())) == {"www.example.com"}


# -- re-checks --------------------------------------------------------------------------------


def claim_of(host: str = "www.example.com", *, checked_at: float = NOW - 2 * DAY, failing_since: float | None = None) -> HostClaim:
    registrable = registrable_domain(host)
    assert registrable is not None
    return HostClaim(host, InstanceGuid(GUID), registrable, NOW - 30 * DAY, checked_at, failing_since)


CH = issue(SECRET, InstanceGuid(GUID), "www.example.com", NOW - 30 * DAY)


def txt_answers(claim: HostClaim, **by_name: Lookup) -> dict[str, Lookup]:
    names = recheck.names(claim, POLICY)
    answers = {n: absent(n) for n in names}
    answers.update({f"{LABEL}.{k.replace('_', '.')}": v for k, v in by_name.items()})
    return answers


def test_recheck_due() -> None:
    policy = DomainPolicy(recheck_interval_s=DAY)
    fresh = claim_of("a.example.com", checked_at=NOW - DAY + 1)
    stale = claim_of("b.example.com", checked_at=NOW - DAY)
    retained = replace(claim_of("c.example.com", checked_at=NOW - 9 * DAY), guid=InstanceGuid(OTHER))
    assert recheck.due([fresh, stale, retained], {GUID}, NOW, policy) == [stale]
    assert recheck.due([fresh, stale, retained], {GUID, OTHER}, NOW, policy) == [stale, retained]


def test_recheck_names() -> None:
    assert recheck.names(claim_of("a.b.example.com"), POLICY) == [
        f"{LABEL}.a.b.example.com", f"{LABEL}.b.example.com", f"{LABEL}.example.com"]
    assert recheck.names(claim_of("*.b.example.com"), POLICY) == [f"{LABEL}.b.example.com", f"{LABEL}.example.com"]


@pytest.mark.parametrize(
    "answers, expected",
    [
        ({"www.example.com": "mine"}, "ok"),
        ({"example.com": "mine"}, "ok"),
        ({"example.com": "extra"}, "ok"),
        ({"www.example.com": "unknown", "example.com": "mine"}, "ok"),
        ({}, "failing"),
        ({"www.example.com": "other"}, "failing"),
        ({"www.example.com": "unknown"}, "unknown"),
        ({"example.com": "unknown", "www.example.com": "other"}, "unknown"),
        ({"example.com": "missing"}, "unknown"),  # never looked up: no answer
    ],
)
def test_recheck_verdict_by_txt(answers, expected) -> None:
    claim = claim_of()
    txt = {n: absent(n) for n in recheck.names(claim, POLICY)}
    for where, what in answers.items():
        name = f"{LABEL}.{where}"
        if what == "missing":
            del txt[name]
        else:
            txt[name] = {
                "mine": found(name, CH.token),
                "extra": found(name, "something else", CH.token),
                "other": found(name, "cdnreq-someone-else"),
                "unknown": unknown(name),
            }[what]
    assert recheck.verdict(claim, CH, txt, None, POLICY) == expected


def test_recheck_without_challenge_is_unknown() -> None:
    claim = claim_of()
    assert recheck.verdict(claim, None, txt_answers(claim), None, POLICY) == "unknown"


def test_recheck_apply_ok_clears_failing() -> None:
    claim = claim_of(failing_since=NOW - 3 * DAY)
    after = recheck.apply(claim, "ok", NOW, POLICY)
    assert after == replace(claim, checked_at=NOW, failing_since=None)


def test_recheck_apply_unknown_neither_proves_nor_fails_and_asks_again_in_ten_minutes() -> None:
    """No answer (a timeout, SERVFAIL) changes nothing of the proof. It was
    asked again at every tick: in a DNS outage, thousands of proven hosts
    timing out at every tick held each tick minutes long, new customers'
    proofs looked up behind them."""
    for claim in (claim_of(), claim_of(failing_since=NOW - 30 * DAY)):
        for release in (False, True):
            policy = DomainPolicy(recheck_interval_s=DAY, grace_s=DAY, release_on_recheck_failure=release)
            after = recheck.apply(claim, "unknown", NOW, policy)
            assert after is not None and after.failing_since == claim.failing_since
            assert (after.host, after.guid, after.proven_at) == (claim.host, claim.guid, claim.proven_at)
            assert not recheck.due([after], {GUID}, NOW + recheck.UNKNOWN_RECHECK_S - 1, policy)
            assert recheck.due([after], {GUID}, NOW + recheck.UNKNOWN_RECHECK_S, policy)


def test_recheck_apply_first_failure_warns_and_looks_again_within_an_hour() -> None:
    policy = DomainPolicy(recheck_interval_s=DAY, grace_s=7 * DAY, release_on_recheck_failure=True)
    claim = claim_of()
    after = recheck.apply(claim, "failing", NOW, policy)
    assert after is not None
    assert after.failing_since == NOW
    assert after.guid == claim.guid and after.proven_at == claim.proven_at
    # due again one hour from now, not one day
    assert not recheck.due([after], {GUID}, NOW + recheck.FAILING_RECHECK_S - 1, policy)
    assert recheck.due([after], {GUID}, NOW + recheck.FAILING_RECHECK_S, policy) == [after]
    # a short interval is not lengthened
    short = DomainPolicy(recheck_interval_s=600)
    again = recheck.apply(claim, "failing", NOW, short)
    assert again is not None and again.checked_at + 600 == NOW + 600
    # the streak keeps its start
    later = recheck.apply(after, "failing", NOW + 3600, policy)
    assert later is not None and later.failing_since == NOW


def test_recheck_apply_past_grace() -> None:
    claim = claim_of(failing_since=NOW - 8 * DAY)
    keep = DomainPolicy(grace_s=7 * DAY, release_on_recheck_failure=False)
    after = recheck.apply(claim, "failing", NOW, keep)
    assert after is not None and after.failing_since == NOW - 8 * DAY and after.host == claim.host
    release = DomainPolicy(grace_s=7 * DAY, release_on_recheck_failure=True)
    assert recheck.apply(claim, "failing", NOW, release) is None
    # within the grace period: kept even when releasing is on
    young = claim_of(failing_since=NOW - 6 * DAY)
    assert recheck.apply(young, "failing", NOW, release) is not None


TARGETS = DomainPolicy(cdn_targets=("CDN.Provider.test.", "192.0.2.10"))


@pytest.mark.parametrize(
    "address, expected",
    [
        (Lookup("www.example.com", "found", ("cdn.provider.test",)), "ok"),
        (Lookup("www.example.com", "found", ("198.51.100.1", "CDN.PROVIDER.TEST.")), "ok"),
        (Lookup("www.example.com", "found", ("192.0.2.10",)), "ok"),
        (Lookup("www.example.com", "found", ("198.51.100.1", "elsewhere.test")), "failing"),
        (Lookup("www.example.com", "absent", (), "NXDOMAIN"), "failing"),
        (Lookup("www.example.com", "unknown", (), "timeout"), "unknown"),
        (None, "unknown"),
    ],
)
def test_recheck_by_address(address, expected) -> None:
    claim = claim_of()
    assert recheck.by_address(claim, TARGETS)
    # TXT answers do not matter in this mode
    txt = txt_answers(claim, www_example_com=found(f"{LABEL}.www.example.com", CH.token))
    assert recheck.verdict(claim, CH, txt, address, TARGETS) == expected


def test_recheck_wildcard_falls_back_to_txt_with_targets() -> None:
    claim = claim_of("*.example.com")
    assert not recheck.by_address(claim, TARGETS)
    assert not recheck.by_address(claim_of(), POLICY)
    pointing = Lookup("*.example.com", "found", ("cdn.provider.test",))
    assert recheck.verdict(claim, CH, txt_answers(claim), pointing, TARGETS) == "failing"
    proven = txt_answers(claim, example_com=found(f"{LABEL}.example.com", CH.token))
    assert recheck.verdict(claim, CH, proven, None, TARGETS) == "ok"


def test_decide_is_pure_the_caller_applies_its_claims() -> None:
    """gate.decide returns the index changes as data: the index it reads is
    unchanged until HostIndex.apply, which gives what decide used to write."""
    index = HostIndex()
    own(index, OWNER_A, "example.com", "www.example.com *.example.com")
    before, touched_before = snapshot(index), index.take_touched()
    inst = instance(GUID, "www.example.com")
    ch = challenge_for(GUID, inst)
    lookups = lookups_for(found(f"{LABEL}.www.example.com", ch.token), absent(f"{LABEL}.example.com"))
    gate, claims = decide(inst, validate(inst.parameters), index=index, active={GUID}, challenge=ch,
                          lookups=lookups, policy=POLICY, now=NOW)
    assert gate.status is Status.OK and claims.upserts and claims.deletes == ("*.example.com",)
    assert snapshot(index) == before and index.take_touched() == set()
    assert touched_before == {OWNER_A}
    index.apply(claims)
    assert index.owns(GUID, "www.example.com") and index.hosts_of(OWNER_A) == {"example.com"}
    assert index.take_touched() == {GUID, OWNER_A}


def test_a_host_whose_challenge_record_dns_cannot_carry_is_proven_at_a_parent() -> None:
    """A custom_domain near 253 octets: `_slapos-challenge.<it>` is longer than
    DNS allows. It was looked up anyway ("unknown" at every tick, a bad name
    for c-ares) and the customer was shown it as the record to create."""
    labels = ["a" * 63, "b" * 63, "c" * 50, "d" * 50]  # 229 octets with the dots, and ".example.com"
    host = ".".join(labels) + ".example.com"
    assert len(f"{LABEL}.{host}") > 253 >= len(host)
    inst = instance(GUID, host)
    verdict = validate(inst.parameters)
    assert verdict.ok, verdict.errors
    names = wanted_names(verdict, GUID, HostIndex(), {GUID}, POLICY)
    assert names and all(len(n) <= 253 for n in names) and f"{LABEL}.{host}" not in names
    assert names[0] == f"{LABEL}.{host.split('.', 1)[1]}" and names[-1] == f"{LABEL}.example.com"
    ch = challenge_for(GUID, inst)
    gate, _ = run(inst, challenge=ch, lookups={n: absent(n) for n in names})
    assert gate.status is Status.PENDING
    assert gate.extras["txt_record"] == names[0], gate.extras
    assert f"{LABEL}.{host}" not in gate.extras["message"]
    gate, claims = run(inst, challenge=ch, lookups={**{n: absent(n) for n in names},
                                                    names[-1]: found(names[-1], ch.token)})
    assert gate.status is Status.OK and [c.host for c in claims.upserts] == [host]
    claim = claims.upserts[0]
    assert recheck.names(claim, POLICY) == names

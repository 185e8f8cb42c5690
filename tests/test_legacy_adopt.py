"""cdnreq.legacy.adopt and claims: what an import keeps of the old state (pure)."""

from __future__ import annotations

from cdnreq.model import TechnicalEntry
from cdnreq.legacy.adopt import AdoptPolicy, Known, adopt, guid_of
from cdnreq.legacy.state import STOPPED, VALID, LegacyProof, LegacyRow, LegacyState
from cdnreq.model import Phase, RequestedState, SharedInstance, digest
from cdnreq.decide import gate as gates
from cdnreq.decide.transitions import needs_publish
from cdnreq.validate.verdict import unwrapped, validate

PREFIX = "_cdnreq_"
POLICY = AdoptPolicy(legacy_prefix=PREFIX, reference_style="guid", request_prefix="cdnreq-", spec_hash="S")
NOW = 1_800_000_000.0
CONN = {"site_url": "https://x.cdn.test", "domain": "x.cdn.test"}


def params(domain: str | None = None, alias: str | None = None, url: str = "https://198.51.100.7") -> dict:
    p = {"url": url}
    if domain:
        p["custom_domain"] = domain
    if alias:
        p["server-alias"] = alias
    return p


class Old:
    """A legacy state built customer by customer."""

    def __init__(self) -> None:
        self.requested: dict = {}
        self.validated: dict = {}
        self.proofs: dict = {}
        self.entries: dict = {}
        self.listed: dict = {}

    def live(self, ref: str, p: dict, *, proven_at: float = 100.0, listed: bool = True, entry_params: dict | None = None):
        self.requested[ref] = LegacyRow(ref, p, dict(CONN), VALID, 50.0)
        self.validated[ref] = LegacyRow(ref, p, {}, VALID, 50.0)
        domain = unwrapped(p).get("custom_domain")
        if domain:
            self.proofs[ref] = LegacyProof(ref, domain, f"tok-{ref}", True, proven_at)
        title = PREFIX + ref
        self.entries[title] = TechnicalEntry(title, f"T-{ref}", entry_params if entry_params is not None else p, "started")
        if listed:
            self.listed[ref] = SharedInstance.of(ref, p)
        return self

    def state(self) -> LegacyState:
        return LegacyState(self.requested, self.validated, self.proofs, {})

    def adopt(self, known: Known = Known()):
        return adopt(self.state(), self.listed, self.entries, POLICY, NOW, known)


def by_guid(adoption):
    return {r.guid: r for r in adoption.records}


def kinds(adoption, guid=None):
    return sorted(f.kind for f in adoption.findings if guid is None or f.guid == guid)


def test_a_proven_live_customer_is_adopted_as_it_is():
    old = Old().live("A", params("a.test", "www.a.test *.a.test"))
    out = old.adopt()
    record = by_guid(out)["A"]
    assert (record.title, record.phase, record.tech_guid) == ("_cdnreq_A", Phase.LIVE, "T-A")
    assert record.requested_state is RequestedState.STARTED and record.spec_hash == "S"
    assert set(record.served) == {"a.test", "www.a.test", "*.a.test"}
    assert {(c.host, c.proven_at) for c in out.claims} == {("a.test", 100.0), ("www.a.test", 100.0), ("*.a.test", 100.0)}
    # re-checked on cdnreq's schedule, spread over the day after the import: none at cut-over
    interval = POLICY.domain.recheck_interval_s
    checks = [c.checked_at for c in out.claims]
    assert all(NOW - interval < t <= NOW for t in checks) and len(set(checks)) == 3
    assert [(c.domain, c.token) for c in out.challenges] == [("a.test", "tok-A")]
    assert out.findings == []
    # what the first tick decides: the same request hash, and nothing new to publish
    instance = old.listed["A"]
    gate, _ = gates.decide(instance, validate(instance.parameters), index=gates.HostIndex(out.claims),
                           active={"A"}, challenge=out.challenges[0], lookups={}, policy=gates.DomainPolicy(), now=NOW)
    assert gate.ok and record.param_hash == gate.forward_hash
    assert not needs_publish(record, gate)
    # what the old requester published, plus cdnreq's reminders (the first read-back brings them)
    assert out.shown["A"] == {**CONN, "txt_record": "_slapos-challenge.a.test", "txt_value": "tok-A"}


def test_an_alias_the_old_token_does_not_prove_is_kept_with_a_recheck_due_now():
    out = Old().live("B", params("www.b.test", "shop.b.test")).adopt()
    assert kinds(out) == ["alias-unproven"]
    claims = {c.host: c for c in out.claims}
    assert claims["www.b.test"].checked_at > NOW - 86400 and claims["shop.b.test"].checked_at == 0.0


def test_an_alias_only_the_last_two_labels_rule_allowed_is_not_kept():
    out = Old().live("C", params("alice.github.io", "bob.github.io")).adopt()
    assert ("psl-unconfirmed", "bob.github.io") in {(f.kind, f.host) for f in out.findings}
    assert ("served-unproven", "bob.github.io") in {(f.kind, f.host) for f in out.findings}
    assert {c.host for c in out.claims} == {"alice.github.io"}
    assert by_guid(out)["C"].served == ("alice.github.io",)  # so the first tick does not destroy it


def test_two_instances_holding_one_host_leave_it_to_the_one_ranked_first():
    old = Old().live("D1", params("www.c.test", "shop.c.test"), proven_at=10.0).live("D2", params("shop.c.test"), proven_at=20.0)
    out = old.adopt()
    owners = {c.host: c.guid for c in out.claims}
    # D2 proved shop.c.test with its own token; D1 held it as an alias nobody proved
    assert owners["shop.c.test"] == "D2" and owners["www.c.test"] == "D1"
    conflict = [f for f in out.findings if f.kind == "host-conflict"]
    assert [(f.guid, f.host) for f in conflict] == [("D1", "shop.c.test")] and "D2" in conflict[0].decision
    assert by_guid(out)["D1"].served == ("www.c.test",)


def test_between_two_proofs_the_first_wins_and_a_listed_instance_beats_a_retained_one():
    # a token at the registrable domain proves every host under it, by cdnreq's rule too
    old = Old().live("D1", params("c.test", "shop.c.test"), proven_at=10.0).live("D2", params("shop.c.test"), proven_at=20.0)
    assert {c.host: c.guid for c in old.adopt().claims}["shop.c.test"] == "D1"
    old = Old().live("D1", params("c.test", "shop.c.test"), proven_at=10.0, listed=False)
    old.validated["D1"] = LegacyRow("D1", params("c.test", "shop.c.test"), {}, STOPPED, 500.0)
    old.live("D2", params("shop.c.test"), proven_at=20.0)
    assert {c.host: c.guid for c in old.adopt().claims}["shop.c.test"] == "D2"


def test_a_token_of_a_domain_that_changed_is_dropped():
    old = Old().live("E", params("new.test"), entry_params=params("old.test"))
    old.proofs["E"] = LegacyProof("E", "old.test", "tok-old", True, 100.0)
    out = old.adopt()
    assert "changed-domain" in kinds(out) and out.challenges == [] and out.claims == []
    record = by_guid(out)["E"]
    assert record.served == () and record.param_hash == digest(params("old.test"))  # the first tick updates it


def test_a_retained_customer_keeps_its_entry_hosts_and_departure_time():
    old = Old().live("F", params("f.test"), listed=False)
    old.validated["F"] = LegacyRow("F", params("f.test"), {}, STOPPED, 777.0)
    old.proofs["F"] = LegacyProof("F", "f.test", "tok-F", False, 100.0)  # the old retention unsets validated
    out = old.adopt()
    record = by_guid(out)["F"]
    assert (record.phase, record.gone_at, record.served) == (Phase.RETAINED, 777.0, ("f.test",))
    assert [c.host for c in out.claims] == ["f.test"] and "not-listed" not in kinds(out)


def test_a_pending_customer_keeps_its_token_and_its_title():
    old = Old()
    old.validated["G"] = LegacyRow("G", params("g.test"), {"txt_value": "tok-G"}, "invalid", 50.0)
    old.proofs["G"] = LegacyProof("G", "g.test", "tok-G", False, 100.0)
    old.listed["G"] = SharedInstance.of("G", params("g.test"))
    out = old.adopt()
    record = by_guid(out)["G"]
    assert (record.phase, record.title, record.param_hash) == (Phase.NEW, "_cdnreq_G", None)
    assert [(c.guid, c.token) for c in out.challenges] == [("G", "tok-G")] and out.claims == []
    assert out.counts["pending challenges"] == 1


def test_parameters_changed_since_the_old_request_are_updated_at_the_first_tick():
    old = Old().live("H", params(url="https://198.51.100.9"), entry_params=params(url="https://198.51.100.8"))
    record = by_guid(old.adopt())["H"]
    assert record.param_hash == digest(params(url="https://198.51.100.8"))
    assert record.param_hash != old.listed["H"].param_hash


def test_merge_keeps_what_the_store_knows():
    old = Old().live("A", params("a.test")).live("B", params("b.test"))
    out = old.adopt(Known(guids=frozenset({"A"}), titles=frozenset(), hosts={"b.test": "Z"}))
    assert "A" not in by_guid(out) and ("already-known", "A") in {(f.kind, f.guid) for f in out.findings}
    assert ("host-conflict", "b.test") in {(f.kind, f.host) for f in out.findings} and out.claims == []


def test_references_map_to_guids_by_the_configured_style():
    assert guid_of("SOFTINST-12", "guid") == "SOFTINST-12"
    assert guid_of("_site-1", "slapproxy") == "site-1______1"
    assert guid_of("slappart3_site_2", "slapproxy") == "site_2___slappart3___1"
    assert guid_of("nounderscore", "slapproxy") is None


def test_an_unsafe_title_is_kept_and_reported():
    old = Old().live("x___y", params())
    out = old.adopt()
    assert by_guid(out)["x___y"].title == "_cdnreq_x___y" and "unsafe-title" in kinds(out)


def test_a_token_no_txt_record_can_hold_is_not_kept():
    old = Old().live("K", params("k.test"))
    old.proofs["K"] = LegacyProof("K", "k.test", "tok with space\n<script>", True, 100.0)
    out = old.adopt()
    assert "token-unusable" in kinds(out) and out.challenges == [] and out.claims == []
    assert by_guid(out)["K"].served == ()


def test_parameters_serialised_in_slapos_underscore_are_read_inside():
    import json
    wrapped = {"_": json.dumps(params("w.test", "www.w.test"))}
    out = Old().live("W", wrapped).adopt()
    assert {c.host for c in out.claims} == {"w.test", "www.w.test"} and out.findings == []


def test_an_entry_the_cdn_did_not_list_is_requested_again_under_the_same_title():
    old = Old().live("M", params())
    del old.entries["_cdnreq_M"]
    out = old.adopt()
    record = by_guid(out)["M"]
    assert (record.phase, record.title, record.param_hash) == (Phase.NEW, "_cdnreq_M", None)
    assert "entry-missing" in kinds(out)


def test_a_stopped_customer_whose_entry_the_old_requester_kept_started_is_reported():
    old = Old().live("S", params())
    old.listed["S"] = SharedInstance.of("S", params(), state="stopped")
    out = old.adopt()
    assert [(f.kind, "stopped" in f.found) for f in out.findings] == [("state-ignored", True)]
    assert by_guid(out)["S"].requested_state is RequestedState.STARTED  # what the entry really is: the tick stops it


def test_a_departure_time_that_could_not_be_read_starts_the_retention_at_the_import():
    """A damaged `timestamp` on a stopped row must not read as 1970: the first
    tick would find the retention over and destroy the entry."""
    old = Old().live("R", params("r.test"), listed=False)
    old.validated["R"] = LegacyRow("R", params("r.test"), {}, STOPPED, None)
    record = by_guid(old.adopt())["R"]
    assert record.phase is Phase.RETAINED and record.gone_at == NOW


def test_a_proof_time_that_could_not_be_read_wins_no_host_and_is_storable():
    old = Old().live("A", params("a.test"), proven_at=500.0).live("B", params("a.test"))
    old.proofs["B"] = LegacyProof("B", "a.test", "tok-B", True, None)
    out = old.adopt()
    assert {c.host: c.guid for c in out.claims} == {"a.test": "A"}
    assert ("host-conflict", "B") in {(f.kind, f.guid) for f in out.findings}
    assert {c.guid: c.created_at for c in out.challenges}["B"] == NOW


def test_a_token_for_a_domain_that_cannot_be_read_is_dropped_not_stored_for_no_domain():
    """One damaged domain_validation row (an empty or garbage domain) for a
    customer without custom_domain made a challenge for no domain: the store
    refused it and the whole import with it."""
    for garbage in ("", "not a host!"):
        old = Old().live("A", params()).live("B", params("b.test"))
        old.proofs["A"] = LegacyProof("A", garbage, "tok", True, 5.0)
        out = old.adopt()
        assert [(c.guid, c.domain) for c in out.challenges] == [("B", "b.test")]
        assert kinds(out, "A") == ["changed-domain"]
        assert by_guid(out)["A"].phase is Phase.LIVE


def test_references_the_store_already_knows_still_count_as_listed():
    """import-legacy checks [legacy].reference_style by whether the master
    lists the old references; a --merge where the store knows them all was
    refused as a wrong reference_style."""
    old = Old().live("A", params()).live("B", params())
    out = old.adopt(Known(guids=frozenset({"A", "B"})))
    assert kinds(out) == ["already-known", "already-known"]
    assert out.counts["references listed"] == 2 and out.records == []


def test_a_pending_customer_the_master_lost_for_a_moment_keeps_its_token():
    """A listing that drops a pending customer during the import must not
    cost it its token: the first tick would issue a new challenge, against
    what it was told."""
    shown = {"txt_record": "_slapos-challenge.p.test", "txt_value": "tok-P"}
    old = Old()
    old.validated["P"] = LegacyRow("P", params("p.test"), shown, "invalid", 50.0)
    old.requested["P"] = LegacyRow("P", params("p.test"), shown, "invalid", 50.0)
    old.proofs["P"] = LegacyProof("P", "p.test", "tok-P", False, 40.0)
    out = old.adopt()  # not listed, no entry
    assert kinds(out) == ["pending-not-listed"]
    record = by_guid(out)["P"]
    assert record.phase is Phase.NEW and record.tech_guid is None and record.title == PREFIX + "P"
    assert [(c.guid, c.domain, c.token) for c in out.challenges] == [("P", "p.test", "tok-P")]
    assert out.shown["P"] == shown


def test_a_customer_gone_with_its_entry_or_retained_is_not_taken_for_a_lost_pending_one():
    old = Old().live("G", params("g.test"), listed=False)
    del old.entries[PREFIX + "G"]  # the old requester had an entry; neither side knows it now
    out = old.adopt()
    assert kinds(out) == ["gone"] and out.records == [] and out.challenges == []


def test_an_instance_listed_unusably_at_the_import_keeps_its_rank_for_a_contested_host():
    """The master lists A in a form cdnreq cannot use this once (a glitch, two
    different copies): A is still on the master, so it is neither reported
    not-listed nor ranked behind B for the host it proved first."""
    old = Old().live("A", params("c.test", "shop.c.test"), proven_at=100.0)
    old.live("B", params("shop.c.test"), proven_at=200.0)
    del old.listed["A"]
    out = adopt(old.state(), old.listed, old.entries, POLICY, NOW, Known(), frozenset({"A"}))
    assert {c.host: c.guid for c in out.claims}["shop.c.test"] == "A"
    assert "not-listed" not in kinds(out)
    assert by_guid(out)["A"].phase is Phase.LIVE


def test_an_alias_named_after_the_old_requester_stopped_is_not_granted_by_the_old_rule():
    """H proved h.shared.test with the old requester; once the cron stopped it
    adds www.shared.test, which neither its entry serves nor the old requester
    accepted. The import must not keep it as an unproven alias (served at the
    first tick without any proof): it is a new host, proven cdnreq's way."""
    old = Old().live("H", params("h.shared.test"))
    old.listed["H"] = SharedInstance.of("H", params("h.shared.test", "www.shared.test"))
    out = old.adopt()
    assert {c.host for c in out.claims} == {"h.shared.test"}
    assert "alias-unproven" not in kinds(out)
    # an alias the old requester did accept (its entry serves it) is still kept, re-checked
    old = Old().live("W", params("www.w.test", "shop.w.test"))
    assert {c.host for c in old.adopt().claims} == {"www.w.test", "shop.w.test"}


def test_an_entry_listed_under_another_customers_title_grants_it_none_of_its_hosts():
    """The technical CDN lists A's entry under B's title once (and A's not at
    all). B must not take A's hosts: only hosts B itself named are B's to keep;
    what an entry serves beyond them is served-unproven, not B's."""
    old = Old().live("A", params("a.shared.test"), proven_at=100.0).live("B", params("b.shared.test"))
    old.entries[PREFIX + "B"] = old.entries.pop(PREFIX + "A")
    out = old.adopt()
    assert {c.host: c.guid for c in out.claims} == {"a.shared.test": "A", "b.shared.test": "B"}
    assert ("served-unproven", "B", "a.shared.test") in {(f.kind, f.guid, f.host) for f in out.findings}


def test_merge_adopts_the_old_entry_of_a_customer_cdnreq_holds_without_one():
    """cdnreq ran before the import: the customer waits for a new proof with no
    entry while the old entry serves it; left alone, `orphans --destroy` would
    take that live site down."""
    old = Old().live("P", params("p.test")).live("Q", params())
    known = Known(guids=frozenset({"P", "Q"}), titles=frozenset({"cdnreq-P", "cdnreq-Q"}), bare=frozenset({"P"}))
    out = old.adopt(known)
    assert [(r.guid, r.title, r.phase, r.tech_guid) for r in out.records] == [("P", "_cdnreq_P", Phase.LIVE, "T-P")]
    assert {(f.kind, f.guid) for f in out.findings} == {("adopted-over", "P"), ("already-known", "Q")}
    assert [c.host for c in out.claims] == ["p.test"]


def test_an_old_domain_holding_a_password_is_not_written_in_a_finding():
    """The old requester kept the custom_domain it was given, as given: a
    `alice:pw@a.test` went into the changed-domain or pending-not-listed
    finding whole, which import-legacy prints and `cdnreq status` and
    `explain` show from the store."""
    old = Old().live("A", params("a.test"))
    old.proofs["A"] = LegacyProof("A", "alice:S3cretPW@a.test", "tok", True, 5.0)
    old.validated["P"] = LegacyRow("P", params("p.test"), {}, "invalid", 50.0)
    old.proofs["P"] = LegacyProof("P", "alice@corp:S3cretPW@p.test", "tok-P", False, 40.0)
    found = {(f.kind, f.guid): f for f in old.adopt().findings}
    assert found["changed-domain", "A"].found.startswith("the old token was issued for ***@a.test; the instance names")
    assert "S3cretPW" not in repr(found)
    assert found["pending-not-listed", "P"].found.startswith("the master does not list it; the old requester saw it at"
                                                        " its last run and gave it a token for ***@p.test")

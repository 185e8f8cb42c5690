"""The orphan sweep's decision (cdnreq/decide/orphans.py): which entries
are orphans, which are left alone, and when destroying them is held."""

from __future__ import annotations

from types import SimpleNamespace

from cdnreq.model import Entries, TechnicalEntry
from cdnreq.decide.guards import GuardPolicy, mass_removal
from cdnreq.decide.orphans import fingerprint, prefix_of, prefixes_of, sweep

PREFIXES = ("cdnreq-", "_cdnreq_")
POLICY = GuardPolicy(max_destroy_fraction=0.5)


def entries(*titles: str, unreadable: int = 0) -> Entries:
    return Entries(tuple(TechnicalEntry(t, f"G-{t}") for t in titles), unreadable)


def test_orphans_are_the_unowned_entries_under_either_prefix():
    listed = entries("cdnreq-a", "cdnreq-b", "cdnreq-c", "_cdnreq_d", "_cdnreq_e", "_cdnreq_f", "other-g")
    found = sweep(
        listed, PREFIXES,
        titles=["cdnreq-a", "cdnreq-b", "_cdnreq_d"],  # owned by title
        guids=["G-_cdnreq_e", None],  # owned by guid (an imported legacy entry)
        records=4, policy=POLICY,
    )  # fmt: skip
    assert [(o.entry.title, o.prefix) for o in found.orphans] == [("_cdnreq_f", "_cdnreq_"), ("cdnreq-c", "cdnreq-")]
    assert [e.title for e in found.ignored] == ["other-g"]
    assert (found.owned, found.under) == (4, 6)
    assert found.hold is None  # 2 of 6 < 0.5


def test_a_record_owns_its_entry_by_title_or_guid_not_by_nothing():
    lax = GuardPolicy(max_destroy_fraction=1.1)
    found = sweep(entries("cdnreq-x"), PREFIXES, titles=[], guids=[None], records=1, policy=lax)
    assert [o.entry.guid for o in found.orphans] == ["G-cdnreq-x"]  # a record without tech_guid owns nothing by guid


def test_the_longest_prefix_names_the_entry():
    assert prefix_of("cdnreq-legacy-1", ("cdnreq-", "cdnreq-legacy-")) == "cdnreq-legacy-"
    assert prefix_of("x", ("cdnreq-",)) is None
    assert prefix_of("anything", ("",)) == ""  # an empty own prefix: every entry is cdnreq's


def test_an_empty_store_is_always_held_even_for_one_orphan():
    lax = GuardPolicy(max_destroy_fraction=1.0)
    found = sweep(entries("cdnreq-a"), PREFIXES, titles=[], guids=[], records=0, policy=lax)
    assert found.hold is not None and "knows no instance" in found.hold
    assert len(found.orphans) == 1


def test_a_mass_sweep_is_held_on_the_ticks_bar():
    listed = entries("cdnreq-a", "cdnreq-b", "cdnreq-c", "cdnreq-d")
    half = sweep(listed, PREFIXES, titles=["cdnreq-a", "cdnreq-b"], guids=[], records=2, policy=POLICY)
    assert half.hold is not None and "2 of the 4" in half.hold and "max_destroy_fraction = 0.5" in half.hold
    below = sweep(listed, PREFIXES, titles=["cdnreq-a", "cdnreq-b", "cdnreq-c"], guids=[], records=3, policy=POLICY)
    assert below.hold is None
    # the one bar the tick uses too
    assert mass_removal(2, 4, POLICY) and not mass_removal(1, 4, POLICY)


def test_foreign_entries_do_not_dilute_the_bar():
    """Judged against the entries under the prefixes only: a CDN hosting many
    others' entries must not let a lost store's sweep slip under the bar."""
    listed = entries("cdnreq-a", "cdnreq-b", *(f"foreign-{i}" for i in range(20)))
    found = sweep(listed, PREFIXES, titles=["unrelated"], guids=[], records=1, policy=POLICY)
    assert found.hold is not None and "2 of the 2" in found.hold


def test_approval_releases_only_the_exact_set():
    listed = entries("cdnreq-a", "cdnreq-b")
    held = sweep(listed, PREFIXES, titles=[], guids=[], records=0, policy=POLICY)
    assert held.hold is not None and held.fingerprint
    approved = sweep(listed, PREFIXES, titles=[], guids=[], records=0, policy=POLICY, approved=held.fingerprint)
    assert approved.hold is None
    grown = sweep(entries("cdnreq-a", "cdnreq-b", "cdnreq-c"), PREFIXES, titles=[], guids=[], records=0,
                  policy=POLICY, approved=held.fingerprint)  # fmt: skip
    assert grown.hold is not None and grown.fingerprint != held.fingerprint
    wrong = sweep(listed, PREFIXES, titles=[], guids=[], records=0, policy=POLICY, approved="0" * 16)
    assert wrong.hold is not None and "not the fingerprint" in wrong.hold


def test_an_approval_of_another_set_holds_even_below_the_bar():
    listed = entries("cdnreq-a", "cdnreq-b", "cdnreq-c")
    below = sweep(listed, PREFIXES, titles=["cdnreq-a", "cdnreq-b"], guids=[], records=2, policy=POLICY)
    assert below.hold is None
    other = sweep(listed, PREFIXES, titles=["cdnreq-a", "cdnreq-b"], guids=[], records=2, policy=POLICY,
                  approved="0" * 16)  # fmt: skip
    assert other.hold is not None and below.fingerprint in other.hold
    same = sweep(listed, PREFIXES, titles=["cdnreq-a", "cdnreq-b"], guids=[], records=2, policy=POLICY,
                 approved=below.fingerprint)  # fmt: skip
    assert same.hold is None


def test_the_fingerprint_ignores_order_and_covers_guids():
    a = sweep(entries("cdnreq-a", "cdnreq-b"), PREFIXES, [], [], 0, POLICY)
    b = sweep(entries("cdnreq-b", "cdnreq-a"), PREFIXES, [], [], 0, POLICY)
    assert a.fingerprint == b.fingerprint
    regranted = Entries((TechnicalEntry("cdnreq-a", "OTHER"), TechnicalEntry("cdnreq-b", "G-cdnreq-b")))
    assert sweep(regranted, PREFIXES, [], [], 0, POLICY).fingerprint != a.fingerprint
    assert fingerprint([]) is None


def test_no_orphan_no_hold_and_unreadable_entries_are_counted():
    found = sweep(entries("cdnreq-a", unreadable=3), PREFIXES, ["cdnreq-a"], [], 1, POLICY)
    assert (found.orphans, found.hold, found.fingerprint, found.unreadable) == ((), None, None, 3)
    empty = sweep(entries(), PREFIXES, [], [], 0, POLICY)
    assert empty.hold is None and empty.under == 0


def test_prefixes_of_the_configuration():
    def config(own, legacy):
        return SimpleNamespace(
            technical_cdn=SimpleNamespace(request_prefix=own), legacy=SimpleNamespace(request_prefix=legacy)
        )

    assert prefixes_of(config("cdnreq-", None)) == ("cdnreq-",)
    assert prefixes_of(config("cdnreq-", "_cdnreq_")) == ("cdnreq-", "_cdnreq_")
    assert prefixes_of(config("same-", "same-")) == ("same-",)


def test_an_entry_listed_twice_counts_once_against_the_bar():
    """A listing repeating the owned entries (a page served twice) must not
    dilute the bar: 2 orphans of 3 entries is a mass removal however often
    the third is listed."""
    listed = entries("cdnreq-a", *["cdnreq-owned"] * 10, "cdnreq-b", "cdnreq-b")
    found = sweep(listed, PREFIXES, titles=["cdnreq-owned"], guids=[], records=1, policy=POLICY)
    assert (found.owned, len(found.orphans)) == (1, 2)
    assert found.hold is not None
    assert [o.entry.title for o in found.orphans] == ["cdnreq-a", "cdnreq-b"]

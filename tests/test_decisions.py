"""What a restart keeps of the domain step (cdnreq/decide/kept.py): verdicts
and settled gates are reused only under the same parameters, rules, policy
and claims; anything else is decided afresh, so a restart never serves a
host on a decision the warm daemon would have dropped."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import pytest

import cdnreq
import cdnreq.reconcile.domainstate as domains_module
from cdnreq.decide.asking import PENDING_MAX_S
from cdnreq.decide.gate import DomainPolicy, Gate, HostIndex, Status
from cdnreq.decide.kept import (
    claims_of,
    gate_text,
    read_gate,
    read_verdict,
    Trusted,
    settled_decision,
    trusted,
    verdict_decision,
    verdict_text,
)
from cdnreq.dns.challenge import issue
from cdnreq.model import Decision, FrozenJson, HostClaim, InstanceGuid, Lookup, SharedInstance
from cdnreq.reconcile.domains import Domains
from cdnreq.store import Store
from cdnreq.store.migrations import LATEST, MIGRATIONS, split_statements
from cdnreq.validate import version
from cdnreq.validate.policy import ValidationPolicy
from cdnreq.validate.verdict import Verdict, validate

SECRET = b"decisions-test-secret-0123456789abcdef"
LABEL = "_slapos-challenge"
NOW = 1_700_000_000.0
POLICY = DomainPolicy()
STAMP = version.stamp(POLICY)


def sources_digest() -> str:
    root = Path(cdnreq.__file__).parent
    files = sorted(
        p for pattern in version.SOURCES for p in root.glob(pattern) if p.name != "version.py"
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def test_the_rules_have_not_changed_without_a_new_validator_version() -> None:
    """Kept verdicts are trusted under VALIDATOR_VERSION: a change to the
    rules must come with a new version, or restarts would reuse verdicts
    the new rules would not give."""
    assert sources_digest() == version.SOURCES_DIGEST, (
        "the validation rules changed: raise VALIDATOR_VERSION in cdnreq/validate/version.py"
        f" and set SOURCES_DIGEST = {sources_digest()!r}"
    )


def test_the_stamp_follows_the_version_and_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert version.stamp(DomainPolicy()) == STAMP
    assert version.stamp(replace(POLICY, validation=ValidationPolicy(forward_unknown=True))) != STAMP
    assert version.stamp(replace(POLICY, label="_other")) != STAMP
    monkeypatch.setattr(version, "VALIDATOR_VERSION", version.VALIDATOR_VERSION + 1)
    assert version.stamp(POLICY) != STAMP


# -- the rule ---------------------------------------------------------------------------


def claim(host: str, guid: str, **changes: float | None) -> HostClaim:
    return replace(HostClaim(host, InstanceGuid(guid), host.partition(".")[2], NOW - 10, NOW - 5), **changes)


def ok_gate(*hosts: str) -> Gate:
    return Gate(Status.OK, FrozenJson({"url": "https://b.example"}), "fh", hosts, {"warning-list": "w"})


def test_a_settled_gate_is_trusted_only_with_the_claims_it_was_settled_with() -> None:
    index = HostIndex([claim("www.a.example", "A"), claim("www.b.example", "B")])
    rows = [
        settled_decision("A", "pa", STAMP, ok_gate("www.a.example"), index),
        settled_decision("B", "pb", STAMP, ok_gate("www.b.example"), index),
        settled_decision("N", "pn", STAMP, ok_gate(), index),  # names no host
    ]
    kept = trusted(rows, STAMP, index)
    assert kept.settled == {"A": ("pa", ok_gate("www.a.example")), "B": ("pb", ok_gate("www.b.example")),
                            "N": ("pn", ok_gate())} and kept.verdicts == {}  # fmt: skip

    # B's claim was re-checked (failing now), A's released, N got a host since
    later = HostIndex([claim("www.b.example", "B", failing_since=NOW), claim("n.example", "N")])
    assert trusted(rows, STAMP, later) == Trusted()
    # another rule set or policy: nothing
    assert trusted(rows, version.stamp(replace(POLICY, label="_x")), index) == Trusted()


def test_only_an_ok_gate_owning_all_its_hosts_is_trusted() -> None:
    index = HostIndex([claim("www.a.example", "A")])
    pending = Gate(Status.PENDING, hosts=("www.a.example",), pending=("www.a.example",))
    rows = [
        Decision("A", "pa", STAMP, gate=gate_text(pending), claims=claims_of(index, "A")),
        Decision("B", "pb", STAMP, gate=gate_text(ok_gate("www.a.example")), claims=claims_of(index, "B")),
    ]
    assert trusted(rows, STAMP, index) == Trusted()


def test_rows_that_cannot_be_read_are_decided_afresh() -> None:
    index = HostIndex()
    rows = [
        Decision("A", "pa", STAMP, gate="{not json", claims=claims_of(index, "A")),
        Decision("B", "pb", STAMP, verdict='{"errors": 3}'),
        Decision("C", "pc", STAMP, gate='{"status": "ok", "extras": []}', claims=claims_of(index, "C")),
        Decision("D", "pd", STAMP),
        verdict_decision("E", "pe", STAMP, Verdict(errors=("url: missing",))),
        verdict_decision("F", "pf", STAMP, Verdict(), NOW + 600),
    ]
    kept = trusted(rows, STAMP, index)
    assert kept.settled == {} and kept.verdicts == {"E": ("pe", Verdict(errors=("url: missing",))), "F": ("pf", Verdict())}
    assert kept.next_lookup == {"F": ("pf", NOW + 600)}


def test_verdicts_and_gates_read_back_as_they_were_written() -> None:
    for parameters in (
        {"url": "https://b.example", "custom_domain": "www.a.example", "server-alias": "x.a.example"},
        {"url": "ftp://nope"},
        {"_": '{"url": "https://b.example", "https-only": "false"}'},
        {"url": "https://b.example", "custom_domain": "bücher.example"},
    ):
        verdict = validate(parameters)
        assert read_verdict(verdict_text(verdict)) == verdict, parameters
    for gate in (ok_gate("www.a.example", "*.w.example"), Gate(Status.INVALID, error="e", extras={"m": "é\ud800"}),
                 Gate(Status.PENDING, pending=("p.example",), reason="r")):
        assert read_gate(gate_text(gate)) == gate


# -- in the domain step --------------------------------------------------------------------


class Zone:
    """TXT answers from a dict, counting what is asked."""

    def __init__(self, txt: dict[str, str]):
        self.txt = txt
        self.asked: list[str] = []

    async def txt_many(self, names):
        names = list(names)
        self.asked += names
        return {n: Lookup(n, "found", (self.txt[n],)) if n in self.txt else Lookup(n, "absent") for n in names}

    async def addresses(self, name: str) -> Lookup:
        return Lookup(name, "absent")

    async def close(self) -> None:
        pass


def instance(guid: str, domain: str | None = None, **extra: str) -> SharedInstance:
    parameters = {"url": f"https://{guid.lower()}.backend.example", **extra}
    if domain:
        parameters["custom_domain"] = domain
    return SharedInstance.of(guid, parameters)


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def counting(parameters, *limits):
        calls.append(parameters.get("url", "?"))
        return validate(parameters, *limits)

    monkeypatch.setattr(domains_module, "validate", counting)
    return calls


async def first_life() -> tuple[Domains, list[SharedInstance], list[Decision], Zone]:
    """Three instances decided once: A proven, B pending (its challenge old enough
    to be looked up every PENDING_MAX_S), C refused."""
    challenges = {g: issue(SECRET, InstanceGuid(g), d, NOW - 6000) for g, d in (("A", "www.a.example"), ("B", "www.b.example"))}
    zone = Zone({f"{LABEL}.www.a.example": challenges["A"].token})
    listing = [instance("A", "www.a.example"), instance("B", "www.b.example"), instance("C", type="nope")]
    d = Domains(policy=POLICY, secret=SECRET, resolver=zone, challenges=challenges)
    out = await d.step(listing, {}, NOW, tick=1)
    assert [out.gates[g].status for g in "ABC"] == [Status.OK, Status.PENDING, Status.INVALID]
    return d, listing, list(out.decisions.values()), zone


async def test_a_restart_decides_nothing_again_that_it_kept(validations: list[str]) -> None:
    d, listing, kept, zone = await first_life()
    assert sorted(x.guid for x in kept) == ["A", "B", "C"]
    assert next(x for x in kept if x.guid == "A").gate is not None  # settled
    assert len(validations) == 3

    asked = len(zone.asked)
    again = Domains(policy=POLICY, secret=SECRET, resolver=zone, hosts=d.index.by_host.values(),
                    challenges=d.challenges, kept=kept)  # fmt: skip
    out = await again.step(listing, {}, NOW + 1, tick=2)
    assert len(validations) == 3  # none validated again
    assert [out.gates[g].status for g in "ABC"] == [Status.OK, Status.PENDING, Status.INVALID]
    assert out.gates["A"] == d._settled["A"][1]
    assert len(zone.asked) == asked  # B's proof is not due yet: not looked up, as a warm daemon would not
    assert out.decisions == {}  # nothing new to keep
    out = await again.step(listing, {}, NOW + PENDING_MAX_S, tick=3)
    assert len(zone.asked) > asked and set(out.decisions) == {"B"}  # due: asked, and its next time kept
    assert out.decisions["B"].next_lookup == NOW + 2 * PENDING_MAX_S


async def test_a_restart_under_another_policy_or_with_other_claims_decides_afresh(validations: list[str]) -> None:
    d, listing, kept, zone = await first_life()
    other = replace(POLICY, validation=ValidationPolicy(forward_unknown=True))
    again = Domains(policy=other, secret=SECRET, resolver=zone, hosts=d.index.by_host.values(),
                    challenges=d.challenges, kept=kept)  # fmt: skip
    await again.step(listing, {}, NOW + 60, tick=2)
    assert len(validations) == 6

    # the store was restored from before A proved its host: A's gate is not trusted,
    # and without its proof in DNS A is not served
    zone.txt.clear()
    restored = Domains(policy=POLICY, secret=SECRET, resolver=zone, challenges=d.challenges, kept=kept)
    out = await restored.step(listing, {}, NOW + 60, tick=2)
    assert out.gates["A"].status is Status.PENDING


async def test_a_changed_instance_is_validated_and_its_new_verdict_kept(validations: list[str]) -> None:
    d, listing, kept, zone = await first_life()
    again = Domains(policy=POLICY, secret=SECRET, resolver=zone, hosts=d.index.by_host.values(),
                    challenges=d.challenges, kept=kept)  # fmt: skip
    changed = [listing[0], listing[1], instance("C", type="zope")]
    out = await again.step(changed, {}, NOW + 60, tick=2)
    assert validations[3:] == ["https://c.backend.example"]
    assert out.gates["C"].ok and out.decisions["C"].gate is not None  # settled now: its gate supersedes the verdict


# -- in the store ----------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "cdnreq.db")
    yield s
    await s.close()


async def test_decisions_are_stored_and_go_with_a_forgotten_instance(store: Store) -> None:
    index = HostIndex()
    rows = [settled_decision("A", "pa", STAMP, ok_gate(), index), verdict_decision("B", "pb", STAMP, Verdict())]
    await store.commit(decisions=rows)
    assert sorted(await store.load_decisions(), key=lambda x: x.guid) == rows
    await store.commit(decisions=[verdict_decision("A", "pa2", STAMP, Verdict())], forgets=["B"])
    assert await store.load_decisions() == [verdict_decision("A", "pa2", STAMP, Verdict())]


def make_schema_5(path: Path, version: int = 5) -> None:
    """A store of schema `version` (5 unless told), as that cdnreq left it: instance A, its host."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode=WAL")
        for number, description, sql in MIGRATIONS[:version]:
            raw.execute("BEGIN")
            for statement in split_statements(sql):
                raw.execute(statement)
            if number == 1:
                raw.execute("INSERT INTO schema_version (id, version) VALUES (1, 1)")
            raw.execute("UPDATE schema_version SET version = ?", (number,))
            raw.execute("INSERT INTO migrations VALUES (?, ?, ?)", (number, description, time.time()))
            raw.execute("COMMIT")
        raw.execute(
            "INSERT INTO instances (guid, title, phase, param_hash, failures, created_at, updated_at)"
            " VALUES ('A', 'cdnreq-A', 'live', 'pa', 0, 1.0, 2.0)"
        )
        raw.execute("INSERT INTO hosts VALUES ('www.a.example', 'A', 'a.example', 1.0, 2.0, NULL)")
    finally:
        raw.close()


async def test_a_store_of_the_previous_schema_migrates_and_keeps_what_it_held(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    make_schema_5(path)
    async with await Store.open(path) as s:
        assert s.schema_version == LATEST
        assert set(await s.load()) == {"A"} and set(await s.load_hosts()) == {"www.a.example"}
        assert await s.load_decisions() == []  # nothing kept yet: the first tick validates, as before
        await s.commit(decisions=[verdict_decision("A", "pa", STAMP, Verdict())])
        assert len(await s.load_decisions()) == 1
    with sqlite3.connect(path) as raw:
        assert [v for (v,) in raw.execute("SELECT version FROM migrations ORDER BY version")] == list(
            range(1, LATEST + 1))


async def test_a_restarted_reconciler_validates_nothing_it_kept(tmp_path: Path, validations: list[str]) -> None:
    """In the tick: the decisions are committed with the step, and a new
    Reconciler on the same store (a restart) validates none of them again."""
    from test_tick_stages import Dns, Master, config, customer
    from cdnreq.reconcile.tick import Reconciler

    cfg = config(tmp_path)
    instances = [customer("A"), customer("B"), customer("C", "www.c.example")]
    async with await Store.open(cfg.daemon.database) as s:
        first = Reconciler(config=cfg, store=s, master=Master(s, instances), resolver=Dns({}))  # type: ignore[arg-type]
        assert (await first.tick()).ok
        assert len(validations) == 3
        assert {x.guid for x in await s.load_decisions()} == {"A", "B", "C"}
    async with await Store.open(cfg.daemon.database) as s:
        master = Master(s, instances)
        second = Reconciler(config=cfg, store=s, master=master, resolver=Dns({}))  # type: ignore[arg-type]
        report = await second.tick()
        assert report.ok, report.error
        assert len(validations) == 3  # nothing validated again
        assert master.requests == []


async def test_a_kept_lookup_time_too_far_ahead_is_not_believed() -> None:
    """A store restored onto a host whose clock is behind (or a clock set
    back) would defer a pending proof by the difference: a kept time beyond
    the longest wait is due at once."""
    d, listing, kept, zone = await first_life()
    far = [replace(x, next_lookup=NOW + 30 * 86400.0) if x.guid == "B" else x for x in kept]
    asked = len(zone.asked)
    again = Domains(policy=POLICY, secret=SECRET, resolver=zone, hosts=d.index.by_host.values(),
                    challenges=d.challenges, kept=far)  # fmt: skip
    out = await again.step(listing, {}, NOW + 1, tick=2)
    assert f"{LABEL}.www.b.example" in zone.asked[asked:] and out.decisions["B"].next_lookup == NOW + 1 + PENDING_MAX_S

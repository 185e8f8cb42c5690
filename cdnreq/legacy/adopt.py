"""What cdnreq keeps of the cron requester's state: pure decisions.

For each customer the old requester knew, the record cdnreq would have
written had it served that customer from the start: the title its entry was
requested under (adopted, not recomputed), the technical entry found under
that title on the CDN, the parameters that entry holds, what the customer
was last shown, its retention, its proven hosts and its DNS token. Anything
the old state holds that cdnreq's rules would not have allowed is a
Finding, with the decision taken (see FINDINGS; the README documents them).
The first tick after an import then finds nothing to request or publish for
an unchanged live customer.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from cdnreq.model import TechnicalEntry
from cdnreq.legacy.claims import PROVEN, Candidate, judge, named_hosts, settle
from cdnreq.legacy.findings import Finding, finding
from cdnreq.legacy.state import STOPPED, VALID, LegacyProof, LegacyState
from cdnreq.model import (
    Challenge, Event, HostClaim, InstanceAnswer, InstanceGuid, Phase, Record, RequestedState,
    SharedInstance, Title, digest, frozen_json, shown_digest,
)
from cdnreq.decide import gate as gates
from cdnreq.decide.transitions import compose, kept
from cdnreq.validate.hosts import HostError, normalise_host
from cdnreq.validate.verdict import unwrapped, validate

_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")  # what one TXT string can hold and a customer can type
LEGACY_SALT = "legacy"  # a Challenge's salt when its token came from the old requester


@dataclass(frozen=True, slots=True)
class AdoptPolicy:
    legacy_prefix: str
    reference_style: str  # "guid" or "slapproxy"
    request_prefix: str  # cdnreq's own, for instances without an entry
    spec_hash: str
    domain: gates.DomainPolicy = gates.DomainPolicy()


@dataclass(frozen=True, slots=True)
class Known:
    """What the store already holds (for --merge)."""

    guids: frozenset[str] = frozenset()
    titles: frozenset[str] = frozenset()
    hosts: Mapping[str, str] = field(default_factory=dict)  # host -> guid
    bare: frozenset[str] = frozenset()  # guids stored without a technical entry, never requested


@dataclass
class Adoption:
    records: list[Record] = field(default_factory=list)
    claims: list[HostClaim] = field(default_factory=list)
    challenges: list[Challenge] = field(default_factory=list)
    shown: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def guid_of(reference: str, style: str) -> str | None:
    """The instance_guid the master lists for an old reference."""
    if style == "guid":
        return reference
    requested_by, sep, title = reference.partition("_")  # as slapproxy splits its own references
    return f"{title}___{requested_by}___1" if sep and title else None


@dataclass
class _Draft:
    reference: str
    guid: str
    title: str
    instance: SharedInstance | None
    entry: TechnicalEntry | None
    proof: LegacyProof | None
    proven: bool
    shown: Mapping[str, Any]
    connection: Mapping[str, Any] | None
    retained_at: float | None
    listed: bool = False  # by the master now, usable or not
    let_through: tuple[str, ...] = ()  # the hosts the old requester accepted or its entry serves
    named: tuple[str, ...] = ()  # the hosts the customer named in the old requester's tables
    candidates: list[Candidate] = field(default_factory=list)


def adopt(
    state: LegacyState,
    listed: Mapping[str, SharedInstance],
    entries: Mapping[str, TechnicalEntry],
    policy: AdoptPolicy,
    now: float,
    known: Known = Known(),
    unusable: frozenset[str] = frozenset(),
) -> Adoption:
    """`unusable`: guids the master listed in a form cdnreq cannot use this
    time (listed, so neither gone nor behind a listed rival for a host)."""
    out = Adoption()
    drafts: list[_Draft] = []
    titles = set(known.titles)
    for reference in state.references():
        draft = _draft(reference, state, listed, unusable, entries, policy, known, titles, now, out)
        if draft is not None:
            drafts.append(draft)
            titles.add(draft.title)
    owners = _claims(drafts, known, now, policy.domain.recheck_interval_s, out)
    index = gates.HostIndex(out.claims)
    tokens = {c.guid: c for c in out.challenges}
    active = set(listed) | unusable
    for draft in drafts:
        _finish(draft, owners.get(draft.guid, set()), tokens.get(draft.guid), index, active, policy, now, out)
    out.counts["findings"] = len(out.findings)
    return out


def _draft(
    reference: str,
    state: LegacyState,
    listed: Mapping[str, SharedInstance],
    unusable: frozenset[str],
    entries: Mapping[str, TechnicalEntry],
    policy: AdoptPolicy,
    known: Known,
    titles: set[str],
    now: float,
    out: Adoption,
) -> _Draft | None:
    guid = guid_of(reference, policy.reference_style)
    if guid is None:
        out.findings.append(finding("unmapped-reference", "", reference, style=policy.reference_style))
        return None
    out.counts["references listed"] += guid in listed or guid in unusable  # the mapping's test
    requested, validated = state.requested.get(reference), state.validated.get(reference)
    title = policy.legacy_prefix + reference
    entry = entries.get(title)
    if guid in known.guids:
        if entry is None or guid not in known.bare:
            out.findings.append(finding("already-known", guid, reference))
            return None
        # cdnreq ran before the import and holds this customer without an entry,
        # while the old one still serves it: adopt that entry, or it would look orphaned
        out.findings.append(finding("adopted-over", guid, reference, title=title))
    instance = listed.get(guid)
    retained_at = None
    if validated is not None and validated.state == STOPPED:
        # an unreadable departure time starts the retention at the import, never ends it
        retained_at = validated.at if validated.at is not None else now
    if entry is None and instance is None and not _pending_unlisted(reference, state, guid, out):
        if requested is not None and requested.state == VALID:
            out.findings.append(finding("gone", guid, reference, title=title))
        return None  # nothing on the master, nothing on the CDN: nothing to keep
    if entry is None and instance is not None:
        if requested is not None and requested.state == VALID:
            out.findings.append(finding("entry-missing", guid, reference, title=title))
    if reason := _unsafe(title):
        out.findings.append(finding("unsafe-title", guid, reference, title=title, reason=reason))
    if title in titles:
        out.findings.append(finding("title-taken", guid, reference, title=title))
        return None
    if instance is None and entry is not None and retained_at is None and guid not in unusable:
        out.findings.append(finding("not-listed", guid, reference))
    shown = (requested or validated).published if (requested or validated) else {}
    connection = requested.published if requested is not None and requested.state == VALID and entry else None
    proof = state.proofs.get(reference)
    if proof is not None and proof.at is None:  # unreadable: as recent as the import, so it wins no host
        proof = replace(proof, at=now)
    proven = proof is not None and (proof.validated or (retained_at is not None and entry is not None))
    accepted = validated.parameters if validated is not None and validated.state == VALID else None
    let_through = tuple(named_hosts(entry.parameters if entry else None) + named_hosts(accepted))
    named = tuple(h for row in (validated, requested) if row is not None for h in named_hosts(row.parameters))
    return _Draft(reference, guid, title, instance, entry, proof, proven, shown, connection, retained_at,
                  listed=instance is not None or guid in unusable, let_through=let_through, named=named)


def _pending_unlisted(reference: str, state: LegacyState, guid: str, out: Adoption) -> bool:
    """A customer the old requester saw on the master at its last run and gave
    a token, without an entry yet, that the master does not list now: a
    listing that lost it for a moment must not cost it its token (a new
    challenge would contradict what it was told). Imported; the first tick
    handles it as gone when the master still does not list it."""
    validated, requested, proof = state.validated.get(reference), state.requested.get(reference), state.proofs.get(reference)
    if validated is None or validated.state == STOPPED or proof is None:
        return False
    if requested is not None and requested.state == VALID:  # it had an entry: gone with it
        return False
    out.findings.append(finding("pending-not-listed", guid, reference, domain=proof.domain))
    return True


def _unsafe(title: str) -> str | None:
    """Why the master may mishandle a title (slapproxy splits guids on `___`)."""
    if "___" in title:
        return 'it holds "___"'
    if title.endswith("_"):
        return 'it ends with "_"'
    if len(title) > 200:
        return "it is longer than 200 characters"
    return None


def _claims(drafts: list[_Draft], known: Known, now: float, interval: float, out: Adoption) -> dict[str, set[str]]:
    """Judge and settle every instance's hosts; returns the hosts each keeps."""
    pool: list[Candidate] = []
    for d in drafts:
        if d.proof is None:
            continue
        domain = _host(_current(d).get("custom_domain")) if _current(d) else _host(d.proof.domain)
        if not _TOKEN.fullmatch(d.proof.token):
            out.findings.append(finding("token-unusable", d.guid, d.reference, token=d.proof.token[:80]))
            d.proof, d.proven = None, False
            continue
        if domain is None or domain != _host(d.proof.domain):  # a token for no readable host proves nothing
            out.findings.append(finding("changed-domain", d.guid, d.reference, old=d.proof.domain or "\"\"", new=domain or "none"))
            d.proof = None
            continue
        out.challenges.append(Challenge(InstanceGuid(d.guid), domain, LEGACY_SALT, d.proof.token, d.proof.at))
        if not d.proven:
            out.counts["pending challenges"] += 1
            continue
        hosts = dict.fromkeys(named_hosts(d.instance.parameters if d.instance else None) + list(d.named))
        judged = judge(domain, hosts, guid=d.guid, reference=d.reference, proven_at=d.proof.at,
                       active=d.listed, live=d.entry is not None, let_through=d.let_through)
        for host, kind in judged.refused:
            out.findings.append(finding(kind, d.guid, d.reference, host=host))
        pool.extend(judged.candidates)
    kept_, lost = settle(pool)
    for loser, winner in lost:
        out.findings.append(finding("host-conflict", loser.guid, loser.reference, host=loser.host, winner=winner.guid))
    owners: dict[str, set[str]] = {}
    for c in kept_:
        holder = known.hosts.get(c.host)
        if holder is not None and holder != c.guid:
            out.findings.append(finding("host-conflict", c.guid, c.reference, host=c.host, winner=holder))
            continue
        if c.strength != PROVEN:
            out.findings.append(finding("alias-unproven", c.guid, c.reference, host=c.host))
        checked = _first_check(c, now, interval)
        out.claims.append(HostClaim(c.host, InstanceGuid(c.guid), c.registrable, c.proven_at, checked))
        owners.setdefault(c.guid, set()).add(c.host)
    out.counts["proven hosts"] = len(out.claims)
    return owners


def _first_check(c: Candidate, now: float, interval: float) -> float:
    """When the claim counts as last checked. A proof the old token still
    gives is re-checked on cdnreq's schedule, the first ones spread over one
    [domain].recheck_interval_s after the import (a burst of lookups, and of
    warnings to customers who removed their record long ago, at cut-over is
    what the import must avoid); an alias nobody proved is due at once."""
    if c.strength != PROVEN:
        return 0.0
    spread = zlib.crc32(c.host.encode("utf-8", "surrogatepass")) / 2**32
    return now - interval * spread


def _current(d: _Draft) -> Mapping[str, Any]:
    """The parameters the instance names now: as listed, else as its entry holds them."""
    if d.instance is not None:
        return unwrapped(d.instance.parameters)
    return unwrapped(d.entry.parameters) if d.entry is not None else {}


def _host(value: Any) -> str | None:
    try:
        return normalise_host(value, wildcard=True) if isinstance(value, str) and value else None
    except HostError:
        return None


def _finish(
    d: _Draft,
    owned: set[str],
    challenge: Challenge | None,
    index: gates.HostIndex,
    active: set[str],
    policy: AdoptPolicy,
    now: float,
    out: Adoption,
) -> None:
    """The record of one instance, once every instance's hosts are settled."""
    served = None
    param_hash = None
    gate = None
    if d.instance is not None:
        verdict = validate(d.instance.parameters, policy.domain.validation)
        if not verdict.ok:
            out.findings.append(finding("parameters-refused", d.guid, d.reference, errors="; ".join(verdict.errors)))
        gate, _ = gates.decide(d.instance, verdict, index=index, active=active, challenge=challenge,
                               lookups={}, policy=policy.domain, now=now)
    if d.entry is not None:
        named = named_hosts(d.entry.parameters)
        served = tuple(h for h in named if h in owned)
        for host in named:
            if host not in owned:
                out.findings.append(finding("served-unproven", d.guid, d.reference, host=host))
        param_hash = _held_hash(d, gate)
        if d.instance is not None and d.instance.state is not RequestedState.STARTED:
            out.findings.append(finding("state-ignored", d.guid, d.reference, state=d.instance.state.value))
    phase = _phase(d)
    out.counts[phase.value] += 1
    shown = _shown(d, gate)
    out.records.append(Record(
        guid=InstanceGuid(d.guid), title=Title(d.title), phase=phase, created_at=now, updated_at=now,
        param_hash=param_hash, requested_state=RequestedState.STARTED if d.entry else None,
        spec_hash=policy.spec_hash if d.entry else None, tech_guid=d.entry.guid if d.entry else None,
        connection=frozen_json(d.connection) if d.connection else None,
        published=shown_digest(shown) if shown else None,
        last_action="import", served=served,
        gone_at=d.retained_at if phase is Phase.RETAINED else None,
        live_at=now if phase is Phase.LIVE and d.connection else None,  # live before cdnreq: no `live` change
    ))
    if shown:
        out.shown[d.guid] = shown
    detail = f"from the cron requester (reference {d.reference}): title {d.title}"
    detail += f", entry {d.entry.guid}" if d.entry else ", no entry on the CDN"
    out.events.append(Event(d.guid, "import", "ok", now, f"{detail}; {phase.value}"))
    out.counts["instances"] += 1


def _phase(d: _Draft) -> Phase:
    if d.entry is None:
        return Phase.NEW
    if d.instance is None and d.retained_at is not None:
        return Phase.RETAINED
    return Phase.LIVE if d.connection else Phase.REQUESTED


def _held_hash(d: _Draft, gate: gates.Gate | None) -> str:
    """What the entry holds, as cdnreq hashes requests: the hash cdnreq would
    request for the customer's parameters when the entry already holds them
    (the tick's own test, records.kept), so nothing is requested again; else
    the entry's own, so the first tick updates it."""
    assert d.entry is not None
    if d.instance is not None and gate is not None and gate.ok and gate.forward_hash is not None:
        wanted = gate.forward if gate.forward is not None else d.instance.parameters
        if kept(InstanceAnswer(d.entry.guid, parameters=d.entry.parameters), wanted):
            return gate.forward_hash
    return digest(d.entry.parameters)


def _shown(d: _Draft, gate: gates.Gate | None) -> Mapping[str, Any]:
    """What counts as shown to the customer: what the old requester
    published, or, when cdnreq would show a live customer the same values
    plus reminders of its own (the TXT record it keeps for re-checks,
    warnings), cdnreq's view. Those reach the customer with the entry's first
    periodic read-back (which finds them missing), not as a burst of
    publications at the cut-over."""
    if gate is not None and gate.ok and d.connection and d.shown:
        ours = compose(d.connection, gate, True)
        if all(k in ours and ours[k] == v for k, v in d.shown.items()):
            return ours
    return d.shown

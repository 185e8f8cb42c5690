"""Which hosts an imported instance may keep, judged by cdnreq's rules.

The old requester proved a customer's custom_domain by a TXT token at
`<label>.<custom_domain>` and let aliases through when they shared its "last
two labels", without DNS. cdnreq proves a host by the token at the host or
one of its parents down to its registrable domain (Public Suffix List). So
of what the old state holds, a host is kept as proven only when the old
token, where it was published, proves it by cdnreq's rule too; an alias
under the same registrable domain is kept with a warning and re-checked at
once; an alias the Public Suffix List puts under another registrable domain
(`bob.github.io` beside `alice.github.io`) is not kept. Where two instances
hold overlapping hosts, one keeps them (see `settle`). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cdnreq.validate.verdict import unwrapped
from cdnreq.validate.hosts import HostError, normalise_host, overlaps, proof_names, registrable_domain

PROVEN = 2  # the old token proves it by cdnreq's rule
UNPROVEN = 1  # same registrable domain, never proven: kept, re-checked at once


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host an instance may keep."""

    host: str
    guid: str
    registrable: str
    strength: int  # PROVEN or UNPROVEN
    proven_at: float
    active: bool  # listed by the master now
    live: bool  # has an entry on the technical CDN
    reference: str


@dataclass(frozen=True, slots=True)
class Judged:
    candidates: tuple[Candidate, ...]
    refused: tuple[tuple[str, str], ...]  # (host, kind) not kept: "psl-unconfirmed", "not-registrable"


def named_hosts(parameters: Mapping[str, Any] | None) -> list[str]:
    """custom_domain then the aliases, normalised; what cannot be read is left out."""
    if not parameters:
        return []
    parameters = unwrapped(parameters)
    raw = [parameters.get("custom_domain")]
    alias = parameters.get("server-alias")
    if isinstance(alias, str):
        raw.extend(alias.split())
    hosts: list[str] = []
    for value in raw:
        if not isinstance(value, str) or not value:
            continue
        try:
            host = normalise_host(value, wildcard=True)
        except HostError:
            continue
        if host not in hosts:
            hosts.append(host)
    return hosts


def judge(
    proven_domain: str,
    hosts: Iterable[str],
    *,
    guid: str,
    reference: str,
    proven_at: float,
    active: bool,
    live: bool,
    let_through: Iterable[str] = (),
) -> Judged:
    """The hosts of one instance whose custom_domain the old token proved.
    A host the token does not prove is kept (unproven, re-checked) only when
    the old requester let it through (`let_through`: its entry serves it or
    its last run accepted it); one the customer named since then is new,
    proven the way any new host is: the old rule grants it nothing."""
    allowed = set(let_through)
    main = registrable_domain(proven_domain)
    candidates: list[Candidate] = []
    refused: list[tuple[str, str]] = []
    for host in hosts:
        registrable = registrable_domain(host)
        if main is None or registrable is None:
            refused.append((host, "not-registrable"))
        elif registrable != main:
            refused.append((host, "psl-unconfirmed"))
        else:
            strength = PROVEN if proven_domain in proof_names(host, registrable) else UNPROVEN
            if strength == UNPROVEN and host not in allowed:
                continue
            candidates.append(Candidate(host, guid, registrable, strength, proven_at, active, live, reference))
    return Judged(tuple(candidates), tuple(refused))


def _rank(c: Candidate) -> tuple[Any, ...]:
    """Who keeps a contested host: an instance still on the master, then one
    whose entry is live, then one the old token really proved, then the
    earliest proof, then the reference (so the outcome never depends on the
    order the databases were read in)."""
    return (not c.active, not c.live, -c.strength, c.proven_at, c.reference)


def settle(candidates: Iterable[Candidate]) -> tuple[list[Candidate], list[tuple[Candidate, Candidate]]]:
    """Kept candidates, and (loser, winner) pairs: a host overlapping one an
    instance ranked higher keeps is not kept (two owners of one host is the
    old rule's damage, not something to carry over)."""
    by_domain: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_domain.setdefault(c.registrable, []).append(c)
    kept: list[Candidate] = []
    lost: list[tuple[Candidate, Candidate]] = []
    for group in by_domain.values():
        winners: list[Candidate] = []
        for c in sorted(group, key=_rank):
            rival = next((w for w in winners if w.guid != c.guid and overlaps(w.host, c.host)), None)
            if rival is None:
                winners.append(c)
            else:
                lost.append((c, rival))
        kept.extend(winners)
    return kept, lost

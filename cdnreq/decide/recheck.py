"""Re-checking proven hosts, long after they were proven.

Many customers delete the TXT record once validated, so a failing re-check
only warns (the warning is published) until it has failed for the grace
period; then the host is released only when the operator chose so. A DNS
failure (timeout, SERVFAIL) is no answer at all: it neither proves nor fails,
and the host is asked again ten minutes later.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

from cdnreq.model import Lookup
from cdnreq.model import Challenge, HostClaim
from cdnreq.decide.gate import DomainPolicy
from cdnreq.validate.hosts import challenge_names
from cdnreq.validate.verdict import Verdict

FAILING_RECHECK_S = 3600.0  # a failing host is looked at again this often
# a re-check the DNS did not answer is asked again this much later, not at
# every tick: in a DNS outage, 20,000 proven hosts timing out at every tick
# held each tick minutes long, new customers' proofs looked up behind them
UNKNOWN_RECHECK_S = 600.0


def due(claims: Iterable[HostClaim], active: set[str], now: float, policy: DomainPolicy) -> list[HostClaim]:
    """The claims of `active` instances to re-check now. One checked after
    now (under a clock that jumped ahead, then came back) is no proof of a
    recent check: due at once, not an interval after that date."""
    since = now - policy.recheck_interval_s  # the time first: nearly every claim was checked recently
    return [c for c in claims if not since < c.checked_at <= now and c.guid in active]


def by_address(claim: HostClaim, policy: DomainPolicy) -> bool:
    """Checked by where the host points when CDN targets are configured
    (a wildcard has no name of its own to resolve: its challenge is used)."""
    return bool(policy.cdn_targets) and not claim.host.startswith("*.")


def names(claim: HostClaim, policy: DomainPolicy) -> list[str]:
    """The TXT names whose token proves the claim (when not checked by address)."""
    return challenge_names(policy.label, claim.host, claim.registrable)


def verdict(
    claim: HostClaim,
    challenge: Challenge | None,
    txt: Mapping[str, Lookup],
    address: Lookup | None,
    policy: DomainPolicy,
    named: bool = True,
) -> str:
    """"ok", "failing" or "unknown" for one claim. `named`: whether its owner
    names the host this tick; a host it does not name (its listing names
    another domain, or cannot be validated) is not checked against the token
    of the challenge for another domain, which the customer never published
    for it: no evidence, the re-check waits for a tick that names it (one
    listing must not make a proven host fail)."""
    if by_address(claim, policy):
        if address is None or address.outcome == "unknown":
            return "unknown"
        targets = {t.lower().rstrip(".") for t in policy.cdn_targets}
        found = {v.lower().rstrip(".") for v in address.values}
        return "ok" if found & targets else "failing"
    if challenge is None or not named:
        return "unknown"
    outcomes = [txt.get(n) for n in names(claim, policy)]
    if any(o is not None and o.outcome == "found" and challenge.token in o.values for o in outcomes):
        return "ok"
    if any(o is None or o.outcome == "unknown" for o in outcomes):
        return "unknown"
    return "failing"


def named(claim: HostClaim, verdicts: Mapping[str, Verdict]) -> bool:
    """Whether the claim's owner names its host this tick (an owner without
    a verdict this tick is settled, and names all its hosts)."""
    verdict = verdicts.get(claim.guid)
    return verdict is None or claim.host in verdict.hosts


def apply(claim: HostClaim, result: str, now: float, policy: DomainPolicy) -> HostClaim | None:
    """The claim after a re-check; None when it is released."""
    if result == "ok":
        return replace(claim, checked_at=now, failing_since=None)
    if result == "unknown":  # no answer at all: nothing proven nor failing, only asked again later
        return replace(claim, checked_at=_due_in(now, policy, UNKNOWN_RECHECK_S))
    since = claim.failing_since if claim.failing_since is not None and claim.failing_since <= now else now
    if policy.release_on_recheck_failure and now - since >= policy.grace_s:
        return None
    # look again in an hour rather than a day: a restored record clears soon
    return replace(claim, checked_at=_due_in(now, policy, FAILING_RECHECK_S), failing_since=since)


def _due_in(now: float, policy: DomainPolicy, delay_s: float) -> float:
    """The checked_at that makes a claim due again `delay_s` from now (at most the interval)."""
    return now - policy.recheck_interval_s + min(policy.recheck_interval_s, delay_s)

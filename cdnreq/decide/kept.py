"""What a restart keeps of the domain step: each instance's verdict, or its
settled gate, and the rule that trusts them again.

Validating 100,000 instances takes the better part of ten seconds; a
restarted daemon (an upgrade, a crash, `cdnreq once`) need not, when nothing
a decision depends on changed. A stored decision is reused only when all of
these hold:
- the listed parameters have the digest it was made from;
- its stamp is today's: the same rules (validate.version) and the same
  domain policy;
- for a settled gate, the instance's claims are exactly those it was settled
  with (a re-check, a release or a rival's proof changes them; so does a
  restore of an older database).
Otherwise the instance is decided afresh, as a warm daemon would after the
same change. Pure: rows of text in, models out, and back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import orjson

from cdnreq.decide.gate import Gate, HostIndex, Status
from cdnreq.model import Decision, FrozenJson, HostClaim
from cdnreq.validate.quoting import without_userinfo
from cdnreq.validate.verdict import Verdict


def claims_digest(claims: Iterable[HostClaim]) -> str:
    """Every field of every claim, in host order. repr() spells strings,
    floats and None one way for a given Python (whose version is in the
    stamp), and costs a tenth of JSON: 100,000 are checked at a restart."""
    rows = [(c.host, c.guid, c.registrable, c.proven_at, c.checked_at, c.failing_since) for c in claims]
    if len(rows) > 1:
        rows.sort()
    return hashlib.blake2b(repr(rows).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def claims_of(index: HostIndex, guid: str) -> str:
    by_host = index.by_host
    return claims_digest([by_host[h] for h in index.owned(guid)])


# A customer's private key, or its backend's password or query secret, is never written to the
# store (nor to its backups): a decision whose forwarded parameters hold one
# (unwrapped from SlapOS's "_", or kept apart from a dropped unknown key) is kept
# empty, so a restart decides that instance afresh; a refusal's forward is never
# used, and is not kept.
_PRIVATE_KEY = b'"ssl_key":'


def _holds_secret(forward: Mapping[str, Any] | None) -> bool:
    if forward is None:
        return False
    raw = (forward if isinstance(forward, FrozenJson) else FrozenJson(forward)).raw
    if _PRIVATE_KEY in raw:
        return True
    if b"@" not in raw and b"=" not in raw:
        return False
    # each value read as the one URL it may be (not the JSON text as free
    # text, where a URL ends at a quote: a password may hold one), its
    # query's secrets included, as every message masks them
    stack: list[Any] = [forward.value() if isinstance(forward, FrozenJson) else forward]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if without_userinfo(item) != item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def settled_decision(guid: str, param_hash: str, stamp: str, gate: Gate, index: HostIndex) -> Decision:
    if _holds_secret(gate.forward):
        return Decision(guid, param_hash, stamp)  # nothing to trust: decided afresh after a restart
    return Decision(guid, param_hash, stamp, gate=gate_text(gate), claims=claims_of(index, guid))


def verdict_decision(
    guid: str, param_hash: str, stamp: str, verdict: Verdict, next_lookup: float | None = None
) -> Decision:
    if not verdict.ok and verdict.forward is not None:
        verdict = replace(verdict, forward=None, forward_hash=None)
    if _holds_secret(verdict.forward):
        return Decision(guid, param_hash, stamp)
    return Decision(guid, param_hash, stamp, verdict=verdict_text(verdict), next_lookup=next_lookup)


@dataclass
class Trusted:
    """What a restart reuses, keyed by guid with the parameter digest each
    holds for: settled gates, verdicts, and when each pending proof is
    looked up next (as a warm daemon would have)."""

    settled: dict[str, tuple[str, Gate]] = field(default_factory=dict)
    verdicts: dict[str, tuple[str, Verdict]] = field(default_factory=dict)
    next_lookup: dict[str, tuple[str, float]] = field(default_factory=dict)


def trusted(rows: Iterable[Decision], stamp: str, index: HostIndex) -> Trusted:
    """The decisions a restart may reuse; a row that cannot be read is
    skipped (decided afresh), never trusted."""
    kept = Trusted()
    settled, verdicts = kept.settled, kept.verdicts
    for row in rows:
        if row.stamp != stamp:
            continue
        try:
            if row.gate is not None:
                gate = read_gate(row.gate)
                if gate.ok and row.claims == claims_of(index, row.guid) and set(gate.hosts) == set(
                    index.owned(row.guid)
                ):
                    settled[row.guid] = (row.param_hash, gate)
            elif row.verdict is not None:
                verdicts[row.guid] = (row.param_hash, read_verdict(row.verdict))
                if isinstance(row.next_lookup, float):
                    kept.next_lookup[row.guid] = (row.param_hash, row.next_lookup)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return kept


# -- text -----------------------------------------------------------------------------


def _forward_text(forward: Mapping[str, Any] | None) -> str | None:
    if forward is None:
        return None
    frozen = forward if isinstance(forward, FrozenJson) else FrozenJson(forward)
    return frozen.raw.decode("utf-8", "surrogatepass")


def _forward(text: str | None) -> FrozenJson | None:
    return None if text is None else FrozenJson(text.encode("utf-8", "surrogatepass"))


def _dump(value: dict[str, Any]) -> str:
    """ASCII JSON: whatever a customer's text holds (a lone surrogate) is stored."""
    return json.dumps(value, separators=(",", ":"))


def _load(text: str) -> Any:
    """orjson reads 100,000 rows in a fraction of the time; what it refuses
    (an escaped lone surrogate) the standard library reads."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def verdict_text(verdict: Verdict) -> str:
    return _dump({
        "errors": list(verdict.errors), "warnings": list(verdict.warnings),
        "forward": _forward_text(verdict.forward), "custom_domain": verdict.custom_domain,
        "hosts": list(verdict.hosts), "registrable": verdict.registrable, "forward_hash": verdict.forward_hash,
    })  # fmt: skip


def read_verdict(text: str) -> Verdict:
    v = _load(text)
    return Verdict(
        errors=tuple(map(str, v["errors"])), warnings=tuple(map(str, v["warnings"])),
        forward=_forward(v["forward"]), custom_domain=v["custom_domain"], hosts=tuple(map(str, v["hosts"])),
        registrable=v["registrable"], forward_hash=v["forward_hash"],
    )  # fmt: skip


def gate_text(gate: Gate) -> str:
    return _dump({
        "status": gate.status.value, "forward": _forward_text(gate.forward), "forward_hash": gate.forward_hash,
        "hosts": list(gate.hosts), "extras": dict(gate.extras), "error": gate.error,
        "pending": list(gate.pending), "reason": gate.reason,
    })  # fmt: skip


def read_gate(text: str) -> Gate:
    g = _load(text)
    extras = g["extras"]
    if not isinstance(extras, dict):
        raise ValueError("extras: not an object")
    return Gate(
        status=Status(g["status"]), forward=_forward(g["forward"]), forward_hash=g["forward_hash"],
        hosts=tuple(map(str, g["hosts"])), extras=extras, error=g["error"],
        pending=tuple(map(str, g["pending"])), reason=g["reason"],
    )  # fmt: skip

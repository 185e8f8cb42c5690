"""What an import found wrong in the old state, and what was decided.

One home for every kind and its decision: `import-legacy` prints them,
`cdnreq status` lists them from the store, and the README's "Moving from
the cron requester" section documents the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdnreq.validate.quoting import without_userinfo

# kind -> (what was found, the decision); {placeholders} come from the finding
FINDINGS: dict[str, tuple[str, str]] = {
    "host-conflict": (
        "{host} is also held by {winner}",
        "kept by {winner} (still listed, live, proven by its own token, proven first: in that order);"
        " this instance's entry keeps serving it unchanged until its customer's next change, and"
        " cdnreq refuses the host for it",
    ),
    "psl-unconfirmed": (
        "{host} was let through by the old last-two-labels rule; the Public Suffix List puts it"
        " under another registrable domain than custom_domain",
        "not kept: a new proof is required (the customer orders it in its own instance and proves"
        " it); the entry keeps serving it unchanged until the customer's next change",
    ),
    "not-registrable": (
        "{host} is a public suffix or directly under one (Public Suffix List)",
        "not kept: nobody can own all of it; the entry keeps serving it unchanged until the"
        " customer's next change",
    ),
    "alias-unproven": (
        "{host} was never proven by DNS (the old requester checked only custom_domain)",
        "kept with a warning and re-checked at the first tick: until the instance's token is"
        " published for it, the customer is warned (released after [domain].grace_s only with"
        " release_on_recheck_failure)",
    ),
    "changed-domain": (
        "the old token was issued for {old}; the instance names {new}",
        "token dropped: {new} needs a new proof (cdnreq issues a challenge at the first tick)",
    ),
    "token-unusable": (
        "its token {token!r} is not something a TXT record can hold",
        "dropped: a new proof is required (cdnreq issues a challenge at the first tick)",
    ),
    "served-unproven": (
        "its entry serves {host}, which no kept proof covers",
        "not counted as served by it: the entry keeps serving it unchanged until the customer's"
        " next change; the host goes to whoever proves it",
    ),
    "parameters-refused": (
        "cdnreq refuses its parameters: {errors}",
        "its entry keeps running as it is; the customer is told why at the first tick",
    ),
    "state-ignored": (
        "its customer asks for {state}; the old requester requested every entry started",
        "the first tick requests it {state}, as cdnreq does for every customer",
    ),
    "entry-missing": (
        "the old requester requested {title}, but the technical CDN does not host it",
        "requested again at the first tick, under the same title (if the entry exists after all,"
        " the master answers with it: never a second entry)",
    ),
    "gone": (
        "neither the master nor the technical CDN knows it any more",
        "not imported",
    ),
    "not-listed": (
        "its entry is live but the master does not list it",
        "imported as it is; the first tick handles it as gone from the master (retention, under"
        " the removal guard)",
    ),
    "pending-not-listed": (
        "the master does not list it; the old requester saw it at its last run and gave it a token"
        " for {domain}",
        "imported with its token; the first tick handles it as gone from the master if it is still"
        " not listed (a listing that lost it for a moment costs it no new challenge)",
    ),
    "unsafe-title": (
        "its title {title} may be mishandled by the master: {reason}",
        "kept (renaming it would mean a second entry); read-backs may fail until the customer"
        " orders it again",
    ),
    "title-taken": (
        "its title {title} is already used by another instance",
        "not imported",
    ),
    "adopted-over": (
        "the store knew it, never requested (cdnreq ran before the import), while the old"
        " requester's entry {title} serves it",
        "that entry is adopted in place of the stored record (--merge): never a second entry,"
        " and `cdnreq orphans` does not take it for an orphan",
    ),
    "already-known": (
        "the store already knows this instance",
        "kept as the store has it (--merge)",
    ),
    "unmapped-reference": (
        "its reference cannot be turned into an instance_guid with [legacy].reference_style = {style}",
        "not imported",
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    guid: str
    reference: str
    host: str | None
    found: str
    decision: str

    def line(self) -> str:
        who = self.guid or self.reference
        return f"{self.kind}: {who}: {self.found}; {self.decision}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "guid": self.guid, "reference": self.reference,
                "host": self.host, "found": self.found, "decision": self.decision}


# the values that name a host or a domain: the old state kept a customer's as given, a password in it
# (`alice:pw@a.test`) is masked as a message masks it (validate/quoting.py)
_HOSTS = ("host", "domain", "old", "new")


def finding(kind: str, guid: str, reference: str, *, host: str | None = None, **values: Any) -> Finding:
    found, decision = FINDINGS[kind]
    values = {"host": host, **values}
    values.update((k, without_userinfo(v, bare=True)) for k, v in values.items() if k in _HOSTS and isinstance(v, str))
    host = values["host"]
    return Finding(kind, guid, reference, host, found.format(**values), decision.format(**values))


# kinds that describe damage in the old state (the summary's "conflicts")
CONFLICTS = frozenset({"host-conflict", "psl-unconfirmed", "not-registrable", "alias-unproven",
                       "changed-domain", "served-unproven"})

"""One instance's verdict: every check that needs nothing but its parameters.

The schema first, then what a schema cannot say (host names, aliases,
netlocs, ciphers, certificates). The parameters forwarded to the technical
CDN are the customer's own, with only the normalised spellings replaced:
defaults are never filled in. A value that makes a check raise is that
instance's error, never the tick's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cdnreq.model import digest
from cdnreq.validate.ciphers import check_ciphers
from cdnreq.validate.encoding import DEFAULT_MAX_BYTES, encoding_problems
from cdnreq.validate.hosts import HostError, normalise_host, parse_aliases, quote_value, registrable_domain
from cdnreq.validate.netloc import parse_netloc_list
from cdnreq.validate.schema import schema_problems
from cdnreq.validate.tls import check_tls_parameters

MAX_WARNINGS = 20  # a thousand unknown keys must not make a megabyte of warnings

NETLOC_LISTS = (
    "url-netloc-list",
    "https-url-netloc-list",
    "health-check-failover-url-netloc-list",
    "health-check-failover-https-url-netloc-list",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # what to request when the normalised spellings differ from the customer's;
    # None: the parameters as listed (no copy kept of 100,000 parameter sets)
    forward: Mapping[str, Any] | None = None
    custom_domain: str | None = None
    hosts: tuple[str, ...] = ()  # custom_domain first, then the aliases
    registrable: str | None = None
    forward_hash: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(parameters: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_BYTES) -> Verdict:
    try:
        if unencodable := encoding_problems(parameters, max_bytes):  # nothing else sees such values
            return Verdict(errors=tuple(unencodable))
        return _validate(parameters)
    except Exception:  # a checker's bug must not stop the tick, nor pass the instance
        return Verdict(errors=("parameters: could not be checked; please report this entry to the CDN operator",))


def _validate(parameters: Mapping[str, Any]) -> Verdict:
    errors, warnings = schema_problems(parameters)
    if not isinstance(parameters, Mapping):
        return Verdict(errors=tuple(errors))
    bad = {e.split(":", 1)[0] for e in errors}  # parameters the schema already refused
    forward: dict[str, Any] = {}  # only the values whose spelling changes

    custom_domain = registrable = None
    raw_domain = parameters.get("custom_domain")
    if isinstance(raw_domain, str) and raw_domain != "" and "custom_domain" not in bad:
        try:
            custom_domain = normalise_host(raw_domain)
        except HostError as error:
            errors.append(f"custom_domain: {error}")
        else:
            registrable = registrable_domain(custom_domain)
            if registrable is None:
                errors.append(
                    f"custom_domain: {quote_value(custom_domain)} is a public suffix;"
                    " a domain registered under it is needed"
                )
            if custom_domain != raw_domain:
                forward["custom_domain"] = custom_domain

    aliases: list[str] = []
    raw_aliases = parameters.get("server-alias")
    if isinstance(raw_aliases, str) and "server-alias" not in bad:
        if raw_domain not in (None, "") and custom_domain is None:
            pass  # the custom_domain error says it all
        else:
            aliases, alias_errors = parse_aliases(raw_aliases, custom_domain)
            errors.extend(alias_errors)
            if raw_aliases.strip() and " ".join(aliases) != raw_aliases:
                forward["server-alias"] = " ".join(aliases)

    for name in NETLOC_LISTS:
        value = parameters.get(name)
        if isinstance(value, str) and name not in bad:
            netlocs, netloc_errors = parse_netloc_list(value, name)
            errors.extend(netloc_errors)
            if not netloc_errors and value.strip() and " ".join(netlocs) != value:
                forward[name] = " ".join(netlocs)

    ciphers = parameters.get("ciphers")
    if isinstance(ciphers, str) and "ciphers" not in bad:
        normalised, cipher_warnings, cipher_errors = check_ciphers(ciphers)
        warnings.extend(cipher_warnings)
        errors.extend(cipher_errors)
        if not cipher_errors and ciphers.strip() and normalised != ciphers:
            forward["ciphers"] = normalised

    errors.extend(check_tls_parameters({k: v for k, v in parameters.items() if k not in bad}))

    hosts = (custom_domain, *aliases) if custom_domain else ()
    if len(warnings) > MAX_WARNINGS:
        warnings[MAX_WARNINGS:] = [f"... and {len(warnings) - MAX_WARNINGS} more warnings"]
    return Verdict(
        errors=tuple(errors),
        warnings=tuple(warnings),
        forward={**parameters, **forward} if forward else None,
        forward_hash=digest({**parameters, **forward}) if forward else None,
        custom_domain=custom_domain,
        hosts=tuple(hosts),
        registrable=registrable,
    )

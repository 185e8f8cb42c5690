"""One instance's verdict: every check that needs nothing but its parameters
(and the operator's validation policy).

The schema first, then the characters no forwarded value may hold, then what
a schema cannot say (host names, aliases, netlocs, backend addresses,
ciphers, certificates). The parameters forwarded to the technical CDN are the
customer's own, with only the normalised spellings replaced and the unknown
parameters dropped (unless the operator forwards them): defaults are never
filled in, and nothing unchecked goes through. SlapOS's serialised form
``{"_": "<JSON object>"}`` is unwrapped and checked as if sent directly; the
unwrapped parameters are what is forwarded, never the wrapper. A value that
makes a check raise is that instance's error, never the tick's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from cdnreq.model import FrozenJson
from cdnreq.validate.backend import backend_problems
from cdnreq.validate.ciphers import check_ciphers
from cdnreq.validate.encoding import encoding_problems
from cdnreq.validate.hosts import HostError, normalise_host, parse_aliases, quote_value, registrable_domain
from cdnreq.validate.netloc import parse_netloc_list
from cdnreq.validate.policy import ValidationPolicy
from cdnreq.validate.schema import KNOWN_PARAMETERS, can_name_a_host, schema_problems, show_name, show_value
from cdnreq.validate.text import text_problems
from cdnreq.validate.tls import check_tls_parameters, verify_without_ca

MAX_WARNINGS = 20  # a thousand unknown keys must not make a megabyte of warnings
# nor of errors: 50 KB of keys named like hosts made 3,000 errors, 320 KB
# published twice to the customer and kept twice in its record
MAX_ERRORS = 20

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
    # what to request when it differs from the listed parameters (normalised
    # spellings, unknown keys dropped, "_" unwrapped), kept as compact text;
    # None: the parameters as listed (no copy kept of 100,000 parameter sets)
    forward: Mapping[str, Any] | None = None
    custom_domain: str | None = None
    hosts: tuple[str, ...] = ()  # custom_domain first, then the aliases
    registrable: str | None = None
    forward_hash: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


DEFAULT_POLICY = ValidationPolicy()
WRAPPER = "_"  # SlapOS's serialised parameters: {"_": "<JSON object>"}


def validate(parameters: Mapping[str, Any], policy: ValidationPolicy = DEFAULT_POLICY) -> Verdict:
    try:
        if isinstance(parameters, FrozenJson):  # a large entry kept as text (cdnreq/listing.py)
            parameters = parameters.value()
        if unencodable := encoding_problems(parameters, policy.max_parameters_bytes):
            return Verdict(errors=tuple(unencodable))  # nothing else sees such values
        if isinstance(parameters, Mapping) and WRAPPER in parameters:
            return _wrapped(parameters, policy)
        return _validate(parameters, policy)
    except Exception:  # a checker's bug must not stop the tick, nor pass the instance
        return Verdict(errors=("parameters: could not be checked; please report this entry to the CDN operator",))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unwrap(parameters: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The parameters serialised in "_", or why they cannot be used."""
    others = sorted((show_name(k) for k in parameters if k != WRAPPER), key=str)
    if others:
        named = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        return None, f"{WRAPPER}: SlapOS's serialised parameters must come alone, not next to {named}"
    raw = parameters[WRAPPER]
    if not isinstance(raw, str):
        return None, f"{WRAPPER}: must be a string holding a JSON object (got {show_value(raw)})"
    try:  # not orjson: it turns integers past 64 bits into floats
        inner = json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:  # where, not what: the text may hold a secret (an ssl_key, a password)
        return None, f"{WRAPPER}: is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except ValueError as exc:
        return None, f"{WRAPPER}: is not valid JSON ({exc})"
    except RecursionError:
        return None, f"{WRAPPER}: is not valid JSON (nested too deeply)"
    if not isinstance(inner, dict):
        return None, f"{WRAPPER}: must hold a JSON object (got {show_value(inner)})"
    if WRAPPER in inner:
        return None, f'{WRAPPER}: must not hold another "{WRAPPER}"'
    return inner, None


def unwrapped(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters themselves, out of SlapOS's "_" when serialised there
    (for a reader that only looks, e.g. the legacy import; {} if unusable)."""
    if WRAPPER not in parameters:
        return parameters
    inner, _ = _unwrap(parameters)
    return inner or {}


def _wrapped(parameters: Mapping[str, Any], policy: ValidationPolicy) -> Verdict:
    inner, error = _unwrap(parameters)
    if inner is None:
        return Verdict(errors=(error or WRAPPER,))
    if unencodable := encoding_problems(inner, policy.max_parameters_bytes):
        return Verdict(errors=tuple(unencodable))
    verdict = _validate(inner, policy)
    if verdict.forward is None:  # what was checked is forwarded, never the wrapper
        verdict = replace(verdict, **_forwarding(inner))
    return verdict


def _forwarding(forwarded: Mapping[str, Any]) -> dict[str, Any]:
    """The forward and forward_hash fields of a verdict for these parameters."""
    frozen = FrozenJson(forwarded)
    return {"forward": frozen, "forward_hash": hashlib.sha256(frozen.raw).hexdigest()}


def _host_names(
    parameters: Mapping[str, Any], bad: set[str], errors: list[str], forward: dict[str, Any]
) -> tuple[str | None, str | None, list[str]]:
    """custom_domain and server-alias normalised: (custom_domain, registrable, aliases)."""
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
    return custom_domain, registrable, aliases


def _cap(messages: list[str], limit: int, what: str) -> None:
    if len(messages) > limit:
        messages[limit:] = [f"... and {len(messages) - limit} more {what}"]


def _validate(parameters: Mapping[str, Any], policy: ValidationPolicy) -> Verdict:
    errors, warnings = schema_problems(parameters, policy.forward_unknown)
    if not isinstance(parameters, Mapping):
        return Verdict(errors=tuple(errors))
    unknown = [k for k in parameters if not (isinstance(k, str) and k in KNOWN_PARAMETERS)]
    passed = [k for k in unknown if policy.forward_unknown and isinstance(k, str) and not can_name_a_host(k)]
    bad = {e.split(":", 1)[0] for e in errors}  # parameters the schema already refused
    text_errors = text_problems(parameters, bad, passed)
    errors.extend(text_errors)
    bad.update(e.split(":", 1)[0] for e in text_errors)
    forward: dict[str, Any] = {}  # only the values whose spelling changes
    netloc_entries: dict[str, list[str]] = {}  # normalised, for the backend check

    custom_domain, registrable, aliases = _host_names(parameters, bad, errors, forward)

    for name in NETLOC_LISTS:
        value = parameters.get(name)
        if isinstance(value, str) and name not in bad:
            netlocs, netloc_errors = parse_netloc_list(value, name)
            errors.extend(netloc_errors)
            netloc_entries[name] = netlocs
            if not netloc_errors and value.strip() and " ".join(netlocs) != value:
                forward[name] = " ".join(netlocs)

    ciphers = parameters.get("ciphers")
    if isinstance(ciphers, str) and "ciphers" not in bad:
        normalised, cipher_warnings, cipher_errors = check_ciphers(ciphers)
        warnings.extend(cipher_warnings)
        errors.extend(cipher_errors)
        if not cipher_errors and ciphers.strip() and normalised != ciphers:
            forward["ciphers"] = normalised

    errors.extend(backend_problems(parameters, netloc_entries, policy, bad))
    errors.extend(check_tls_parameters({k: v for k, v in parameters.items() if k not in bad}))
    errors.extend(verify_without_ca(parameters, bad))

    hosts = (custom_domain, *aliases) if custom_domain else ()
    _cap(warnings, MAX_WARNINGS, "warnings")
    _cap(errors, MAX_ERRORS, "errors")
    dropped = set(unknown).difference(passed)  # never forwarded unchecked
    forwarding: dict[str, Any] = {}
    if forward or dropped:
        forwarding = _forwarding({**{k: v for k, v in parameters.items() if k not in dropped}, **forward})
    return Verdict(
        errors=tuple(errors),
        warnings=tuple(warnings),
        **forwarding,
        custom_domain=custom_domain,
        hosts=tuple(hosts),
        registrable=registrable,
    )

"""Backend addresses a customer may not point the CDN at.

The CDN's front-ends connect to whatever backend a customer names. Pointed at
127.0.0.1, a private network or the cloud metadata address (169.254.169.254),
they would fetch for the customer what only the CDN's own hosts can reach.
So the hosts of ``url``, ``https-url``, ``health-check-failover-url``,
``health-check-failover-https-url`` and of every ``*-netloc-list`` entry are
checked against ``[validation].backend_deny``, unless in
``[validation].backend_allow``.

Hosts are read the way URL parsers read them, so no spelling slips through:
user information (``a@b``) dropped, a backslash taken as the end of the host
too (browsers do), percent-escapes and full-width characters decoded, one
trailing dot ignored; characters IDNA maps to nothing (soft hyphen,
zero-width space, variation selectors...) dropped as UTS #46 and Python's
``idna`` codec drop them, each reading checked; numeric IPv4 in any form ``inet_aton`` and browsers
accept (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``); IPv6 with
its zone id dropped, and the IPv4 address inside IPv4-mapped, -compatible,
NAT64 and 6to4 addresses checked too. ``localhost`` and the names under it
count as 127.0.0.1. A URL is also read as browsers read special schemes
(slashes and backslashes after ``http:`` skipped: ``http:///127.0.0.1/``);
a URL without a host, a bare IPv6 address outside brackets, and a host that
holds a character no host may hold once percent-decoded are refused. Other names are not resolved (no DNS here): a customer
could still name a host whose DNS points inside; the technical CDN's own
network rules are the defence for that.

Pure: parsing and comparisons only, never a connection.
"""

from __future__ import annotations

import ipaddress
import re
import stringprep
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import idna

from cdnreq.validate.hosts import quote_value
from cdnreq.validate.policy import ValidationPolicy

__all__ = ["URL_FIELDS", "Address", "backend_problems", "host_addresses"]

URL_FIELDS = ("url", "https-url", "health-check-failover-url", "health-check-failover-https-url")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_NUMERIC = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*", re.ASCII)
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")


class NotAnAddress(ValueError):
    """A host that reads as a number but is no IPv4 address, or no host at all."""

    def __init__(self, host: str, reason: str = "reads as a number but is not an IPv4 address") -> None:
        super().__init__(host)
        self.reason = reason


def _part(text: str) -> int:
    if text[:2] in ("0x", "0X"):
        return int(text[2:] or "0", 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text[1:], 8)
    return int(text, 10)


def _ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host name ending in a number stands for (as
    browsers and inet_aton read it), None for a name."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _NUMERIC.fullmatch(parts[-1]):
        return None
    try:
        if len(parts) > 4 or any(not _NUMERIC.fullmatch(p) for p in parts):
            raise ValueError
        numbers = [_part(p) for p in parts]
        if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
            raise ValueError
    except ValueError:
        raise NotAnAddress(host) from None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _readings(host: str) -> tuple[str, ...]:
    """A non-ASCII host as each kind of parser reads it: NFKC (with the
    ideographic dots), nameprep (Python's ``idna`` codec, which
    ``getaddrinfo`` callers use) and UTS #46 (browsers)."""
    dotted = host.translate(_DOTS)
    readings = [
        unicodedata.normalize("NFKC", dotted),
        unicodedata.normalize("NFKC", "".join(c for c in dotted if not stringprep.in_table_b1(c))),
    ]
    try:
        readings.append(idna.uts46_remap(dotted, std3_rules=False).translate(_DOTS))
    except (idna.IDNAError, UnicodeError, ValueError):
        pass  # a character UTS #46 refuses: browsers refuse the whole URL
    return tuple(dict.fromkeys(readings))


def _addresses_of(host: str) -> tuple[Address, ...]:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            v6 = ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            return ()  # not an address; the URL pattern and the CDN refuse it
        inner = _embedded(v6)
        return (v6,) if inner is None else (v6, inner)
    name = host[:-1] if host.endswith(".") else host
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return (_LOOPBACK,)
    v4 = _ipv4(name) if name else None
    return () if v4 is None else (v4,)


def host_addresses(host: str) -> tuple[Address, ...]:
    """The addresses a URL or netloc host stands for: () for a name that
    would need DNS. Raises NotAnAddress for a number that is no address,
    or a host holding a space or control character once decoded."""
    if "%" in host:
        bracketed = host.startswith("[")
        host = unquote(host, errors="replace")
        if _NOT_IN_A_HOST.search(host[1:-1] if bracketed else host) or (
            not bracketed and (":" in host or "%" in host)  # "%" too: a second decoding
        ):
            raise NotAnAddress(host, "holds a character no host may hold once percent-decoded")
    if host.isascii():
        return _addresses_of(host)
    found: dict[Address, None] = {}
    for reading in _readings(host):
        found.update(dict.fromkeys(_addresses_of(reading)))
    return tuple(found)


_AUTHORITY = re.compile(r"[^/?#]*")
_BROWSER_AUTHORITY = re.compile(r"[^/\\?#]*")
# Characters no host holds (WHATWG's forbidden host code points, C1 controls).
_NOT_IN_A_HOST = re.compile(r"[\s\x00-\x1f\x7f-\x9f/\\\\@?#\[\]<>^|]")


def _host_of(authority: str) -> str:
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        return hostport.partition("]")[0] + "]"
    if hostport.count(":") > 1:
        raise NotAnAddress(hostport, "is a bare IPv6 address; put it in brackets")
    return hostport.partition(":")[0]


def _authority_hosts(url: str) -> tuple[str, ...]:
    """The host of a URL as RFC 3986 reads it and, when they differ, as
    browsers read it (slashes and backslashes after the scheme skipped, a
    backslash ending the authority too): both are checked."""
    rest = url.partition("://")[2]
    host = _host_of(_AUTHORITY.match(rest).group())  # type: ignore[union-attr]
    if host == "":
        raise NotAnAddress(host, "is missing: the URL has no host")
    other = _host_of(_BROWSER_AUTHORITY.match(rest.lstrip("/\\")).group())  # type: ignore[union-attr]
    return (host,) if other in (host, "") else (host, other)


def _refused(addresses: Iterable[Address], policy: ValidationPolicy) -> Address | None:
    for address in addresses:
        if any(address in net for net in policy.backend_allow if net.version == address.version):
            continue
        if any(address in net for net in policy.backend_deny if net.version == address.version):
            return address
    return None


def _problem(name: str, host: str, given: str, policy: ValidationPolicy) -> str | None:
    try:
        addresses = host_addresses(host)
    except NotAnAddress as error:
        return f"{name}: host {quote_value(host)} ({quote_value(given)}) {error.reason}"
    refused = _refused(addresses, policy)
    if refused is None:
        return None
    return (
        f"{name}: backend address {refused} ({quote_value(given)}) is not allowed"
        " ([validation].backend_deny)"
    )


def backend_problems(
    parameters: Mapping[str, Any],
    netlocs: Mapping[str, list[str]],
    policy: ValidationPolicy,
    skip: set[str],
) -> list[str]:
    """One error per backend URL, and per netloc entry, that points at a
    refused address. ``netlocs`` holds the normalised ``*-netloc-list``
    entries; fields in ``skip`` are already refused."""
    errors: list[str] = []
    for name in URL_FIELDS:
        value = parameters.get(name)
        if not isinstance(value, str) or name in skip:
            continue
        try:
            hosts = _authority_hosts(value)
        except NotAnAddress as error:
            errors.append(f"{name}: host {quote_value(str(error))} ({quote_value(value)}) {error.reason}")
            continue
        for host in hosts:
            problem = _problem(name, host, value, policy)
            if problem is not None:
                errors.append(problem)
                break
    for name, entries in netlocs.items():
        for entry in entries:
            problem = _problem(name, entry.rpartition(":")[0], entry, policy)
            if problem is not None:
                errors.append(problem)
    return errors

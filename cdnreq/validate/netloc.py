"""The ``*-netloc-list`` parameters: space-separated ``host:port`` entries.

``url-netloc-list``, ``https-url-netloc-list``,
``health-check-failover-url-netloc-list`` and
``health-check-failover-https-url-netloc-list`` each list the backend
addresses to use instead of the one in the matching URL. An entry is
``host:port`` where host is a host name (the rules of
:func:`cdnreq.validate.hosts.normalise_host`), a dotted-quad IPv4 address, or
an IPv6 address in brackets (``[2001:db8::1]:443``); the port is decimal,
1 to 65535, and required.

Pure: no I/O, never raises; one bad entry is one error, the others are still
checked.
"""

from __future__ import annotations

import ipaddress
import re

from .hosts import HostError, normalise_host, quote_value

__all__ = ["MAX_NETLOCS", "parse_netloc_list"]

#: More entries than this is refused outright.
MAX_NETLOCS = 100

_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_BRACKETED = re.compile(r"\[([^\[\]]*)\](?::(.*))?", re.ASCII | re.DOTALL)
# A last label that makes a name read as a number (IPv4), as URL parsers do.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]*)", re.ASCII)


class _EntryError(Exception):
    """Why one entry is refused (the text after the quoted entry)."""


def _port(entry: str, text: str | None) -> int:
    if text is None:
        if entry.startswith("["):
            raise _EntryError("has no port; write [address]:port, as in [2001:db8::1]:443")
        raise _EntryError("has no port; write host:port, as in example.com:443")
    if text == "":
        raise _EntryError("has an empty port; the port must be a number from 1 to 65535")
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise _EntryError(
            f"has port {quote_value(text)}; the port must be a number from 1 to 65535"
        )
    return int(text)


def _ipv6(address: str) -> str:
    if "%" in address:
        raise _EntryError("has an IPv6 zone index (%...), which is not allowed")
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise _EntryError(
            f"has {quote_value(address)} in brackets, which is not an IPv6 address"
        ) from None
    return f"[{parsed.compressed}]"


def _host(host: str) -> str:
    if host == "":
        raise _EntryError("has no host before the port")
    if ":" in host:
        raise _EntryError("looks like an IPv6 address; put it in brackets, as in [2001:db8::1]:443")
    last = host[:-1] if host.endswith(".") else host
    last = last.rsplit(".", 1)[-1]
    if last.isascii() and _NUMERIC_LABEL.fullmatch(last):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise _EntryError(
                f"has {quote_value(host)}, which is neither a host name nor a dotted-quad IPv4 address"
            ) from None
    try:
        return normalise_host(host)
    except HostError as exc:
        raise _EntryError(f"has an invalid host: {exc}") from None


def _netloc(entry: str) -> str:
    if "://" in entry:
        raise _EntryError("contains a URL scheme; write only host:port")
    if "/" in entry:
        raise _EntryError("contains a path; write only host:port")
    if "@" in entry:
        raise _EntryError("contains user information; write only host:port")
    if entry.startswith("["):
        match = _BRACKETED.fullmatch(entry)
        if match is None:
            raise _EntryError(
                "is not a bracketed IPv6 address followed by a port, as in [2001:db8::1]:443"
            )
        host = _ipv6(match.group(1))
        port = _port(entry, match.group(2))
        return f"{host}:{port}"
    if "[" in entry or "]" in entry:
        raise _EntryError("has misplaced brackets; write [address]:port, as in [2001:db8::1]:443")
    if ":" not in entry:
        _port(entry, None)  # raises: no port
    host_text, _, port_text = entry.rpartition(":")
    if ":" in host_text:
        raise _EntryError("looks like an IPv6 address; put it in brackets, as in [2001:db8::1]:443")
    port = _port(entry, port_text)
    host = _host(host_text)
    return f"{host}:{port}"


def parse_netloc_list(raw: str, parameter: str) -> tuple[list[str], list[str]]:
    """Check a ``*-netloc-list`` value.

    Returns ``(netlocs, errors)``: the valid entries normalised (host name in
    lower-case A-label form, IPv4 as dotted quad, IPv6 compressed in
    brackets, port without leading zeros), duplicates dropped keeping the
    first position; and one error per bad entry, naming ``parameter`` and the
    entry. An empty or whitespace-only value gives ``([], [])``. Never raises.
    """
    name = parameter if isinstance(parameter, str) else str(parameter)
    if raw is None:
        return [], []
    if not isinstance(raw, str):
        return [], [f"{name}: must be a string"]
    # Bounded work whatever the size: at most MAX_NETLOCS + 1 pieces.
    entries = raw.split(maxsplit=MAX_NETLOCS)
    if len(entries) > MAX_NETLOCS:
        return [], [f"{name}: more than {MAX_NETLOCS} entries given; at most {MAX_NETLOCS} are allowed"]

    netlocs: list[str] = []
    errors: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        try:
            netloc = _netloc(entry)
        except _EntryError as exc:
            error = f"{name}: {quote_value(entry, bare=True)} {exc}"
        except Exception:  # pragma: no cover - defensive: this function never raises
            error = f"{name}: {quote_value(entry, bare=True)} could not be read as host:port"
        else:
            if netloc not in seen:
                seen.add(netloc)
                netlocs.append(netloc)
            continue
        if error not in errors:
            errors.append(error)
    return netlocs, errors

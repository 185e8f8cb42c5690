"""Name-server addresses as configured: checked without any DNS library, so
the configuration can be read where no resolver is loaded."""

from __future__ import annotations

import ipaddress

__all__ = ["parse_nameserver"]


def parse_nameserver(value: str) -> str:
    """``ip``, ``ip:port`` or ``[v6]:port`` -> c-ares' ``ip:port`` / ``[v6]:port``.

    Raises ValueError naming the value. Host names are refused: resolving
    them would need a resolver.
    """
    if not isinstance(value, str):
        raise ValueError(f"bad nameserver {value!r}: not a string")
    text = value.strip()
    port_text = "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {value!r}: expected ip, ip:port or [v6]:port")
        if rest:
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad nameserver {value!r}: {host!r} is not an IP address") from None
    if text.startswith("[") and ip.version != 6:
        raise ValueError(f"bad nameserver {value!r}: brackets are for IPv6 addresses")
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"bad nameserver {value!r}: bad port {port_text!r}")
    port = int(port_text)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"

"""What the operator decides about validation ([validation] in the configuration).

A frozen, comparable value: it travels inside the domain policy, so a reload
that changes it makes every cached verdict and settled gate be decided again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from cdnreq.validate.encoding import DEFAULT_MAX_BYTES

__all__ = ["DEFAULT_BACKEND_DENY", "Network", "ValidationPolicy", "networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Backend addresses refused by default: this host, link-local (cloud
#: metadata at 169.254.169.254), private and shared ranges, multicast,
#: reserved and broadcast. Nothing the CDN should be pointed at by a customer.
DEFAULT_BACKEND_DENY: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
)


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDR texts as networks, in one order whatever the configuration's (a
    list reordered or repeated is the same policy: it must not decide every
    instance again); raises ValueError naming the bad one."""
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as error:
            raise ValueError(f"{text!r} is not a network in CIDR form ({error})") from None
    return tuple(sorted(set(out), key=lambda net: (net.version, int(net.network_address), net.prefixlen)))


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    #: forward unknown parameters (host-bearing names are refused whatever this says)
    forward_unknown: bool = False
    max_parameters_bytes: int = DEFAULT_MAX_BYTES  # all the parameters of one instance, as compact JSON
    backend_deny: tuple[Network, ...] = networks(DEFAULT_BACKEND_DENY)
    backend_allow: tuple[Network, ...] = ()

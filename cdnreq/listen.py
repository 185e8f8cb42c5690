"""The endpoint's listen address: `[daemon].listen` parsed, and whether what
it names must require a bearer token.

Pure (no socket opened here): the configuration validates the address with
it; the preflight decides with it whether the token is required.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import NamedTuple

from pydantic_core import PydanticCustomError

# Linux: sizeof(sockaddr_un.sun_path) is 108, one byte of which is the NUL.
_UNIX_PATH_MAX = 107


class TcpListen(NamedTuple):
    host: str  # an IPv6 address without its brackets
    port: int


def parse_listen(value: str) -> TcpListen | Path:
    """host:port, [v6]:port or an absolute unix socket path; PydanticCustomError
    (what a field validator raises) names the problem."""
    if value.startswith("/"):
        if "\0" in value:
            raise PydanticCustomError("listen", "unix socket path contains a NUL byte")
        if len(os.fsencode(value)) > _UNIX_PATH_MAX:
            raise PydanticCustomError(
                "listen", "unix socket path longer than {max} bytes", {"max": _UNIX_PATH_MAX}
            )
        return Path(value)
    usage = "must be host:port, [v6]:port or an absolute unix socket path"
    host, sep, port_s = value.rpartition(":")
    if not sep:
        if "/" in value:
            raise PydanticCustomError("listen", "unix socket path must be absolute")
        raise PydanticCustomError("listen", usage)
    if host.startswith("["):
        if not host.endswith("]"):
            raise PydanticCustomError("listen", usage)
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise PydanticCustomError("listen", "not an IPv6 address between the brackets")
    elif ":" in host:
        raise PydanticCustomError("listen", "an IPv6 address needs brackets: [v6]:port")
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
        raise PydanticCustomError("listen", "missing or invalid host; " + usage)
    if not re.fullmatch(r"[0-9]{1,5}", port_s) or int(port_s) > 65535:
        raise PydanticCustomError("listen", "port must be 0..65535")
    return TcpListen(host, int(port_s))


def needs_token(listen: TcpListen | Path) -> bool:
    """Whether a listener must require a bearer token: not for a unix socket
    (file permissions guard it) nor a loopback host (127.0.0.0/8, ::1,
    localhost); yes for anything else, wildcard addresses included."""
    if isinstance(listen, Path):
        return False
    host = listen[0].strip().rstrip(".").lower()
    if host == "localhost":
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a name other than localhost may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_loopback

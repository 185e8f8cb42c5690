"""Webhook deliveries: what to send, how to sign it, and when to try again.

Each change in a consumer's scope is delivered at least once, in id order
for each instance (one delivery in flight per instance), retried with
exponential backoff and jitter until `max_retry_hours` after the first
attempt, then dead-lettered. Signatures follow the Standard Webhooks
specification: `webhook-id`, `webhook-timestamp` and `webhook-signature:
v1,<base64 of HMAC-SHA256 over "id.timestamp.body">`. Pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

FIRST_RETRY_S = 1.0
LONGEST_RETRY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One change due to one consumer, as the outbox holds it."""

    change_id: int
    instance_guid: str
    attempts: int
    first_at: float | None
    at: float | None  # the change's time; None: pruned before it could be delivered
    kind: str | None
    payload: str | None  # its JSON
    title: str | None = None  # the customer's (cdnreq.decide.names)


@dataclass(frozen=True, slots=True)
class Retry:
    """What a failed attempt leaves: when to try again, or dead (next_at None)."""

    attempts: int
    first_at: float
    next_at: float | None
    error: str


def message_id(change_id: int) -> str:
    """The delivery's id: the same at every retry, so a receiver can drop a duplicate."""
    return f"cdnreq_{change_id}"


def body(delivery: Delivery) -> bytes:
    """The JSON body: the Standard Webhooks envelope (type, timestamp, data) around the change."""
    assert delivery.at is not None and delivery.kind is not None and delivery.payload is not None
    envelope = {
        "type": f"cdnreq.{delivery.kind}",
        "timestamp": datetime.fromtimestamp(delivery.at, timezone.utc).isoformat(timespec="milliseconds"),
        "data": {"id": delivery.change_id, "at": delivery.at, "instance_guid": delivery.instance_guid,
                 "customer_title": delivery.title, "kind": delivery.kind, "payload": json.loads(delivery.payload)},
    }
    try:
        return json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a master's answer): escaped, or the outbox would stop at it
        return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode("ascii")


def signed_headers(key: bytes, change_id: int, timestamp: int, data: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for `data`, sent at `timestamp` (Unix seconds)."""
    msg_id = message_id(change_id)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + data, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode("ascii")}


def after_failure(delivery: Delivery, error: str, now: float, max_retry_s: float,
                  rng: random.Random | None = None) -> Retry:
    """The next attempt's time (FIRST_RETRY_S doubling up to LONGEST_RETRY_S,
    each drawn between half and all of it so retries of many deliveries do not
    come in step), or dead once `max_retry_s` passed since the first attempt."""
    attempts = delivery.attempts + 1
    first = delivery.first_at if delivery.first_at is not None else now
    delay = min(LONGEST_RETRY_S, FIRST_RETRY_S * 2 ** (attempts - 1)) * (rng or random).uniform(0.5, 1.0)
    if now + delay - first > max_retry_s:
        return Retry(attempts, first, None, error)
    return Retry(attempts, first, now + delay, error)


def allowed_address(address: str, allow: Iterable[str]) -> bool:
    """Whether a webhook may be sent to `address`: a public (global) address,
    or one inside a network of `[webhooks].allow_networks`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in ipaddress.ip_network(n, strict=False) for n in allow):
        return True
    inner = embedded_ipv4(ip)
    if inner is not None:  # ::127.0.0.1, 64:ff9b::a00:1, 2002:7f00:1::: "global" forms of a private address
        return allowed_address(str(inner), allow)
    return ip.is_global and not ip.is_multicast


# IPv6 networks whose addresses carry an IPv4 one in their last 32 bits:
# IPv4-compatible (deprecated, still routed by some stacks) and NAT64's
NAT64_OR_COMPATIBLE = tuple(ipaddress.ip_network(n) for n in ("::/96", "64:ff9b::/96", "64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (mapped, 6to4, NAT64, compatible), if any.
    Teredo (2001::/32) is not global: refused without looking inside."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None or ip.sixtofour is not None:
        return ip.ipv4_mapped or ip.sixtofour
    if any(ip in net for net in NAT64_OR_COMPATIBLE) and int(ip) > 0xFFFF:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def shown_target(url: str) -> str:
    """The URL as /status and logs show it: scheme, host and port (its path may hold a token)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def receipt(status: int) -> str | None:
    """None when the consumer took the delivery (2xx), else the error to record."""
    return None if 200 <= status < 300 else f"HTTP {status}"

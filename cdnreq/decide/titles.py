"""Titles of technical CDN entries.

A title is the only link between a customer's instance and its technical
entry, so it must be a pure function of the customer's instance_guid: stable
across restarts, unique per customer instance, at most the master's 200
characters, and safe for slapproxy, which builds guids as
`title___requester___1` and so breaks on a title holding `___` or ending in
`_`.
"""

from __future__ import annotations

import hashlib
import re

from cdnreq.model import Title

MAX_TITLE = 200
HASH_CHARS = 12
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9.-]+")


_HASHED = re.compile(r"-[0-9a-f]{%d}$" % HASH_CHARS)


def is_safe(title: str) -> bool:
    """Within the master's limit and readable back by slapproxy."""
    return (
        len(title) <= MAX_TITLE
        and _PLAIN.fullmatch(title) is not None
        and "__" not in title
        and not title.endswith("_")
    )


def is_plain(title: str) -> bool:
    """Usable as it is; a title shaped like a hashed one never is, so a plain
    guid cannot take the title of another guid's slug."""
    return is_safe(title) and _HASHED.search(title) is None


def technical_title(prefix: str, instance_guid: str) -> Title:
    """`prefix + guid` when plain, else a readable slug of it plus a hash.

    The hash covers the raw guid, so two guids that slug alike still differ.
    """
    plain = prefix + instance_guid
    if is_plain(plain):
        return Title(plain)
    tag = hashlib.sha256(instance_guid.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    slug = _UNSAFE_RUN.sub("-", instance_guid).strip("-.") or "instance"
    head = _UNSAFE_RUN.sub("-", prefix).strip("-.")[: MAX_TITLE // 2].rstrip("-.")
    room = MAX_TITLE - len(tag) - 1 - (len(head) + 1 if head else 0)
    slug = slug[:room].rstrip("-.")
    parts = [p for p in (head, slug, tag) if p]
    return Title("-".join(parts))

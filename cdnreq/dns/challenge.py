"""Challenge tokens: what a customer publishes in DNS to prove a domain.

A token is an HMAC of the instance_guid, the custom_domain and a random salt,
keyed by a secret only cdnreq knows: it cannot be guessed from public data,
one instance's token proves nothing for another, and a changed custom_domain
gets a new one (and one changed back, the one it had: the salt is the
instance's, kept across its domains; a token the secret does not give, the
cron requester's or one made under a replaced secret, is carried by the salt:
see reissue). Tokens are stored, so they stay stable across ticks and
restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from cdnreq.model import Challenge, InstanceGuid

SECRET_BYTES = 32
# a salt that carries a token no HMAC of the secret gives (the cron
# requester's, imported; one made under a secret since replaced), with its domain
_KEPT = "kept:"


class SecretError(Exception):
    """The domain secret file cannot be read or created."""


def load_secret(path: Path) -> bytes:
    """Read the secret, creating it (mode 0600) on first use, and its
    directory (mode 0700) when missing: on SQLite the store's open makes it,
    on PostgreSQL nothing else does."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise SecretError(f"cannot create the domain secret {path}: {error.strerror}") from None
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(SECRET_BYTES) + "\n")
    return read_secret(path)


def read_secret(path: Path) -> bytes:
    """Read the secret, which must exist (`cdnreq plan` creates nothing)."""
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise SecretError(f"cannot read the domain secret {path}: {error.strerror}") from None
    if len(secret) < 16:
        raise SecretError(f"the domain secret {path} is too short (at least 16 bytes)")
    return secret


def token(secret: bytes, guid: str, domain: str, salt: str) -> str:
    message = "\n".join((guid, domain, salt)).encode("utf-8", "surrogatepass")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return "cdnreq-" + base64.b32encode(digest[:20]).decode("ascii").lower()


def issue(secret: bytes, guid: InstanceGuid, domain: str, now: float, salt: str | None = None) -> Challenge:
    """A challenge for `domain`. `salt`: the instance's current challenge's,
    when it has one: a domain it comes back to gets the very token it was
    given for it (a master that names another domain for one listing must
    not leave a proven customer with a token its DNS does not hold); a new
    salt only for an instance without a challenge (new, or whose challenge
    was dropped with its claims)."""
    salt = salt or secrets.token_hex(16)
    return Challenge(guid, domain, salt, token(secret, guid, domain, salt), now)


def _kept(salt: str) -> tuple[str, str] | None:
    """The (domain, token) a salt carries, if any."""
    if not salt.startswith(_KEPT):
        return None
    try:
        _, domain, kept = json.loads(salt[len(_KEPT):])
    except (ValueError, TypeError):
        return None
    return (domain, kept) if isinstance(domain, str) and isinstance(kept, str) else None


def reissue(secret: bytes, guid: InstanceGuid, domain: str, now: float, current: Challenge | None) -> Challenge:
    """A challenge for `domain`, for an instance whose challenge is `current`
    (None: it has none). The instance's salt is kept (see issue); when its
    current token is not one the secret gives (imported from the cron
    requester, or made under a secret since replaced), the salt carries it,
    so the domain it belongs to, come back to, gets it again: a master that
    names another domain for one listing must not leave such a customer
    with a token its DNS does not hold either."""
    if current is None:
        return issue(secret, guid, domain, now)
    salt = current.salt
    if _kept(salt) is None and current.token != token(secret, guid, current.domain, salt):
        salt = _KEPT + json.dumps([salt, current.domain, current.token])
    kept = _kept(salt)
    if kept is not None and kept[0] == domain:
        return Challenge(guid, domain, salt, kept[1], now)
    return issue(secret, guid, domain, now, salt)

"""The change feed's consumers' credentials, read from their files.

A consumer's token opens GET /changes for it alone, within its scope; its
webhook secret signs what cdnreq POSTs to it (the Standard Webhooks scheme:
`whsec_` and the base64 of 24 to 64 random bytes). Read at start and at
each reload, so a reseller is added without a restart; a file that cannot
be used refuses the configuration with the key and the reason, as every
other check does (cdnreq.preflight).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field

from cdnreq.config import Config, ConsumerConfig
from cdnreq.fsaccess import open_mode, read_file

TOKEN_MIN_CHARS = 16
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)


@dataclass(frozen=True)
class Consumers:
    """Who is who: tokens to consumers, and each webhook consumer's signing key."""

    tokens: tuple[tuple[bytes, ConsumerConfig], ...] = ()
    keys: dict[str, bytes] = field(default_factory=dict)

    def of_token(self, given: bytes) -> ConsumerConfig | None:
        """The consumer whose token this is; every token is compared, in constant time."""
        found = None
        for token, consumer in self.tokens:
            if hmac.compare_digest(given, token):
                found = consumer
        return found


def read_consumers(config: Config, operator_token: str | None) -> tuple[Consumers, list[str]]:
    """The consumers' tokens and keys, and the problems found (one line each)."""
    tokens: list[tuple[bytes, ConsumerConfig]] = []
    keys: dict[str, bytes] = {}
    problems: list[str] = []
    seen = {operator_token.encode("utf-8")} if operator_token else set()
    for consumer in config.consumer:
        where = f"[[consumer]] {consumer.name!r}"
        if consumer.token_file is not None:
            token, why = _token(consumer)
            if why is not None:
                problems.append(f"{where} token_file: {why}")
            elif token in seen:
                problems.append(f"{where} token_file: {consumer.token_file} holds a token already given to"
                                " the operator or another consumer")
            else:
                seen.add(token)
                tokens.append((token, consumer))
        if consumer.secret_file is not None:
            key, why = _key(consumer)
            if why is not None:
                problems.append(f"{where} secret_file: {why}")
            else:
                keys[consumer.name] = key
    return Consumers(tuple(tokens), keys), problems


def _readable(path) -> tuple[bytes, str | None]:
    data, why = read_file(path)
    if why is not None:
        return b"", why
    mode = open_mode(path)
    if mode is not None:
        return b"", f"{path} has mode {mode}: others than its owner may read it; chmod 600 it"
    return data or b"", None


def _token(consumer: ConsumerConfig) -> tuple[bytes, str | None]:
    data, why = _readable(consumer.token_file)
    if why is not None:
        return b"", why
    token = data.decode("utf-8", "replace").strip().splitlines()[0] if data.strip() else ""
    if len(token) < TOKEN_MIN_CHARS:
        return b"", f"the token in {consumer.token_file} is shorter than {TOKEN_MIN_CHARS} characters"
    return token.encode("utf-8"), None


def _key(consumer: ConsumerConfig) -> tuple[bytes, str | None]:
    data, why = _readable(consumer.secret_file)
    if why is not None:
        return b"", why
    text = data.decode("ascii", "replace").strip()
    key = parse_secret(text)
    if key is None:
        return b"", (f"{consumer.secret_file} does not hold a Standard Webhooks secret ({SECRET_PREFIX} then the"
                     f" base64 of {SECRET_BYTES[0]} to {SECRET_BYTES[1]} random bytes)")
    return key, None


def parse_secret(text: str) -> bytes | None:
    """The signing key of a `whsec_...` secret, or None when it is not one."""
    if not text.startswith(SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1] else None

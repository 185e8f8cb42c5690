"""How a customer's value is quoted in a message, and a URL's user and
password never quoted back.

A message that shows a value (`url: ... (got "...")`) is published to the
customer, kept in its record, shown by `/instances`, `status`, `explain` and
`plan`, and put in the change feed. A backend URL may carry credentials
(`https://user:password@backend`): they are replaced by `***` wherever a
value is quoted, so the message still says which URL is meant without
repeating the password to everyone who reads it.

Like a browser or curl, the user information runs to the last `@` before the
path (a password may hold an `@`), and a backslash may stand for a slash;
after a special scheme (http, https, ftp, ws, wss) it starts with or without
the slashes, as a browser reads `https:/user:password@backend` too.
A query parameter named like a secret (`?token=...`, `&api_key=...`) is
masked the same way.
Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MASK", "SECRET_WORDS", "quote_named", "quote_value", "without_userinfo", "without_userinfo_in_text"]

MASK = "***"
_QUOTE_LIMIT = 60
# what of a value is looked at for credentials: every URL field is shorter
_MASKED = 4096

# where user information may start: after two slashes (a backslash may stand
# for one), whatever the scheme before them; after a special scheme with one
# slash or none (the browser skips them: "https:/user:password@backend")
_START = re.compile(r"[/\\]{2}|(?<![A-Za-z0-9+.-])(?:https?|ftp|wss?):[/\\]?(?![/\\])", re.IGNORECASE)
# the furthest before the end of a run a start may begin and still reach past it ("https:" then its "/")
_REACH = len("https:")
# one value: the user information runs to the last "@" before the path, spaces included
_RUN_IN_VALUE = re.compile(r"[^/?#]*+")
# free text (a message, a master's words): a URL ends at a space or a quote
_RUN_IN_TEXT = re.compile(r"""[^/?#\s"']*+""")
# a host name or a host:port entry may start with it, without a scheme, when it
# holds a password ("user:password@"; a cipher string's "@SECLEVEL=1" is no user
# information: only these values are read so). The user name holds no ":": to
# the first one, without backtracking (4 KB of ":" and a "/" took 25 ms an entry)
_BARE_HEAD = re.compile(r"[^/?#@:]*+:[^/?#]*@")


def _masked(text: str, run: re.Pattern[str]) -> str:
    """`text` with the user information after every start masked, in one pass:
    a start whose run (to the path, or the URL's end) holds no "@" is
    skipped with its run, as every start inside it would fail the same way
    (only one ending in the slash that ends the run may reach past it: it
    begins at most _REACH before). A regular expression
    tried each of them, reading the run again: a hostile value of 64 KB of
    backslashes held the daemon for seconds."""
    parts: list[str] = []
    done = at = 0
    while (start := _START.search(text, at)) is not None:
        begins = start.end()
        ends = run.match(text, begins).end()
        last = text.rfind("@", begins, ends)
        if last < 0:
            at = max(ends - _REACH if text.startswith("/", ends) else ends, start.start() + 1)
            continue
        parts += (text[done:begins], MASK)
        done = at = last
    return "".join(parts) + text[done:] if parts else text


#: how a name ends when its value is a secret (a query parameter here; a
#: master's `name=value` or `"name": value` in scrub.py: one list)
SECRET_WORDS = r"key|password|passwd|passphrase|pass|pwd|secret|token|credential|signature|sig|auth"
# a query (or fragment: `#access_token=`) parameter named like a secret, `[]`
# after its name or not: its value, up to the next parameter
_QUERY_SECRET = re.compile(
    rf"([?&;#][A-Za-z0-9_.-]{{0,40}}?(?:{SECRET_WORDS})s?(?:\[\])?=)[^&;#]*", re.IGNORECASE)


def without_userinfo(value: str, bare: bool = False) -> str:
    """One value (a URL as the customer gave it) with its credentials masked,
    those of its query too; `bare`: also at its start, without a scheme (a
    host name, a host:port entry)."""
    if "=" in value:
        value = _QUERY_SECRET.sub(rf"\1{MASK}", value)
    if "@" not in value:
        return value
    if bare and (head := _BARE_HEAD.match(value)) is not None:
        return MASK + _masked(value[head.end() - 1:], _RUN_IN_VALUE)
    return _masked(value, _RUN_IN_VALUE)


def without_userinfo_in_text(text: str) -> str:
    """Free text with the credentials of every URL in it masked."""
    return _masked(text, _RUN_IN_TEXT) if "@" in text else text


def quote_value(value: Any, bare: bool = False) -> str:
    """A customer value made safe and short for a message: JSON-quoted, at most 60 chars,
    a URL's credentials masked (`bare`: see without_userinfo).

    Control characters and non-ASCII are escaped, so nothing the customer
    typed can forge a log line or a terminal sequence. A long value is cut
    between escapes (never inside one) and marked with ``...`` inside the quotes.
    """
    if not isinstance(value, str):
        value = repr(value)
    cut = len(value) > _MASKED
    value = without_userinfo(value[:_MASKED], bare)
    # Only the head can be shown; don't JSON-encode a megabyte to find that out.
    head = value[: _QUOTE_LIMIT + 1]
    quoted = json.dumps(head)
    if len(quoted) <= _QUOTE_LIMIT and len(head) == len(value) and not cut:
        return quoted
    budget = _QUOTE_LIMIT - len('"..."')
    parts: list[str] = []
    for char in head:
        piece = json.dumps(char)[1:-1]
        if len(piece) > budget:
            break
        parts.append(piece)
        budget -= len(piece)
    return '"' + "".join(parts) + '..."'


# a parameter named like a secret (an unknown one forwarded: `api_token`, `db_password`)
_SECRET_NAME = re.compile(rf"{SECRET_WORDS}|cookie", re.IGNORECASE)  # the one list, and a cookie


def quote_named(name: str, value: Any) -> str:
    """quote_value(), but for a parameter named like a secret: its length
    only (the message says where the fault is; the customer knows the value),
    and its name, escaped and cut like a value (a key as the customer typed it)."""
    if isinstance(value, str) and _SECRET_NAME.search(name):
        return f"a value of {len(value)} characters, not shown: {quote_value(name)[1:-1]} looks like a secret"
    return quote_value(value)

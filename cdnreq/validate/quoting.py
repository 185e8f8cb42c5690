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
A query parameter named like a secret (`?token=...`, `&api_key=...`,
`?tok%65n=...` as a server decodes it) is masked the same way.

In free text (a master's words, a message) a URL's user information runs
to the last `@` before the path too, spaces and quotes included (a password
may hold them), only not past a line break: an "@" further in the same
sentence masks more than needed, never less. A value read only in part (its
first 4,096 characters) is masked as if an "@" followed the cut: what the
rest holds is not read, nor shown.

A password holding an unencoded "#", "?" or "/" (`https://admin:Pa#ss@b`,
a common slip) ends the authority before its "@": an authority whose ":" is
followed by no port (`admin:Pa`) is user information, masked to the last
"@" after it (in the value; in free text, on its line).
Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "MASK", "SECRET_WORDS", "masked_head", "quote_named", "quote_value", "without_userinfo", "without_userinfo_in_text",
]

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
# free text (a message, a master's words): the same, but a line ends it (a
# space or a quote does not: a password may hold one)
_RUN_IN_TEXT = re.compile(r"[^/?#\r\n]*+")
# in free text, the authority as written: to a space or a quote
_AUTHORITY_IN_TEXT = re.compile(r"""[^\s"']*+""")
_LINE = re.compile(r"[^\r\n]*+")


def _last_at(text: str, begins: int, ends: int) -> int:
    return text.rfind("@", begins, ends)


def _no_port(authority: str) -> bool:
    """Whether a ":" in `authority` is followed by no port: `admin:Pa` of
    `https://admin:Pa#ss@b`, `admin:` of `https://admin:#ss@b`; not
    `b.example:8080` nor `[::1]:80`."""
    colon = authority.find(":", authority.rfind("]") + 1)
    port = authority[colon + 1:]
    return colon >= 0 and not (port.isascii() and port.isdigit())


def _beyond(text: str, begins: int, ends: int, in_text: bool, cut: bool) -> tuple[int, int]:
    """For an authority (`text[begins:ends]`, no "@" in it) that is user
    information cut by an unencoded "#", "?" or "/": the last "@" after it
    (-1: none), and where the search stopped (the value's end, or its line's
    in free text; no "@" lies between `begins` and there when none is found)."""
    authority = text[begins:_AUTHORITY_IN_TEXT.match(text, begins, ends).end()] if in_text else text[begins:ends]
    if not _no_port(authority):
        return -1, ends
    stop = _LINE.match(text, ends).end() if in_text else len(text)
    return (len(text) if cut and stop == len(text) else _last_at(text, ends, stop)), stop


def _masked(text: str, run: re.Pattern[str], cut: bool = False) -> str:
    """`text` with the user information after every start masked, in one pass:
    a start whose run (to the path, or the URL's end) holds no "@" is
    skipped with its run, as every start inside it would fail the same way
    (only one ending in the slash that ends the run may reach past it: it
    begins at most _REACH before). A regular expression
    tried each of them, reading the run again: a hostile value of 64 KB of
    backslashes held the daemon for seconds. `cut`: `text` is the start of a
    longer one; a run reaching its end is masked to it (its "@" may follow).
    An authority cut by an unencoded delimiter (_beyond) is searched past
    once: found, the "@" is the last; else the search's end is skipped to."""
    parts: list[str] = []
    done = at = 0
    while (start := _START.search(text, at)) is not None:
        begins = start.end()
        ends = run.match(text, begins).end()
        last = len(text) if cut and ends == len(text) else _last_at(text, begins, ends)
        if last < 0:
            last, ends = _beyond(text, begins, ends, run is _RUN_IN_TEXT, cut)
        if last < 0:
            at = max(ends - _REACH if text.startswith("/", ends) else ends, start.start() + 1)
            continue
        parts += (text[done:begins], MASK)
        done = at = last
    return "".join(parts) + text[done:] if parts else text


#: how a name ends when its value is a secret (a query parameter here; a
#: master's `name=value` or `"name": value` in scrub.py: one list)
SECRET_WORDS = r"key|password|passwd|passphrase|pass|pwd|secret|token|credential|signature|sig|auth"
# a query (or fragment: `#access_token=`) parameter: its name, to its "=";
# its value, up to the next parameter (in free text, up to a space or a quote too)
_PARAMETER = re.compile(r"[?&;#]([^=?&;#]*+)=")
_PARAMETER_VALUE = re.compile(r"[^&;#]*+")
_PARAMETER_VALUE_IN_TEXT = re.compile(r"""[^&;#\s"']*+""")
# a name named like a secret once decoded: `Api-Key`, `tok%65n`, `access+token`, `token[]`, a
# number after it (`token1`, `api_key2`), or any of its parts indexed so (`password[0]`, `user[token]`)
_SECRET_AT_END = re.compile(rf"(?:{SECRET_WORDS})s?[0-9]*\Z", re.IGNORECASE)
_NOT_A_LETTER = re.compile(r"[\W_]+")
_INDEX = re.compile(r"[\[\]]+")
_DECODED = 3  # times a name is decoded: a server may decode a "%2565" twice


def _names_a_secret(name: str) -> bool:
    for _ in range(_DECODED):
        if "%" not in name and "+" not in name:
            break
        name = unquote_plus(name, errors="replace")
    return any(_SECRET_AT_END.search(_NOT_A_LETTER.sub("", part)) is not None for part in _INDEX.split(name))


def _without_query_secrets(text: str, value: re.Pattern[str]) -> str:
    """`text` with the value of every parameter named like a secret masked:
    each name is read once (and decoded), each secret value once."""
    parts: list[str] = []
    done = at = 0
    while (found := _PARAMETER.search(text, at)) is not None:
        at = found.end()
        if _names_a_secret(found.group(1)):
            parts += (text[done:at], MASK)
            done = at = value.match(text, at).end()
    return "".join(parts) + text[done:] if parts else text


def _without_bare_head(value: str, cut: bool) -> str | None:
    """A host name or a host:port entry may start with user information,
    without a scheme, when it holds a password: to the last "@" before the
    path, a ":" before it (`alice:pw@host`, `alice@corp:pw@host`; a user
    without one, `user@host`, is no secret, and a cipher string's
    "@SECLEVEL=1" no user information: only these values are read so)."""
    ends = _RUN_IN_VALUE.match(value).end()
    last = len(value) if cut and ends == len(value) else _last_at(value, 0, ends)
    if last < 0:
        last = _beyond(value, 0, ends, False, cut)[0]  # `alice:Pa#ss@host`
    if last < 0 or value.find(":", 0, last) < 0:
        return None
    return MASK + _masked(value[last:], _RUN_IN_VALUE, cut)


def without_userinfo(value: str, bare: bool = False, cut: bool = False) -> str:
    """One value (a URL as the customer gave it) with its credentials masked,
    those of its query too; `bare`: also at its start, without a scheme (a
    host name, a host:port entry); `cut`: it is the start of a longer value
    (see masked_head)."""
    if "=" in value:
        value = _without_query_secrets(value, _PARAMETER_VALUE)
    if "@" not in value and not cut:
        return value
    if bare and (masked := _without_bare_head(value, cut)) is not None:
        return masked
    return _masked(value, _RUN_IN_VALUE, cut)


# a PEM block's armor (a private key pasted in the wrong field): its label is shown, never its body
_PEM = re.compile(r"-----BEGIN[^\n-]{0,80}-----|-----BEGIN")


def masked_head(value: str, bare: bool = False) -> str:
    """At most the first _MASKED characters of a value, masked as
    without_userinfo() does; when the value is longer, as if an "@" followed
    the cut: a password's "@" may lie beyond, where nothing is read. From a
    PEM block on (`-----BEGIN EC PRIVATE KEY-----`), only its label."""
    head = value[:_MASKED]
    if (pem := _PEM.search(head)) is not None:
        return without_userinfo(head[:pem.start()], bare, cut=True) + pem.group(0) + MASK
    return without_userinfo(head, bare, cut=len(value) > _MASKED)


def without_userinfo_in_text(text: str, cut: bool = False) -> str:
    """Free text with the credentials of every URL in it masked, those of
    its queries too; `cut`: it is the start of a longer text (a URL running
    to its end is masked to its end)."""
    if "=" in text:
        text = _without_query_secrets(text, _PARAMETER_VALUE_IN_TEXT)
    return _masked(text, _RUN_IN_TEXT, cut) if "@" in text or cut else text


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
    value = masked_head(value, bare)
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

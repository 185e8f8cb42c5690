"""Words from outside made safe to store, log, show and relay.

A master's error title (or the body of an answer that is not JSON) goes to
the events table, the logs, `/status`, `cdnreq explain` and, for a refused
request, to the customer. It may hold anything: a private key a proxy echoed
back, escape sequences that repaint an operator's terminal, megabytes. So it
is cut to a few hundred characters once key material is removed and control
characters are escaped.
"""

from __future__ import annotations

import re
import unicodedata

from cdnreq.validate.quoting import SECRET_WORDS, without_userinfo_in_text

LIMIT = 200
_READ = 1 << 16  # only the start of a long text can be shown; bounds the work on megabytes
REMOVED = "[removed]"

# a PEM block, up to its END line, or to the end of the text when unterminated
_PEM = re.compile(r"-----BEGIN[^\n-]{0,80}-----.*?(?:-----END[^\n-]{0,80}-----|\Z)", re.DOTALL)
# `password=...`, `"token": "..."`, `Authorization: Bearer ...`; the lookahead
# only skips, reading each name once, where no name ends at a separator (the
# names tried at each of 64 KB of "a-a-a-" took the daemon's thread for a second)
_SECRET_VALUE = re.compile(
    rf"""(?ix)
    (\b(?=[a-z_-]{{0,52}}+["']?\s*[=:])(?:[a-z_-]{{0,40}}(?:{SECRET_WORDS})s?|authorization|cookie)
     ["']?\s*[=:]\s*)
    (?:bearer\s+|basic\s+)?
    ("[^"]*"|'[^']*'|[^\s,;&}}]+)
    """
)
# a run of base64 or hex long enough to be key material rather than a word,
# mixing letters and digits (a row of dashes or of "x" is no key)
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{40,}")
_DIGIT, _LETTER = re.compile(r"[0-9]"), re.compile(r"[A-Za-z]")
# key material as `openssl -text` prints it: colon-separated hex bytes over lines
_HEX_BYTES = re.compile(r"(?:\b[0-9A-Fa-f]{2}:\s*){15,}[0-9A-Fa-f]{2}\b")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HIDDEN = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def printable(text: str) -> str:
    """`text` with every control, format (bidi overrides, zero widths) and
    line-separator character escaped, so it prints as one harmless line."""
    if text.isprintable():
        return text
    return "".join(_escaped(c) for c in text)


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char == " " or unicodedata.category(char) not in _HIDDEN:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def redact(text: str, cut: bool = False) -> str:
    """`text` without PEM blocks, secret-looking values, key-like runs or the
    credentials of a URL (`https://user:password@backend`, `?token=`);
    `cut`: the start of a longer text (see quoting.without_userinfo_in_text)."""
    text = _PEM.sub(REMOVED, text)
    text = _HEX_BYTES.sub(REMOVED, text)
    text = _SECRET_VALUE.sub(lambda m: m.group(1) + REMOVED, text)
    return without_userinfo_in_text(_KEY_LIKE.sub(_key_like, text), cut)


def _key_like(match: re.Match[str]) -> str:
    run = match.group(0)
    return REMOVED if _DIGIT.search(run) and _LETTER.search(run) else run


def scrub(text: str, limit: int = LIMIT) -> str:
    """Outside words as cdnreq keeps them: key material removed, whitespace
    runs made one space, other control characters escaped, at most `limit`
    characters (an ellipsis marks a cut)."""
    text = printable(" ".join(redact(text[:_READ], cut=len(text) > _READ).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."

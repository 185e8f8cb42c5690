"""Characters no forwarded value may hold.

The technical CDN writes customers' values into configuration files and
HTTP headers. A line break, a NUL or an escape sequence there can add a
directive of the customer's choosing, so every string forwarded (and, when
the operator forwards unknown parameters, every name and nested string) is
refused if it holds:

* a C0 control (U+0000-U+001F), DEL or a C1 control (U+0080-U+009F);
* a line or paragraph separator (U+2028, U+2029), which some parsers take
  for a line break;
* a bidirectional override or isolate (U+202A-U+202E, U+2066-U+2069), which
  makes a value read differently from what it is;
* an unpaired surrogate (cdnreq/validate/encoding.py refuses those first,
  with the numbers no JSON parser reads back alike, in every parameter);
* the non-characters U+FFFE and U+FFFF, which XML cannot carry: a master
  keeps parameters as XML (slapproxy answers 500 to a request holding one),
  so the request could never be made, and the customer, reaching them
  through SlapOS's "_" as JSON escapes, would never be told why.

PEM fields may hold line breaks and tabs, nothing else of the above. The
message names the field, the character and where it is, and shows the value
escaped, except for PEM fields (``ssl_key`` is a secret).

Pure, and one regular-expression scan per string: it runs on every instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from cdnreq.validate.hosts import quote_value
from cdnreq.validate.quoting import quote_named
from cdnreq.validate.schema import KNOWN_PARAMETERS, show_name

__all__ = ["PEM_FIELDS", "text_problems"]

#: Fields holding PEM text: line breaks and tabs allowed.
PEM_FIELDS: frozenset[str] = frozenset(
    {"ssl_crt", "ssl_key", "ssl_ca_crt", "ssl_proxy_ca_crt", "health-check-failover-ssl-proxy-ca-crt"}
)

_OTHERS = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff"
_FORBIDDEN = re.compile(f"[\x00-\x1f{_OTHERS}]")
_FORBIDDEN_IN_PEM = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_OTHERS}]")


def _what(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        kind = "an unpaired surrogate"
    elif code in (0x2028, 0x2029):
        kind = "the line separator"
    elif 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069:
        kind = "the bidirectional control"
    elif code in (0xFFFE, 0xFFFF):
        kind = "the non-character"
    else:
        kind = "the control character"
    return f"{kind} U+{code:04X}"


def _string_problem(name: str, value: str, pem: bool) -> str | None:
    found = (_FORBIDDEN_IN_PEM if pem else _FORBIDDEN).search(value)
    if found is None:
        return None
    where = f"{_what(found.group())} at character {found.start() + 1}"
    if pem:
        return f"{name}: must not contain {where}; PEM text may hold line breaks and tabs only"
    shown = quote_value(value) if name in KNOWN_PARAMETERS else quote_named(name, value)  # a known one: none is a secret
    return f"{name}: must not contain {where} (got {shown})"


def _nested_problem(name: str, value: Any, key: str) -> str | None:
    """The first forbidden character in an unknown parameter's value, or None
    (`name`: as shown, `key`: as given). Its numbers and types were checked by
    cdnreq/validate/encoding.py. A value is quoted unless the key nearest
    above it is named like a secret."""
    stack: list[tuple[str, Any]] = [(key, value)]
    while stack:
        near, item = stack.pop()
        if isinstance(item, str):
            found = _FORBIDDEN.search(item)
            if found is not None:
                return f"{name}: must not contain {_what(found.group())} (got {quote_named(near, item)})"
        elif isinstance(item, Mapping):
            for key, inner in item.items():
                stack.append((near, key))
                stack.append((key if isinstance(key, str) else near, inner))
        elif isinstance(item, list):
            stack.extend((near, one) for one in item)
    return None


def text_problems(parameters: Mapping[str, Any], skip: set[str], unknown: Iterable[str]) -> list[str]:
    """Errors for forbidden characters in the string values of known
    parameters (but those in ``skip``, already refused) and in the names and
    values of the ``unknown`` parameters that are to be forwarded."""
    errors: list[str] = []
    for name, value in parameters.items():
        if isinstance(value, str) and name in KNOWN_PARAMETERS and name not in skip:
            problem = _string_problem(name, value, name in PEM_FIELDS)
            if problem is not None:
                errors.append(problem)
    for name in unknown:
        shown = show_name(name)
        found = _FORBIDDEN.search(name)
        if found is not None:
            errors.append(f"{shown}: the parameter name must not contain {_what(found.group())}")
            continue
        problem = _nested_problem(shown, parameters[name], name)
        if problem is not None:
            errors.append(problem)
    return errors

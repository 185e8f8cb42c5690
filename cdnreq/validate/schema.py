"""Shared-instance parameters against ``schemas/shared-instance.schema.json``.

:func:`schema_problems` runs the project's JSON Schema and turns what it finds
into messages meant for the customer: one per parameter at most, each naming
the parameter and showing the offending value (JSON, escaped, at most 60
characters), in our own stable wording rather than jsonschema's. The schema
lets integer settings arrive as strings of digits; their range is checked
here. Every pattern ends with ``(?![\\s\\S])``: jsonschema applies patterns
with ``re.search``, and Python's ``$`` also matches before a final newline.

Unknown parameters are never forwarded unchecked by default: a name that can
carry a host (``domain`` and anything holding ``domain``, ``alias``, ``host``
or ``server-name``) is an error, whatever the operator allows, because an
older Rapid.CDN serves ``domain`` as the entry's host; any other unknown
parameter is a warning and is dropped, unless the operator forwards them
(``[validation].forward_unknown``).

Pure: no I/O after import, never raises on any JSON value.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from importlib.resources import files
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from cdnreq.validate.quoting import masked_head

__all__ = ["KNOWN_PARAMETERS", "PATTERN_PROBLEMS", "SCHEMA", "can_name_a_host", "schema_problems", "show_name", "show_value"]

#: The shared-instance schema, loaded once. Treat as read-only.
SCHEMA: dict[str, Any] = json.loads(
    (files("cdnreq") / "schemas" / "shared-instance.schema.json").read_text(encoding="utf-8")
)
_VALIDATOR = Draft202012Validator(SCHEMA)
_PROPERTIES: dict[str, dict[str, Any]] = SCHEMA["properties"]

#: Every parameter name the schema describes.
KNOWN_PARAMETERS: frozenset[str] = frozenset(_PROPERTIES)

_SHOW_LIMIT = 60
_DIGITS = re.compile(r"[0-9]{1,10}")


def _integer_range(prop: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """(minimum, maximum) of the integer branch of an ``anyOf`` integer-or-digits property."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") == "integer":
            return branch.get("minimum", 0), branch.get("maximum")
    return None


def _integer_problem(low: int, high: int | None) -> str:
    if high is None:
        return f"must be an integer of at least {low}"
    return f"must be an integer from {low} to {high}"


#: name -> (minimum, maximum, message) for parameters that take an integer or a digit string.
_INTEGERS: dict[str, tuple[int, int | None, str]] = {
    name: (*bounds, _integer_problem(*bounds))
    for name, bounds in ((n, _integer_range(p)) for n, p in _PROPERTIES.items())
    if bounds is not None
}

#: What each pattern of the schema means, in words. A test keeps this complete.
PATTERN_PROBLEMS: dict[str, str] = {
    r"^(http|https|ftp)://\S+(?![\s\S])": "must be a URL starting with http://, https:// or ftp://, without spaces",
    r"^https://\S+(?![\s\S])": "must be a URL starting with https://, without spaces",
    r"^(/\S*)?(?![\s\S])": "must be empty or a path starting with /, without spaces",
    r"^/\S*(?![\s\S])": "must be a path starting with /, without spaces",
}

# When one parameter breaks several keywords, the first in this order is reported.
_RANK = {"type": 0, "anyOf": 0, "maxLength": 1, "enum": 2, "pattern": 3}


def _length_limit(prop: Mapping[str, Any]) -> int | None:
    """The longest string a property can accept (any branch), None if unbounded."""
    branches = [prop, *prop.get("anyOf", ())]
    limits = [b.get("maxLength") for b in branches if b.get("type") == "string"]
    return None if not limits or None in limits else max(limits)


#: name -> longest acceptable string. Longer strings never reach jsonschema.
_LENGTH_LIMITS: dict[str, int | None] = {n: _length_limit(p) for n, p in _PROPERTIES.items()}

# Integers beyond this many bits are never valid here; jsonschema would try to
# print them in its own (unused) messages, which fails past 4300 digits.
_MAX_INT_BITS = 64


def _cut(pieces: Iterable[str], opening: str, closing: str) -> str:
    """Join escaped pieces between opening/closing, cut (between pieces) to the show limit."""
    budget = _SHOW_LIMIT - len(opening) - len("...") - len(closing)
    parts: list[str] = []
    for piece in pieces:
        if len(piece) > budget:
            return opening + "".join(parts) + "..." + closing
        parts.append(piece)
        budget -= len(piece)
    return opening + "".join(parts) + closing


def _escaped(text: str) -> Iterator[str]:
    """The JSON escape of each character: control characters and non-ASCII become \\uXXXX."""
    return (json.dumps(char)[1:-1] for char in text)


def _show_string(text: str) -> str:
    text = masked_head(text)  # a backend's password is never shown (cdnreq/validate/quoting.py)
    if len(text) <= _SHOW_LIMIT:  # cheap path; the long path only looks at a prefix
        quoted = json.dumps(text)
        if len(quoted) <= _SHOW_LIMIT:
            return quoted
    return _cut(_escaped(text), '"', '"')


def _show(value: Any) -> str:
    """A value as it appears in a message: JSON, escaped, at most about 60 characters."""
    if isinstance(value, str):
        return _show_string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        try:
            text = str(value)
        except ValueError:  # beyond Python's int-to-text digit limit
            return "a very large integer"
    elif isinstance(value, float):
        text = json.dumps(value)
    elif isinstance(value, Mapping):
        return "an object"
    elif isinstance(value, (list, tuple)):
        return "an array"
    else:  # not a JSON value at all; say so without calling its repr
        return "an unsupported value"
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def _show_name(name: Any) -> str:
    """A parameter name as it appears in a message: escaped but unquoted, cut
    to 60 characters; quoted as JSON when it could not be read back from the
    message unquoted (empty, blank at an end, or holding the ":" that ends
    the name in "name: problem"). A URL's password in it is masked as in a
    value (a URL pasted as a key: `{"https://alice:pw@b": ...}`)."""
    if not isinstance(name, str):  # JSON keys are strings; a Python caller may do otherwise
        return _show(name)
    name = masked_head(name, bare=True)
    if len(name) <= _SHOW_LIMIT:
        plain = json.dumps(name)[1:-1]
        if len(plain) <= _SHOW_LIMIT:
            return json.dumps(name) if _ambiguous(plain) else plain
    cut = _cut(_escaped(name), "", "")
    return json.dumps(cut) if _ambiguous(cut) else cut


def _ambiguous(shown: str) -> bool:
    return not shown or shown != shown.strip() or ":" in shown or shown.startswith('"')


show_value = _show
show_name = _show_name


def _one_of(choices: list[Any]) -> str:
    shown = [_show(c) for c in sorted(choices, key=str)]
    if len(shown) == 1:
        return f"must be {shown[0]}"
    if len(shown) == 2:
        return f"must be {shown[0]} or {shown[1]}"
    return f"must be one of {', '.join(shown[:-1])} or {shown[-1]}"


def _describe(name: str, error: ValidationError, value: Any) -> str:
    """The customer message for the error chosen for parameter ``name`` holding ``value``."""
    keyword = error.validator
    if keyword == "anyOf" and name in _INTEGERS:
        problem = _INTEGERS[name][2]
    elif keyword == "type":
        expected = error.validator_value
        article = "an" if str(expected)[:1] in "aeiou" else "a"
        problem = f"must be {article} {expected}"
    elif keyword == "maxLength":
        length = len(value) if isinstance(value, str) else 0
        return f"{name}: is too long ({length} characters, at most {error.validator_value})"
    elif keyword == "enum":
        problem = _one_of(list(error.validator_value))
    elif keyword == "pattern":
        problem = PATTERN_PROBLEMS.get(str(error.validator_value), "is not in the expected form")
    else:
        problem = "is not valid"
    return f"{name}: {problem} (got {_show(value)})"


def _integer_text_problem(name: str, value: Any) -> str | None:
    """Checks the schema leaves to code for integer parameters; None when the value is fine.

    A digit string is range-checked (and must be digits only). A float the schema took for an integer
    (``80.0``) is refused: the CDN's configuration wants ``80``.
    """
    low, high, problem = _INTEGERS[name]
    if isinstance(value, str):
        if _DIGITS.fullmatch(value):
            number = int(value)
            if number >= low and (high is None or number <= high):
                return None
    elif not isinstance(value, float):
        return None
    return f"{name}: {problem} (got {_show(value)})"


# Returned by _screen for a value it has already reported: jsonschema never sees it.
_REPORTED: Any = object()


def _screen(name: str, value: Any, errors: set[str]) -> Any:
    """What jsonschema is shown for ``value``: cheap to check and to print.

    Strings longer than the parameter can ever be are reported here, without
    running patterns over them. Anything jsonschema could only refuse by type
    (objects, arrays, huge integers, non-JSON Python values) is replaced by
    ``None``, which every parameter refuses by type too; messages always show
    the caller's original value.
    """
    if isinstance(value, str):
        limit = _LENGTH_LIMITS[name]
        if limit is not None and len(value) > limit:
            if name in _INTEGERS:
                errors.add(f"{name}: {_INTEGERS[name][2]} (got {_show(value)})")
            else:
                errors.add(f"{name}: is too long ({len(value)} characters, at most {limit})")
            return _REPORTED
        return value
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int) and value.bit_length() <= _MAX_INT_BITS:
        return value
    return None


_HOST_WORDS = ("domain", "alias", "host", "servername")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def can_name_a_host(name: str) -> bool:
    """Whether an unknown parameter's name could be read as a host by some CDN:
    compared folded (case, width, ``-``/``_``/spaces ignored)."""
    folded = _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", name).casefold())
    return any(word in folded for word in _HOST_WORDS)


def _unknown(name: Any, forward_unknown: bool, errors: set[str], warnings: set[str]) -> None:
    shown = _show_name(name)
    if isinstance(name, str) and can_name_a_host(name):
        errors.add(
            f"{shown}: unknown parameter that could name a host, refused"
            " (hosts go in custom_domain and server-alias)"
        )
    elif forward_unknown:
        warnings.add(f"{shown}: unknown parameter, forwarded to the CDN unchecked")
    else:
        warnings.add(f"{shown}: unknown parameter, not forwarded to the CDN")


def schema_problems(
    parameters: Mapping[str, Any], forward_unknown: bool = False
) -> tuple[list[str], list[str]]:
    """Check one shared instance's parameters against the schema.

    Returns ``(errors, warnings)``, each sorted. Errors name the parameter and
    the offending value, one per parameter at most; unknown parameters are
    warnings (dropped, or forwarded when ``forward_unknown``), or errors when
    their name could carry a host. Never raises on a JSON value.
    """
    if not isinstance(parameters, Mapping):
        return [f"parameters: must be an object (got {_show(parameters)})"], []

    errors: set[str] = set()
    warnings: set[str] = set()
    screened: dict[str, Any] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or name not in KNOWN_PARAMETERS:
            _unknown(name, forward_unknown, errors, warnings)
            continue
        shown = _screen(name, value, errors)
        if shown is not _REPORTED:
            screened[name] = shown

    chosen: dict[str, ValidationError] = {}
    for error in _VALIDATOR.iter_errors(screened):
        if not error.path:  # the schema constrains nothing else at the top level
            continue
        name = error.path[0]
        kept = chosen.get(name)
        if kept is None or _RANK.get(error.validator, 9) < _RANK.get(kept.validator, 9):
            chosen[name] = error
    errors.update(_describe(name, error, parameters[name]) for name, error in chosen.items())

    for name in _INTEGERS.keys() & screened.keys():
        if name not in chosen:
            problem = _integer_text_problem(name, parameters[name])
            if problem is not None:
                errors.add(problem)
    return sorted(errors), sorted(warnings)

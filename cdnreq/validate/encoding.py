"""Whether an instance's parameters can be forwarded as they are.

Checked once, first in validation, for every key and value, known or
unknown: what passes encodes to one canonical JSON text (orjson, sorted
keys) that any master reads back alike, so a request body always
serialises and a read-back compares equal. What fails is that instance's
error, never the tick's.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import orjson

from cdnreq.validate.schema import _show_name

DEFAULT_MAX_BYTES = 65536
MAX_DEPTH = 32  # levels of objects and arrays inside one parameter's value
MAX_PROBLEMS = 20
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson encodes
_FLOAT_MAX = 2.0**63  # beyond, a float is most likely an integer a parser widened


def encoding_problems(parameters: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """One message per parameter that cannot be forwarded, plus the size."""
    if not isinstance(parameters, Mapping):
        return []  # the schema says what it should be
    problems: list[str] = []
    for key, value in parameters.items():
        name = _show_name(key)
        problem = _key_problem(key) or _value_problem(value, 0)
        if problem is not None:
            problems.append(f"{name}: {problem}")
            if len(problems) >= MAX_PROBLEMS:
                problems.append("... and possibly more parameters that cannot be encoded")
                break
    if problems:
        return problems
    try:
        size = len(orjson.dumps(parameters))
    except TypeError as error:  # every cause is ruled out above: keep the message honest anyway
        return [f"parameters: cannot be encoded as JSON ({error})"]
    if size > max_bytes:
        sizes = {key: len(orjson.dumps(value)) for key, value in parameters.items()}
        largest = max(sizes, key=sizes.__getitem__)
        problems.append(
            f"parameters: {size} bytes, more than the {max_bytes} allowed"
            f" ([validation].max_parameters_bytes); the largest is {_show_name(largest)}"
            f" ({sizes[largest]} bytes)"
        )
    return problems


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return "a key that is not a string"
    return _text_problem(key, "the name")


def _text_problem(text: str, what: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"{what} holds a lone surrogate ({text[error.start]!a} at character {error.start})"
    return None


def _value_problem(value: Any, depth: int) -> str | None:
    """The first reason `value` cannot be forwarded, or None."""
    if isinstance(value, str):
        return _text_problem(value, "the value")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return f"the integer {_digits(value)} does not fit in 64 bits"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            shown = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            return f"{shown} is not a JSON number (only finite numbers are)"
        if abs(value) >= _FLOAT_MAX:
            return f"the number {value!r} is beyond the 64-bit integer range"
        return None
    if isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            for key, inner in value.items():
                problem = _key_problem(key) or _value_problem(inner, depth + 1)
                if problem is not None:
                    return problem
            return None
        for inner in value:
            problem = _value_problem(inner, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"a value of type {type(value).__name__} is not JSON"


def _digits(value: int) -> str:
    """A huge integer, shortened: its sign, first digits and length."""
    text = str(value) if value.bit_length() < 4000 else None
    if text is None:
        return f"of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= 30 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"

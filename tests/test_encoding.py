"""Issue 10, items 1 and 2: what is forwarded can be encoded, checked once in
validation; the raw parameters are capped; read-backs compare on canonical
JSON so no value can make an entry look lost every tick."""

from __future__ import annotations

import math

import orjson
import pytest

from cdnreq.model import InstanceAnswer
from cdnreq.decide.transitions import kept
from cdnreq.validate.encoding import MAX_DEPTH, encoding_problems
from cdnreq.validate.policy import ValidationPolicy
from cdnreq.validate.verdict import validate

URL = {"url": "https://b.example"}


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("value", "problem"), [
    ("a\ud800", "foo: the value holds a lone surrogate ('\\ud800' at character 1)"),
    ({"k": ["\udfff"]}, "foo: the value holds a lone surrogate ('\\udfff' at character 0)"),
    ({"\ud800": 1}, "foo: the name holds a lone surrogate ('\\ud800' at character 0)"),
    (2**64, "foo: the integer 18446744073709551616 does not fit in 64 bits"),
    (-(2**63) - 1, "foo: the integer -9223372036854775809 does not fit in 64 bits"),
    ([10**5000], "foo: the integer of about 5000 digits does not fit in 64 bits"),
    (2**70 * 1.0, "foo: the number 1.1805916207174113e+21 is beyond the 64-bit integer range"),
    (math.nan, "foo: NaN is not a JSON number (only finite numbers are)"),
    (math.inf, "foo: Infinity is not a JSON number (only finite numbers are)"),
    ([-math.inf], "foo: -Infinity is not a JSON number (only finite numbers are)"),
    (nested(MAX_DEPTH + 1), "foo: nested deeper than 32 levels"),
    (nested(250), "foo: nested deeper than 32 levels"),
    ({1, 2}, "foo: a value of type set is not JSON"),
])
def test_unencodable_values_are_refused_naming_the_parameter(value: object, problem: str) -> None:
    verdict = validate({**URL, "foo": value})
    assert verdict.errors == (problem,)


def test_a_lone_surrogate_in_a_parameter_name_is_shown_escaped() -> None:
    assert validate({**URL, "\ud800x": "v"}).errors == (
        "\\ud800x: the name holds a lone surrogate ('\\ud800' at character 0)",)


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 0.5, -0.0, 1e18, nested(MAX_DEPTH), "\u00fc\U0001f600", None, True])
def test_encodable_values_pass(value: object) -> None:
    assert encoding_problems({**URL, "foo": value}) == []


def test_the_parameters_are_capped_known_and_unknown_keys_together() -> None:
    params = {**URL, "ssl_crt": "x" * 40000, "unknown": "y" * 30000}
    size = len(orjson.dumps(params))
    assert validate(params).errors == (
        f"parameters: {size} bytes, more than the 65536 allowed ([validation].max_parameters_bytes);"
        " the largest is ssl_crt (40002 bytes)",)
    assert "bytes, more than" not in " ".join(validate(params, ValidationPolicy(max_parameters_bytes=size)).errors)
    assert encoding_problems(params, size) == [] and encoding_problems(params, size - 1) != []


def test_many_unencodable_keys_give_a_bounded_list() -> None:
    errors = validate({**URL, **{f"k{n}": math.nan for n in range(100)}}).errors
    assert len(errors) == 21 and errors[-1].startswith("... and possibly more")


def answer(held: dict) -> InstanceAnswer:
    return InstanceAnswer(guid="T", parameters=held)


@pytest.mark.parametrize(("held", "sent"), [
    ({"x": "true"}, {"x": True}),  # stringified by the master, as JSON
    ({"x": "True"}, {"x": True}),  # ... or as Python
    ({"x": "1"}, {"x": 1}),
    ({"x": "-0.0"}, {"x": -0.0}),
    ({"x": 0.0}, {"x": -0.0}),
    ({"x": 1}, {"x": 1.0}),
    ({"x": 1.8446744073709552e19}, {"x": 2**64 - 1}),  # a master reading numbers as doubles
    ({"x": {"b": [1, 2], "a": None}}, {"x": {"a": None, "b": [1, 2]}}),
    ({"x": '{"a":1}'}, {"x": {"a": 1}}),
    ({"x": "\u00fc", "extra": 1}, {"x": "\u00fc"}),
])
def test_a_value_the_master_spells_differently_is_kept(held: dict, sent: dict) -> None:
    assert kept(answer(held), sent)


@pytest.mark.parametrize(("held", "sent"), [
    ({"x": "2"}, {"x": 1}),
    ({"x": 2.0}, {"x": 1}),
    ({}, {"x": 1}),
    ({"x": {"a": 2}}, {"x": {"a": 1}}),
    ({"x": "a"}, {"x": "b"}),
])
def test_a_value_the_master_did_not_keep_is_not_kept(held: dict, sent: dict) -> None:
    assert not kept(answer(held), sent)

"""The compact forms a record keeps between ticks."""

from cdnreq.model import FrozenJson, canonical_json, frozen_json, shown_digest


def test_frozen_json_reads_like_the_dict_it_holds():
    answer = {"url": "https://a.example", "n": 2, "nested": {"b": [1, None]}, "é": "ü"}
    frozen = FrozenJson(answer)
    assert frozen == answer and answer == frozen
    assert dict(frozen.items()) == answer and dict(frozen) == answer
    assert sorted(frozen) == sorted(answer) and len(frozen) == 4 and frozen["n"] == 2
    assert frozen != {**answer, "n": 3} and frozen != FrozenJson({"url": "x"})
    assert frozen == FrozenJson(answer) and frozen_json(frozen) is frozen and frozen_json(None) is None
    assert not FrozenJson({}) and FrozenJson({"a": ""})
    assert len(frozen.raw) < 100


def test_frozen_json_takes_what_orjson_refuses():
    huge = {"big": 2**70, "text": "lone \udc80 surrogate"}
    assert FrozenJson(huge) == huge
    assert FrozenJson(b'{"x": Infinity}')["x"] == float("inf")


def test_shown_digest_ignores_key_order_only():
    assert shown_digest({"a": 1, "b": 2}) == shown_digest({"b": 2, "a": 1})
    assert shown_digest({"a": 1}) != shown_digest({"a": "1"})
    assert len(shown_digest({})) == 16 and canonical_json({"b": 1, "a": 2}) == b'{"a":2,"b":1}'


def test_non_finite_numbers_do_not_hash_as_null():
    """orjson writes NaN and Infinity as null: refused NaN and accepted null
    must not share a parameter hash (tests/test_attack_params.py)."""
    null = canonical_json({"a": [1.5, None]})
    assert null == b'{"a":[1.5,null]}'
    spelled = {canonical_json({"a": [1.5, v]}) for v in (float("nan"), float("inf"), float("-inf"))}
    assert len(spelled) == 3 and null not in spelled
    assert canonical_json({"a": {"b": float("nan")}}) == b'{"a":{"b":NaN}}'
    assert FrozenJson({"a": float("inf")}).value() == {"a": float("inf")}

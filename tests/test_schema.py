"""The shared-instance schema and the customer messages of cdnreq.validate.schema."""

from __future__ import annotations

import json
import re
import time
from types import MappingProxyType
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cdnreq.validate.schema import KNOWN_PARAMETERS, PATTERN_PROBLEMS, SCHEMA, schema_problems

# Every parameter of the reference table (shared-instance-parameters.md), in its order.
REFERENCE_PARAMETERS = [
    "custom_domain", "url", "type", "path", "enable_cache", "https-only", "default-path",
    "disable-no-cache-request", "disable-via-header", "disabled-cookie-list", "enable-http2",
    "enable-http3", "https-url", "websocket-path-list", "websocket-transparent",
    "prefer-gzip-encoding-to-backend", "server-alias", "ssl-proxy-verify", "ssl_crt", "ssl_key",
    "ssl_ca_crt", "ssl_proxy_ca_crt", "virtualhostroot-http-port", "virtualhostroot-https-port",
    "backend-connect-timeout", "backend-connect-retries", "request-timeout", "ciphers",
    "authenticate-to-backend", "health-check", "health-check-http-method",
    "health-check-http-path", "health-check-timeout", "health-check-interval",
    "health-check-rise", "health-check-fall", "health-check-failover-url",
    "health-check-failover-https-url", "health-check-authenticate-to-failover-backend",
    "health-check-failover-ssl-proxy-verify", "health-check-failover-ssl-proxy-ca-crt",
    "strict-transport-security", "strict-transport-security-sub-domains",
    "strict-transport-security-preload", "url-netloc-list", "https-url-netloc-list",
    "health-check-failover-url-netloc-list", "health-check-failover-https-url-netloc-list",
]  # fmt: skip

FLAGS = [
    "enable_cache", "https-only", "disable-no-cache-request", "disable-via-header",
    "enable-http2", "enable-http3", "websocket-transparent", "prefer-gzip-encoding-to-backend",
    "ssl-proxy-verify", "authenticate-to-backend", "health-check",
    "health-check-authenticate-to-failover-backend", "health-check-failover-ssl-proxy-verify",
    "strict-transport-security-sub-domains", "strict-transport-security-preload",
]  # fmt: skip

# name -> (minimum, maximum)
INTEGERS = {
    "virtualhostroot-http-port": (1, 65535),
    "virtualhostroot-https-port": (1, 65535),
    "backend-connect-timeout": (1, 3600),
    "backend-connect-retries": (0, 10),
    "request-timeout": (1, 3600),
    "health-check-timeout": (1, 300),
    "health-check-interval": (1, 3600),
    "health-check-rise": (1, 2147483647),
    "health-check-fall": (1, 2147483647),
    "strict-transport-security": (0, 2147483647),
}

MAX_LENGTHS = {
    "custom_domain": 253,
    "url": 2048,
    "https-url": 2048,
    "health-check-failover-url": 2048,
    "health-check-failover-https-url": 2048,
    "ssl_crt": 65536,
    "ssl_key": 65536,
    "ssl_ca_crt": 65536,
    "ssl_proxy_ca_crt": 65536,
    "health-check-failover-ssl-proxy-ca-crt": 65536,
    "server-alias": 8192,
    "ciphers": 8192,
    "disabled-cookie-list": 8192,
    "websocket-path-list": 8192,
    "url-netloc-list": 8192,
    "https-url-netloc-list": 8192,
    "health-check-failover-url-netloc-list": 8192,
    "health-check-failover-https-url-netloc-list": 8192,
}
OTHER_STRINGS = [
    n for n in REFERENCE_PARAMETERS if n not in MAX_LENGTHS and n not in INTEGERS
]  # enums, paths: 1024

MEGABYTE = "A" * (1 << 20)


def _string_subschemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in [schema, *schema.get("anyOf", ())] if s.get("type") == "string"]


# ---------------------------------------------------------------- the schema


def test_schema_is_valid_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["type"] == "object"
    assert SCHEMA.get("additionalProperties", True) is True


def test_every_reference_parameter_has_title_and_description() -> None:
    properties = SCHEMA["properties"]
    assert list(properties) == REFERENCE_PARAMETERS
    assert KNOWN_PARAMETERS == frozenset(REFERENCE_PARAMETERS)
    for name, prop in properties.items():
        assert isinstance(prop.get("title"), str) and prop["title"].strip(), name
        assert isinstance(prop.get("description"), str) and len(prop["description"]) > 20, name
        assert "format" not in json.dumps(prop), name


def test_every_string_has_a_max_length() -> None:
    for name, prop in SCHEMA["properties"].items():
        strings = _string_subschemas(prop)
        assert strings, name
        for sub in strings:
            assert isinstance(sub.get("maxLength"), int), name
        if name in INTEGERS:
            assert strings[0]["maxLength"] == 10
        else:
            assert prop["maxLength"] == MAX_LENGTHS.get(name, 1024), name


def test_integer_parameters_take_an_integer_or_a_digit_string() -> None:
    for name, (low, high) in INTEGERS.items():
        prop = SCHEMA["properties"][name]
        assert "type" not in prop
        integer, digits = prop["anyOf"]
        assert integer == {"type": "integer", "minimum": low, "maximum": high}
        assert digits["type"] == "string" and digits["pattern"] == r"^[0-9]{1,10}(?![\s\S])"


def test_flags_and_enums() -> None:
    for name in FLAGS:
        assert sorted(SCHEMA["properties"][name]["enum"]) == ["false", "true"], name
    assert sorted(SCHEMA["properties"]["type"]["enum"]) == sorted(
        ["", "zope", "redirect", "notebook", "websocket"]
    )
    assert sorted(SCHEMA["properties"]["health-check-http-method"]["enum"]) == sorted(
        ["GET", "OPTIONS", "POST", "CONNECT"]
    )


def test_every_pattern_has_customer_wording() -> None:
    patterns = {
        sub["pattern"]
        for name, prop in SCHEMA["properties"].items()
        if name not in INTEGERS
        for sub in _string_subschemas(prop)
        if "pattern" in sub
    }
    assert patterns == set(PATTERN_PROBLEMS)


def test_documented_defaults_are_themselves_valid() -> None:
    defaults = {n: p["default"] for n, p in SCHEMA["properties"].items() if "default" in p}
    assert defaults["https-only"] == "true"
    assert defaults["virtualhostroot-https-port"] == 443
    assert defaults["health-check-http-path"] == "/"
    assert schema_problems(defaults) == ([], [])


# ---------------------------------------------------------------- good values

GOOD: list[tuple[str, Any]] = [
    ("custom_domain", "www.example.com"),
    ("custom_domain", "bücher.example"),  # host-name rules live elsewhere
    ("url", "http://backend.example.com:8080/app"),
    ("url", "https://[2001:db8::1]/"),
    ("url", "ftp://files.example.com"),
    ("https-url", "https://secure.example.com"),
    ("health-check-failover-url", "http://fallback.example.com"),
    ("health-check-failover-https-url", "https://fallback.example.com"),
    ("type", ""),
    ("type", "zope"),
    ("type", "websocket"),
    ("health-check-http-method", "OPTIONS"),
    ("default-path", ""),
    ("default-path", "/site/front"),
    ("health-check-http-path", "/"),
    ("health-check-http-path", "/status?full=1"),
    ("path", "/VirtualHostBase/whatever"),
    ("server-alias", "a.example.com *.example.com"),
    ("ciphers", "ECDHE-RSA-AES256-GCM-SHA384 AES128-SHA"),
    ("ssl_crt", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
    ("url-netloc-list", "10.0.0.1:80 [2001:db8::2]:8080"),
    ("ssl_key", "k" * 65536),  # exactly at the limit
    ("custom_domain", "d" * 253),
    ("strict-transport-security", 0),
    ("strict-transport-security", "31536000"),
    ("backend-connect-retries", 0),
    ("backend-connect-retries", "10"),
    ("health-check-rise", 2147483647),
    ("health-check-fall", "0000000001"),  # leading zeros: still a decimal integer
]
GOOD += [(name, flag) for name in FLAGS for flag in ("false", "true")]
GOOD += [(name, value) for name, (low, high) in INTEGERS.items() for value in (low, high)]
GOOD += [(name, str(low)) for name, (low, high) in INTEGERS.items()]
GOOD += [(name, str(high)) for name, (low, high) in INTEGERS.items()]


@pytest.mark.parametrize(("name", "value"), GOOD)
def test_good_value(name: str, value: Any) -> None:
    assert schema_problems({name: value}) == ([], [])


def test_typical_request_is_clean() -> None:
    parameters = {
        "custom_domain": "www.example.com",
        "url": "https://backend.example.com",
        "enable_cache": "true",
        "https-only": "false",
        "virtualhostroot-http-port": "8080",
        "server-alias": "example.com",
    }
    assert schema_problems(parameters) == ([], [])
    assert schema_problems(MappingProxyType(parameters)) == ([], [])


# ---------------------------------------------------------------- bad values: exact wording

BAD: list[tuple[str, Any, str]] = [
    # enum
    ("enable_cache", "yes", 'enable_cache: must be "false" or "true" (got "yes")'),
    ("enable-http2", "True", 'enable-http2: must be "false" or "true" (got "True")'),
    ("health-check", "", 'health-check: must be "false" or "true" (got "")'),
    (
        "type",
        "static",
        'type: must be one of "", "notebook", "redirect", "websocket" or "zope" (got "static")',
    ),
    (
        "health-check-http-method",
        "get",
        'health-check-http-method: must be one of "CONNECT", "GET", "OPTIONS" or "POST" '
        '(got "get")',
    ),
    # pattern
    ("url", "gopher://x", 'url: must be a URL starting with http://, https:// or ftp://, without spaces (got "gopher://x")'),
    ("url", "http://", 'url: must be a URL starting with http://, https:// or ftp://, without spaces (got "http://")'),
    ("url", "backend.example.com", 'url: must be a URL starting with http://, https:// or ftp://, without spaces '
     '(got "backend.example.com")'),
    ("https-url", "http://a", 'https-url: must be a URL starting with https://, without spaces (got "http://a")'),
    (
        "health-check-failover-https-url",
        "ftp://a",
        'health-check-failover-https-url: must be a URL starting with https://, without spaces (got "ftp://a")',
    ),
    ("default-path", "front", 'default-path: must be empty or a path starting with /, without spaces (got "front")'),
    ("health-check-http-path", "", 'health-check-http-path: must be a path starting with /, without spaces (got "")'),
    # integer range, integer form
    (
        "virtualhostroot-http-port",
        70000,
        "virtualhostroot-http-port: must be an integer from 1 to 65535 (got 70000)",
    ),
    (
        "virtualhostroot-https-port",
        0,
        "virtualhostroot-https-port: must be an integer from 1 to 65535 (got 0)",
    ),
    ("backend-connect-retries", -1,
     "backend-connect-retries: must be an integer from 0 to 10 (got -1)"),
    ("backend-connect-retries", 11,
     "backend-connect-retries: must be an integer from 0 to 10 (got 11)"),
    ("health-check-timeout", 301,
     "health-check-timeout: must be an integer from 1 to 300 (got 301)"),
    ("health-check-rise", 0, "health-check-rise: must be an integer from 1 to 2147483647 (got 0)"),
    (
        "strict-transport-security",
        2**31,
        "strict-transport-security: must be an integer from 0 to 2147483647 (got 2147483648)",
    ),
    # integer range, string form (checked in code, same wording)
    (
        "virtualhostroot-http-port",
        "70000",
        'virtualhostroot-http-port: must be an integer from 1 to 65535 (got "70000")',
    ),
    ("request-timeout", "0", 'request-timeout: must be an integer from 1 to 3600 (got "0")'),
    ("request-timeout", "3601", 'request-timeout: must be an integer from 1 to 3600 (got "3601")'),
    (
        "health-check-fall",
        "9999999999",
        'health-check-fall: must be an integer from 1 to 2147483647 (got "9999999999")',
    ),
    # not digits at all
    ("request-timeout", "", 'request-timeout: must be an integer from 1 to 3600 (got "")'),
    ("request-timeout", "-5", 'request-timeout: must be an integer from 1 to 3600 (got "-5")'),
    ("request-timeout", " 30", 'request-timeout: must be an integer from 1 to 3600 (got " 30")'),
    ("request-timeout", "30\n", 'request-timeout: must be an integer from 1 to 3600 (got "30\\n")'),
    ("request-timeout", "3e2", 'request-timeout: must be an integer from 1 to 3600 (got "3e2")'),
    ("request-timeout", "٣", 'request-timeout: must be an integer from 1 to 3600 (got "\\u0663")'),
    (
        "request-timeout",
        "12345678901",
        'request-timeout: must be an integer from 1 to 3600 (got "12345678901")',
    ),
    # type errors
    ("enable_cache", {"a": 1}, "enable_cache: must be a string (got an object)"),
    ("enable_cache", ["true"], "enable_cache: must be a string (got an array)"),
    ("enable_cache", None, "enable_cache: must be a string (got null)"),
    ("enable_cache", True, "enable_cache: must be a string (got true)"),
    ("url", 42, "url: must be a string (got 42)"),
    ("custom_domain", 1.5, "custom_domain: must be a string (got 1.5)"),
    ("ssl_crt", False, "ssl_crt: must be a string (got false)"),
    ("request-timeout", True, "request-timeout: must be an integer from 1 to 3600 (got true)"),
    ("request-timeout", None, "request-timeout: must be an integer from 1 to 3600 (got null)"),
    ("request-timeout", {}, "request-timeout: must be an integer from 1 to 3600 (got an object)"),
    ("request-timeout", [30], "request-timeout: must be an integer from 1 to 3600 (got an array)"),
    ("request-timeout", 30.5, "request-timeout: must be an integer from 1 to 3600 (got 30.5)"),
    ("request-timeout", 30.0, "request-timeout: must be an integer from 1 to 3600 (got 30.0)"),
    # too long: the value is not echoed
    ("ssl_crt", MEGABYTE, "ssl_crt: is too long (1048576 characters, at most 65536)"),
    ("custom_domain", "d" * 254, "custom_domain: is too long (254 characters, at most 253)"),
    ("url", "http://" + "u" * 2042, "url: is too long (2049 characters, at most 2048)"),
    ("server-alias", "a " * 4097, "server-alias: is too long (8194 characters, at most 8192)"),
    ("enable_cache", "t" * 1025, "enable_cache: is too long (1025 characters, at most 1024)"),
    ("path", "/" * 1025, "path: is too long (1025 characters, at most 1024)"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_bad_value_exact_message(name: str, value: Any, message: str) -> None:
    assert schema_problems({name: value}) == ([message], [])


@pytest.mark.parametrize("name", FLAGS)
def test_every_flag_refuses_other_words(name: str) -> None:
    assert schema_problems({name: "on"}) == ([f'{name}: must be "false" or "true" (got "on")'], [])


@pytest.mark.parametrize(("name", "bounds"), INTEGERS.items())
def test_every_integer_refuses_out_of_range_in_both_forms(
    name: str, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    problem = f"{name}: must be an integer from {low} to {high}"
    for value in (low - 1, high + 1):
        assert schema_problems({name: value}) == ([f"{problem} (got {value})"], [])
    if low > 0:
        assert schema_problems({name: str(low - 1)}) == ([f'{problem} (got "{low - 1}")'], [])
    if high < 9999999999:
        assert schema_problems({name: str(high + 1)}) == ([f'{problem} (got "{high + 1}")'], [])


@pytest.mark.parametrize("name", [*MAX_LENGTHS, *OTHER_STRINGS])
def test_every_string_refuses_one_character_too_many(name: str) -> None:
    limit = MAX_LENGTHS.get(name, 1024)
    errors, warnings = schema_problems({name: "/" * (limit + 1)})
    assert errors == [f"{name}: is too long ({limit + 1} characters, at most {limit})"]
    assert warnings == []


# ---------------------------------------------------------------- shape of the report


def test_every_violation_is_reported_once_sorted() -> None:
    errors, warnings = schema_problems(
        {
            "url": "gopher://x",
            "enable_cache": "yes",
            "virtualhostroot-http-port": "0",
            "type": ["zope"],
            "https-only": "true",
            "zzz": 1,
            "aaa": 2,
        }
    )
    assert errors == [
        'enable_cache: must be "false" or "true" (got "yes")',
        "type: must be a string (got an array)",
        'url: must be a URL starting with http://, https:// or ftp://, without spaces (got "gopher://x")',
        'virtualhostroot-http-port: must be an integer from 1 to 65535 (got "0")',
    ]
    assert warnings == [
        "aaa: unknown parameter, not forwarded to the CDN",
        "zzz: unknown parameter, not forwarded to the CDN",
    ]


def test_one_message_per_parameter_most_useful_first() -> None:
    # a long non-URL breaks maxLength and pattern: only the length is reported
    assert schema_problems({"url": "g" * 3000}) == (
        ["url: is too long (3000 characters, at most 2048)"],
        [],
    )
    # a number for an enum breaks type and enum: the type is reported
    assert schema_problems({"type": 3}) == (["type: must be a string (got 3)"], [])


def test_unknown_parameters_are_warnings_with_a_safe_name() -> None:
    errors, warnings = schema_problems({"k" * 10_000: "v", "bad\x1b[2Jname\n": "v", "é": 1})
    assert errors == []
    assert warnings == sorted(
        [
            "k" * 57 + "...: unknown parameter, not forwarded to the CDN",
            "bad\\u001b[2Jname\\n: unknown parameter, not forwarded to the CDN",
            "\\u00e9: unknown parameter, not forwarded to the CDN",
        ]
    )


def test_values_are_json_escaped_and_cut_to_60_characters() -> None:
    (message,), _ = schema_problems({"url": "gopher://" + "\x00\n\u202e😀" * 50})
    shown = message.split("(got ", 1)[1][:-1]
    assert len(shown) <= 60
    assert shown.startswith('"gopher://\\u0000\\n\\u202e\\ud83d\\ude00')
    assert shown.endswith('..."')
    assert message.isascii() and message.isprintable()
    (message,), _ = schema_problems({"request-timeout": -(10**100)})
    assert message == (
        "request-timeout: must be an integer from 1 to 3600 (got -" + "1" + "0" * 55 + "...)"
    )


def test_messages_are_deterministic_and_never_echo_a_huge_value() -> None:
    hostile = {
        "ssl_crt": MEGABYTE,
        "url": "gopher://" + MEGABYTE,
        "request-timeout": MEGABYTE,
        "enable_cache": MEGABYTE,
        MEGABYTE: MEGABYTE,
        "custom_domain": {"nested": [MEGABYTE]},
    }
    first = schema_problems(hostile)
    second = schema_problems(dict(reversed(list(hostile.items()))))
    assert first == second
    errors, warnings = first
    assert len(errors) == 5 and len(warnings) == 1
    for message in errors + warnings:
        assert len(message) < 200
        assert "A" * 61 not in message
        assert not re.search(r"0x[0-9a-f]{6,}|object at", message)


def test_not_an_object_is_an_error_not_an_exception() -> None:
    for value in (None, [], "text", 3, True):
        errors, warnings = schema_problems(value)  # type: ignore[arg-type]
        assert len(errors) == 1 and errors[0].startswith("parameters: must be an object (got ")
        assert warnings == []


def test_input_is_not_modified() -> None:
    parameters = {"enable_cache": "yes", "request-timeout": {"a": [1]}, "extra": None}
    copy = json.loads(json.dumps(parameters))
    schema_problems(parameters)
    assert parameters == copy


def test_from_a_json_document() -> None:
    document = '{"url": "https://b.example", "health-check-timeout": "2", "unknown-x": {"a": 1}}'
    assert schema_problems(json.loads(document)) == (
        [],
        ["unknown-x: unknown parameter, not forwarded to the CDN"],
    )


# ---------------------------------------------------------------- fuzz: odd values everywhere


def _deep(depth: int) -> Any:
    value: Any = []
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 80, 65535, 65536, 2**31, 2**63, -(2**63), 10**400, 10**5000,
    -(10**5000), 0.0, -0.0, 1.0, 80.0, 1e308, -1e308, 5e-324, float("inf"), float("nan"),
    "", " ", "0", "80", "080", "-0", "+1", "1_000", "0x10", "1e3", "١٢", "80\n", "\n80",
    "true", "false", "TRUE", "http://", "https://x", "ftp://x", "/", "\x00", "\x1b[31mred",
    "\u202eevil", "\ud800", "😀" * 100, "line1\nline2\r\n", "\t" * 5000, "x" * 1025,
    "9" * 11, "9" * 4000, "A" * (1 << 20), "/" + "é" * (1 << 20),
    {}, [], {"a": {"b": {"c": [1, 2, {"d": None}]}}}, [[[[[]]]]], [None, True, "x"],
    {"": ""}, _deep(50_000), ("tuple",), {1, 2}, b"bytes", object(),
]  # fmt: skip


def test_fuzz_odd_values_in_every_field_never_raise() -> None:
    fields = [*REFERENCE_PARAMETERS, "not-a-parameter"]
    for value in ODD_VALUES:
        together: dict[str, Any] = {}
        for name in fields:
            together[name] = value
            errors, warnings = schema_problems({name: value})
            for message in errors + warnings:
                assert isinstance(message, str)
                assert message.startswith(f"{name}: ")
                assert len(message) < 300, message
                assert message.isascii() and message.isprintable(), message
            assert len(errors) <= 1
            assert len(warnings) == (name == "not-a-parameter")
        errors, warnings = schema_problems(together)
        assert len(set(m.split(":", 1)[0] for m in errors)) == len(errors)
        assert schema_problems(together) == (errors, warnings)


def test_fuzz_odd_parameter_names_never_raise() -> None:
    names: list[Any] = ["", " ", "\x00", "😀" * 40, "\ud800", "a" * 100_000, 1, None, (1, 2)]
    errors, warnings = schema_problems({n: "v" for n in names})
    assert errors == []
    assert len(warnings) == len(names)
    for message in warnings:
        assert message.isascii() and message.isprintable(), message
        assert len(message) < 120


# ---------------------------------------------------------------- speed


def test_typical_request_takes_well_under_a_millisecond() -> None:
    parameters = {
        "custom_domain": "www.example.com",
        "url": "https://backend.example.com",
        "enable_cache": "true",
        "https-only": "false",
        "virtualhostroot-http-port": "8080",
    }
    schema_problems(parameters)  # warm up
    runs = 500
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(runs):
            schema_problems(parameters)
        best = min(best, (time.perf_counter() - start) / runs)
    assert best < 0.001, f"{best * 1e6:.0f} µs per call"

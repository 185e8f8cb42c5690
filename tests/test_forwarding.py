"""What validation lets through to the technical CDN (issue 10, properties 3, 4, 5, 10b).

Pure tests of validate(): control characters, anchored patterns, unknown
parameters (dropped, refused when they can name a host, forwarded only when
the operator says so), SlapOS's "_" wrapper, and "verify the backend"
switches without a CA.
"""

from __future__ import annotations

import json

import pytest
import trustme
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdnreq.model import digest
from cdnreq.validate.encoding import encoding_problems
from cdnreq.validate.policy import ValidationPolicy
from cdnreq.validate.schema import KNOWN_PARAMETERS, SCHEMA, schema_problems
from cdnreq.validate.text import PEM_FIELDS
from cdnreq.validate.verdict import validate

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
FORWARD = ValidationPolicy(forward_unknown=True)
BASE = {"url": "https://backend.example"}
HOSTILE_RUN: list[str] = []  # every hostile input validated here, counted in the summary


def refused(parameters: dict, policy: ValidationPolicy = ValidationPolicy()) -> tuple[str, ...]:
    HOSTILE_RUN.append("x")
    verdict = validate(parameters, policy)
    assert verdict.errors, f"accepted: {parameters!r:.200}"
    return verdict.errors


@pytest.fixture(scope="module", autouse=True)
def count_hostile():
    yield
    print(f"\ntest_forwarding: {len(HOSTILE_RUN)} hostile inputs validated")


# -- 3. control characters and anchored patterns ------------------------------------------

FORBIDDEN = (
    [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
       "\u2066", "\u2067", "\u2068", "\u2069", "\ud800", "\udfff", "\ufffe", "\uffff"]
)
PLAIN_STRINGS = sorted(
    n for n, p in SCHEMA["properties"].items()
    if n not in PEM_FIELDS and (p.get("type") == "string" or any(b.get("type") == "string" for b in p.get("anyOf", ())))
)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("path", "/a\r\nX-Injected: 1",
         'path: must not contain the control character U+000D at character 3 (got "/a\\r\\nX-Injected: 1")'),
        ("disabled-cookie-list", "a\x00b", 'disabled-cookie-list: must not contain the control character U+0000'
         ' at character 2 (got "a\\u0000b")'),
        ("websocket-path-list", "/ws\x1b[2J", "websocket-path-list: must not contain the control character U+001B"
         ' at character 4 (got "/ws\\u001b[2J")'),
        ("path", "/\u202eevil", 'path: must not contain the bidirectional control U+202E at character 2'
         ' (got "/\\u202eevil")'),
        ("path", "/a\u2028b", 'path: must not contain the line separator U+2028 at character 3 (got "/a\\u2028b")'),
        # XML cannot carry it: a master keeping parameters as XML refuses the request
        ("path", "/a\uffff", 'path: must not contain the non-character U+FFFF at character 3 (got "/a\\uffff")'),
        # a lone surrogate is refused first by the encoding check (cdnreq/validate/encoding.py)
        ("path", "/a\ud800", "path: the value holds a lone surrogate ('\\ud800' at character 2)"),
    ],
)
def test_a_control_character_is_refused_naming_the_field_and_showing_it_escaped(name, value, message) -> None:
    assert refused({**BASE, name: value}) == (message,)


@SETTINGS
@given(st.sampled_from(PLAIN_STRINGS), st.text(max_size=20), st.sampled_from(FORBIDDEN), st.text(max_size=20))
def test_any_forbidden_character_in_any_known_string_field_is_refused(name, head, char, tail) -> None:
    errors = refused({**BASE, name: head + char + tail} if name != "url" else {name: head + char + tail})
    assert any(e.startswith(f"{name}: ") for e in errors), errors
    assert all(e.isascii() and e.isprintable() for e in errors)


@SETTINGS
@given(st.sampled_from(sorted(PEM_FIELDS)),
       st.sampled_from([c for c in FORBIDDEN if c not in "\t\r\n" and not "\ud800" <= c <= "\udfff"]))
def test_pem_fields_refuse_controls_but_line_breaks_and_tabs(name, char) -> None:
    value = "-----BEGIN CERTIFICATE-----\nMIIB" + char + "\n-----END CERTIFICATE-----\n"
    errors = refused({**BASE, name: value})
    assert errors == (
        f"{name}: must not contain {errors[0].split('must not contain ', 1)[1].split(' at ')[0]} at character 33;"
        " PEM text may hold line breaks and tabs only",
    )
    assert "MIIB" not in errors[0]  # never the content of a PEM field


def test_pem_with_crlf_line_breaks_is_accepted() -> None:
    ca = trustme.CA()
    pem = ca.cert_pem.bytes().decode().replace("\n", "\r\n")
    verdict = validate({**BASE, "ssl_proxy_ca_crt": pem, "ssl-proxy-verify": "true"})
    assert verdict.ok, verdict.errors


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("url", "https://x\n"), ("url", "https://x\nfoo"), ("https-url", "https://x\n"),
        ("health-check-failover-url", "http://x\n"), ("health-check-failover-https-url", "https://x\n"),
        ("health-check-http-path", "/path\n"), ("default-path", "/path\n"), ("default-path", "\n"),
        ("url", "https://x y"), ("health-check-http-path", "/a b"),
        ("request-timeout", "30\n"),
    ],
)
def test_patterns_are_anchored_at_the_true_end(name: str, value: str) -> None:
    """jsonschema uses re.search, and Python's $ matches before a final newline."""
    errors, _ = schema_problems({name: value})
    assert len(errors) == 1 and errors[0].startswith(f"{name}: "), errors


def test_every_schema_pattern_ends_at_the_true_end_of_the_string() -> None:
    patterns = [
        b["pattern"] for p in SCHEMA["properties"].values() for b in [p, *p.get("anyOf", ())] if "pattern" in b
    ]
    assert patterns and all(p.endswith("(?![\\s\\S])") and "$" not in p for p in patterns)


# -- 4. unknown parameters ------------------------------------------------------------------

HOST_NAMES = ["domain", "Domain", "DOMAIN", "custom-domain", "extra_domain", "domain_name", "alias",
              "server_alias", "serveralias", "host", "Host", "hostname", "vhost", "server-name",
              "server_name", "ServerName", "\uff44\uff4f\uff4d\uff41\uff49\uff4e"]


@pytest.mark.parametrize("name", HOST_NAMES)
@pytest.mark.parametrize("policy", [ValidationPolicy(), FORWARD], ids=["default", "forward_unknown"])
def test_an_unknown_name_that_can_carry_a_host_is_an_error_whatever_the_switch(name, policy) -> None:
    errors = refused({**BASE, name: "victim.example"}, policy)
    assert len(errors) == 1 and "could name a host, refused" in errors[0]
    assert errors[0].startswith(json.dumps(name)[1:-1] + ": ")


def test_unknown_keys_are_dropped_with_a_warning_and_the_hash_is_of_what_is_forwarded() -> None:
    params = {**BASE, "foo": "bar", "n": {"deep": [1]}}
    verdict = validate(params)
    assert verdict.ok and verdict.forward == BASE
    assert verdict.forward_hash == digest(BASE)
    assert verdict.warnings == (
        "foo: unknown parameter, not forwarded to the CDN",
        "n: unknown parameter, not forwarded to the CDN",
    )
    assert validate(BASE).forward is None  # only known keys: forwarded as listed, no copy


def test_the_operator_may_forward_other_unknown_keys_still_checked() -> None:
    params = {**BASE, "foo": "bar", "n": {"deep": [1, None, True, 2.5]}}
    verdict = validate(params, FORWARD)
    assert verdict.ok and verdict.forward is None  # as listed
    assert verdict.warnings == (
        "foo: unknown parameter, forwarded to the CDN unchecked",
        "n: unknown parameter, forwarded to the CDN unchecked",
    )
    for bad in ({"foo": "a\r\nb"}, {"foo": {"k": ["x\x00"]}}, {"foo\n": "x"}, {"foo": float("inf")},
                {"foo": {"k\x1b": 1}}, {"foo": ("not", "json")}, {"foo": [2**64]}):
        errors = refused({**BASE, **bad}, FORWARD)
        assert len(errors) == 1 and errors[0].startswith(json.dumps(next(iter(bad)))[1:-1] + ": "), errors
        # dropped by default: nothing to refuse but what cannot be encoded at all (issue 10, 1)
        assert validate({**BASE, **bad}).errors == tuple(encoding_problems({**BASE, **bad}))


# -- 5. SlapOS's "_" --------------------------------------------------------------------------


def wrapped(inner: dict) -> dict:
    return {"_": json.dumps(inner)}


def test_underscore_is_unwrapped_validated_and_forwarded_unwrapped() -> None:
    inner = {"url": "https://backend.example", "custom_domain": "Shop.Example.com.", "enable_cache": "true"}
    verdict = validate(wrapped(inner))
    assert verdict.ok
    assert verdict.custom_domain == "shop.example.com" and verdict.hosts == ("shop.example.com",)
    assert verdict.forward == {**inner, "custom_domain": "shop.example.com"}
    assert verdict.forward_hash == digest(dict(verdict.forward))
    plain = validate({"url": "https://backend.example"}, FORWARD)
    unwrapped = validate(wrapped({"url": "https://backend.example"}))
    assert unwrapped.forward == {"url": "https://backend.example"} and plain.forward is None
    assert unwrapped.forward_hash == digest({"url": "https://backend.example"})


@pytest.mark.parametrize(
    "inner",
    [
        {"url": "https://b.example", "domain": "victim.example"},
        {"url": "http://2130706433/"},
        {"url": "https://b.example", "path": "/a\r\nb"},
        {"url": "https://b.example", "enable_cache": "yes"},
        {"url": "https://b.example", "ssl-proxy-verify": "true"},
    ],
)
def test_underscore_content_is_checked_exactly_as_if_sent_directly(inner: dict) -> None:
    direct = validate(inner)
    assert not direct.ok
    assert refused(wrapped(inner)) == direct.errors


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"_": "{}", "url": "https://b.example"},
         "_: SlapOS's serialised parameters must come alone, not next to url"),
        ({"_": "[1, 2]"}, "_: must hold a JSON object (got an array)"),
        ({"_": '"text"'}, '_: must hold a JSON object (got "text")'),
        ({"_": "{bad"}, "_: is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
        ({"_": '{"url": NaN}'}, "_: is not valid JSON (NaN is not JSON)"),
        ({"_": '{"ssl_key": "-----BEGIN PRIVATE KEY-----MIIE", "url": "https://b.example"'},
         "_: is not valid JSON (Expecting ',' delimiter at line 1 column 74)"),  # where, never what
        ({"_": "[" * 30_000 + "]" * 30_000}, "_: is not valid JSON (nested too deeply)"),
        ({"_": {"url": "https://b.example"}}, "_: must be a string holding a JSON object (got an object)"),
        ({"_": None}, "_: must be a string holding a JSON object (got null)"),
        ({"_": json.dumps({"_": "{}"})}, '_: must not hold another "_"'),
        ({"_": "[" * 60_000}, None),
    ],
)
def test_underscore_that_cannot_be_used_is_refused_naming_it(parameters: dict, message: str | None) -> None:
    errors = refused(parameters)
    assert len(errors) == 1 and errors[0].startswith("_: ")
    if message is not None:
        assert errors[0] == message
    assert validate(parameters).forward is None


# -- 10b. verify the backend without a CA -------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"ssl-proxy-verify": "true"},
         'ssl-proxy-verify: "true" needs ssl_proxy_ca_crt (the backend\'s CA certificate), which is missing'),
        ({"ssl-proxy-verify": "true", "ssl_proxy_ca_crt": ""},
         'ssl-proxy-verify: "true" needs ssl_proxy_ca_crt (the backend\'s CA certificate), which is empty'),
        ({"health-check-failover-ssl-proxy-verify": "true"},
         'health-check-failover-ssl-proxy-verify: "true" needs health-check-failover-ssl-proxy-ca-crt'
         " (the failover backend's CA certificate), which is missing"),
        ({"health-check-failover-ssl-proxy-verify": "true", "health-check-failover-ssl-proxy-ca-crt": ""},
         'health-check-failover-ssl-proxy-verify: "true" needs health-check-failover-ssl-proxy-ca-crt'
         " (the failover backend's CA certificate), which is empty"),
    ],
)
def test_verify_switch_without_its_ca_is_refused_naming_both_fields(parameters: dict, message: str) -> None:
    assert refused({**BASE, **parameters}) == (message,)


def test_verify_switch_false_or_with_a_ca_is_fine_and_a_bad_ca_is_reported_once() -> None:
    assert validate({**BASE, "ssl-proxy-verify": "false"}).ok
    pem = trustme.CA().cert_pem.bytes().decode()
    assert validate({**BASE, "ssl-proxy-verify": "true", "ssl_proxy_ca_crt": pem}).ok
    errors = refused({**BASE, "ssl-proxy-verify": "true", "ssl_proxy_ca_crt": 5})
    assert errors == ("ssl_proxy_ca_crt: must be a string (got 5)",)


def test_only_known_or_allowed_keys_are_ever_forwarded() -> None:
    """Whatever goes in, an accepted verdict forwards known keys only (default policy)."""
    for params in ({**BASE, "x": 1}, wrapped({**BASE, "y": "z"}), {**BASE}):
        verdict = validate(params)
        forwarded = verdict.forward if verdict.forward is not None else params
        assert verdict.ok and set(forwarded) <= KNOWN_PARAMETERS


@SETTINGS
@given(st.deferred(lambda: _hostile_parameters()))
def test_underscore_gives_the_same_verdict_as_the_parameters_sent_directly(params: dict) -> None:
    """Any parameters, hostile ones included: wrapped in "_" they are judged the same."""
    params = {k: v for k, v in params.items() if k != "_"}
    HOSTILE_RUN.append("x")
    direct, unwrapped = validate(params), validate(wrapped(params))
    # the wrapper's own bytes count against the size cap: judged alike below it
    assume(not any("max_parameters_bytes" in e for e in direct.errors + unwrapped.errors))
    assert (unwrapped.errors, unwrapped.warnings, unwrapped.hosts) == (direct.errors, direct.warnings, direct.hosts)
    if direct.ok:
        assert dict(unwrapped.forward) == dict(direct.forward if direct.forward is not None else params)


def _hostile_parameters():
    from test_faults_hostile import parameters  # the hostile strategy of issue 6

    return parameters

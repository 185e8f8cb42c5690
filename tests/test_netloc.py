"""cdnreq.validate.netloc: *-netloc-list parameters."""

from __future__ import annotations

import time

import pytest

from cdnreq.validate.netloc import MAX_NETLOCS, parse_netloc_list

P = "url-netloc-list"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", []),
        ("   \n\t", []),
        ("example.com:443", ["example.com:443"]),
        ("Backend.EXAMPLE.com.:8080", ["backend.example.com:8080"]),
        ("bücher.example:80", ["xn--bcher-kva.example:80"]),
        ("192.0.2.10:80", ["192.0.2.10:80"]),
        ("[2001:db8::1]:443", ["[2001:db8::1]:443"]),
        ("[2001:DB8:0:0:0:0:0:1]:443", ["[2001:db8::1]:443"]),
        ("[::1]:8443", ["[::1]:8443"]),
        ("example.com:1 example.com:65535", ["example.com:1", "example.com:65535"]),
        ("example.com:0443", ["example.com:443"]),
        (
            "a.example.com:80\tb.example.com:80\n  192.0.2.1:8080 [2001:db8::2]:80",
            ["a.example.com:80", "b.example.com:80", "192.0.2.1:8080", "[2001:db8::2]:80"],
        ),
        # duplicates, after normalisation, keep the first position
        (
            "b.example.com:80 a.example.com:80 B.example.com.:80 b.example.com:080",
            ["b.example.com:80", "a.example.com:80"],
        ),
        ("[2001:db8::1]:443 [2001:DB8::0:1]:443", ["[2001:db8::1]:443"]),
        ("xn--bcher-kva.example:80 bücher.example:80", ["xn--bcher-kva.example:80"]),
    ],
)
def test_good(raw: str, expected: list[str]) -> None:
    assert parse_netloc_list(raw, P) == (expected, [])


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("example.com:abc", 'has port "abc"; the port must be a number from 1 to 65535'),
        ("example.com", "has no port; write host:port"),
        ("example.com:", "has an empty port"),
        ("example.com:0", 'has port "0"'),
        ("example.com:99999", 'has port "99999"'),
        ("example.com:65536", 'has port "65536"'),
        ("example.com:-1", 'has port "-1"'),
        ("example.com:+80", 'has port "+80"'),
        ("example.com:\u0664\u0664\u0663", "the port must be a number"),  # Arabic-Indic digits
        ("example.com:" + "9" * 5000, "the port must be a number"),
        ("[::1]", "has no port; write [address]:port"),
        ("[::1]:", "has an empty port"),
        ("[::1]80", "is not a bracketed IPv6 address followed by a port"),
        ("[::1", "is not a bracketed IPv6 address followed by a port"),
        ("::1:80", "put it in brackets"),
        ("2001:db8::1:443", "put it in brackets"),
        ("[example.com]:80", "which is not an IPv6 address"),
        ("[192.0.2.1]:80", "which is not an IPv6 address"),
        ("[fe80::1%eth0]:80", "zone index"),
        ("example.com]:80", "misplaced brackets"),
        (":80", "has no host before the port"),
        ("256.1.1.1:80", "neither a host name nor a dotted-quad IPv4 address"),
        ("1.2.3:80", "neither a host name nor a dotted-quad IPv4 address"),
        ("010.0.0.1:80", "neither a host name nor a dotted-quad IPv4 address"),
        ("0x7f.0.0.1:80", "neither a host name nor a dotted-quad IPv4 address"),
        ("192.0.2.1.:80", "neither a host name nor a dotted-quad IPv4 address"),
        ("localhost:80", "at least two labels"),
        ("a_b.example.com:80", "letters, digits and hyphens"),
        ("*.example.com:80", "wildcards"),
        ("{{backend}}:80", "template text"),
        ("http://example.com:80", "contains a URL scheme"),
        ("http://example.com", "contains a URL scheme"),
        ("example.com:80/path", "contains a path"),
        ("user@example.com:80", "contains user information"),
        ("xn--zz.example:80", "not valid punycode"),
    ],
)
def test_bad(entry: str, reason: str) -> None:
    netlocs, errors = parse_netloc_list(f"good.example.com:80 {entry}", P)
    assert netlocs == ["good.example.com:80"]
    assert len(errors) == 1, errors
    error = errors[0]
    assert error.startswith(f"{P}: "), error
    assert reason in error, error
    assert len(error) < 400


def test_error_names_parameter_and_entry() -> None:
    assert parse_netloc_list("example.com:abc", "https-url-netloc-list") == (
        [],
        [
            'https-url-netloc-list: "example.com:abc" has port "abc"; '
            "the port must be a number from 1 to 65535"
        ],
    )


def test_one_bad_entry_does_not_stop_the_others() -> None:
    netlocs, errors = parse_netloc_list(
        "example.com:abc a.example.com:80 [::1] b.example.com:443 host.example:0", P
    )
    assert netlocs == ["a.example.com:80", "b.example.com:443"]
    assert len(errors) == 3


def test_limit() -> None:
    ok = " ".join(f"h{i}.example.com:80" for i in range(MAX_NETLOCS))
    netlocs, errors = parse_netloc_list(ok, P)
    assert errors == [] and len(netlocs) == MAX_NETLOCS
    netlocs, errors = parse_netloc_list(ok + " x.example.com:80", P)
    assert netlocs == []
    assert errors == [f"{P}: more than {MAX_NETLOCS} entries given; at most {MAX_NETLOCS} are allowed"]


@pytest.mark.parametrize(
    "raw",
    [
        "a" * 1_000_000,
        "a:" * 500_000,
        "[" * 1_000_000,
        "\x00" * 1_000_000,
        "example.com:" + "1" * 1_000_000,
        "x:1 " * 250_000,
    ],
)
def test_megabyte_input_is_quick(raw: str) -> None:
    start = time.perf_counter()
    netlocs, errors = parse_netloc_list(raw, P)
    assert time.perf_counter() - start < 1.0
    assert len(errors) <= 1
    assert all(len(error) < 400 for error in errors)


@pytest.mark.parametrize("raw", [None, 42, b"example.com:80"])
def test_non_string_never_raises(raw: object) -> None:
    netlocs, errors = parse_netloc_list(raw, P)  # type: ignore[arg-type]
    assert netlocs == []
    assert errors in ([], [f"{P}: must be a string"])


def test_control_characters_escaped_in_errors() -> None:
    netlocs, errors = parse_netloc_list("a\x00b.example.com:80 \x1b[31m:80", P)
    assert netlocs == []
    assert len(errors) == 2
    for error in errors:
        assert "\x00" not in error and "\x1b" not in error

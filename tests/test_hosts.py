"""cdnreq.validate.hosts: the ground truth for host names and who may claim them."""

from __future__ import annotations

import time

import pytest

from cdnreq.validate.hosts import (
    MAX_ALIASES,
    HostError,
    covers,
    normalise_host,
    overlaps,
    parse_aliases,
    proof_names,
    quote_value,
    registrable_domain,
)

LABEL_63 = "a" * 63
# 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253
HOST_253 = ".".join([LABEL_63, LABEL_63, LABEL_63, "b" * 57 + ".com"])
assert len(HOST_253) == 253


# --------------------------------------------------------------------------- #
# normalise_host: accepted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("Shop.EXAMPLE.com.", "shop.example.com"),
        ("SHOP.EXAMPLE.COM", "shop.example.com"),
        ("a-b.example.com", "a-b.example.com"),
        ("1a.example.com", "1a.example.com"),
        ("1.2.3.example", "1.2.3.example"),  # only the last label matters
        ("bücher.example", "xn--bcher-kva.example"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
        ("日本.example", "xn--wgv71a.example"),
        ("公司.cn", "xn--55qx5d.cn"),
        ("faß.de", "xn--fa-hia.de"),  # non-transitional: ß is kept
        ("نامه\u200cای.ir", "xn--mgba3gch31f060k.ir"),  # ZWNJ where IDNA allows it
        ("ＡＢＣ.com", "abc.com"),  # UTS #46 maps full-width letters
        ("shop.xn--p1ai", "shop.xn--p1ai"),
        ("shop.рф", "shop.xn--p1ai"),
        (LABEL_63 + ".com", LABEL_63 + ".com"),
        (HOST_253, HOST_253),
        (HOST_253 + ".", HOST_253),
    ],
)
def test_normalise_accepts(raw: str, expected: str) -> None:
    assert normalise_host(raw) == expected
    # idempotent
    assert normalise_host(expected) == expected


def test_unicode_and_punycode_spellings_are_equal() -> None:
    assert normalise_host("BÜCHER.example.") == normalise_host("xn--bcher-kva.EXAMPLE")


# --------------------------------------------------------------------------- #
# normalise_host: refused


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        (".", "empty"),
        ("com", "at least two labels"),
        ("localhost", "at least two labels"),
        ("example.com..", "empty label"),
        (".example.com", "empty label"),
        ("a..example.com", "empty label"),
        ("xn--zz.example", "not valid punycode"),
        ("xn--.example", "hyphen"),
        ("xn--a.example", "not valid punycode"),
        ("ab--cd.example", "reserved"),
        ("a" * 64 + ".com", "longer than 63"),
        (HOST_253 + "x", "longer than 253"),
        ("é" * 70 + ".com", "internationalised"),
        ("x" * 5000, "longer than 253"),
        ("a_b.example.com", "letters, digits and hyphens"),
        ("_dmarc.example.com", "letters, digits and hyphens"),
        ("a!b.example.com", "letters, digits and hyphens"),
        ("-a.example.com", "hyphen"),
        ("a-.example.com", "hyphen"),
        ("a b.example.com", "whitespace"),
        (" example.com", "whitespace"),
        ("example.com ", "whitespace"),
        ("example.com\n", "whitespace"),
        ("\texample.com", "whitespace"),
        ("example.com\u00a0", "whitespace"),
        ("example.com\x00", "control"),
        ("exa\u202emple.com", "invisible"),  # right-to-left override
        ("exa\u200bmple.com", "invisible"),  # zero-width space, which UTS #46 would drop
        ("exa\u00admple.com", "invisible"),  # soft hyphen, likewise
        ("exa\ufeffmple.com", "invisible"),
        ("{{ custom_domain }}", "whitespace"),
        ("{{custom_domain}}", "template"),
        ("${DOMAIN}.example.com", "template"),
        ("{%x%}.example.com", "template"),
        ("$domain.example.com", "template"),
        ("<%=host%>.example.com", "template"),
        ("http://example.com", "scheme"),
        ("https://example.com/", "scheme"),
        ("example.com:443", "port"),
        ("example.com/path", "path"),
        ("example.com\\path", "path"),
        ("user@example.com", "user information"),
        ("example.com?x=1", "query"),
        ("example.com#frag", "query"),
        ("1.2.3.4", "IP address"),
        ("1.2.3.4.", "IP address"),
        ("127.1", "IP address"),
        ("example.123", "IP address"),
        ("example.0x1f", "IP address"),
        ("１２７.０.０.１", "IP address"),  # full-width digits map to ASCII
        ("[2001:db8::1]", "IP address"),
        ("2001:db8::1", "IP address"),
        ("a\uff0eb.example", "dot"),  # full-width full stop
        ("a\u3002example.com", "dot"),  # ideographic full stop
        ("x\u200dy.example", "joiner"),
        ("\u0661\u0662.example", "right-to-left"),
        ("☃.example", "not allowed"),
        ("*.example.com", "wildcards"),
    ],
)
def test_normalise_refuses(raw: str, reason: str) -> None:
    with pytest.raises(HostError) as info:
        normalise_host(raw)
    message = str(info.value)
    assert reason in message
    assert message.startswith(quote_value(raw) + " is not a valid host name: ")
    assert info.value.value == raw
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("raw", [None, 42, b"example.com", ["example.com"]])
def test_normalise_refuses_non_strings(raw: object) -> None:
    with pytest.raises(HostError, match="not a string"):
        normalise_host(raw)  # type: ignore[arg-type]


def test_error_message_is_quoted_truncated_and_escaped() -> None:
    raw = "a" * 200 + " .com"
    with pytest.raises(HostError) as info:
        normalise_host(raw)
    quoted = str(info.value).split(" is not", 1)[0]
    assert quoted == '"' + "a" * 55 + '..."'
    assert len(quoted) == 60

    with pytest.raises(HostError) as info:
        normalise_host("evil\n2024-01-01 INFO forged.com")
    assert "\n" not in str(info.value)
    assert '"evil\\n2024' in str(info.value)


def test_quote_value() -> None:
    assert quote_value("example.com") == '"example.com"'
    assert quote_value('a"b') == '"a\\"b"'
    assert quote_value("bücher") == '"b\\u00fccher"'
    assert len(quote_value("x" * 1_000_000)) == 60
    # never cut inside an escape
    cut = quote_value("é" * 100)
    assert cut.endswith('..."') and "\\u00e9..." in cut and len(cut) <= 60


# --------------------------------------------------------------------------- #
# wildcards


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*.example.com", "*.example.com"),
        ("*.EXAMPLE.com.", "*.example.com"),
        ("*.shop.example.com", "*.shop.example.com"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("*.co.uk", "*.co.uk"),  # shape only; parse_aliases refuses it by the PSL
        ("example.com", "example.com"),
    ],
)
def test_wildcard_accepted(raw: str, expected: str) -> None:
    assert normalise_host(raw, wildcard=True) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("*", "at least two labels"),
        ("*.", "at least two labels"),
        ("*.com", "at least two labels"),
        ("*example.com", "whole first label"),
        ("a*.example.com", "whole first label"),
        ("a.*.example.com", "whole first label"),
        ("*.*.example.com", "whole first label"),
        ("example.*", "whole first label"),
        ("**.example.com", "whole first label"),
        ("*.1.2.3", "IP address"),
        ("\uff0a.example.com", "not allowed"),  # full-width asterisk
    ],
)
def test_wildcard_refused(raw: str, reason: str) -> None:
    with pytest.raises(HostError, match=reason):
        normalise_host(raw, wildcard=True)


# --------------------------------------------------------------------------- #
# registrable_domain


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        ("www.example.com", "example.com"),
        ("a.b.c.example.com", "example.com"),
        ("shop.co.uk", "shop.co.uk"),
        ("bank.co.uk", "bank.co.uk"),
        ("www.shop.co.uk", "shop.co.uk"),
        ("a.b.shop.co.uk", "shop.co.uk"),
        ("co.uk", None),
        ("com", None),
        ("github.io", None),  # private section
        ("alice.github.io", "alice.github.io"),
        ("www.alice.github.io", "alice.github.io"),
        ("*.co.uk", None),
        ("*.github.io", None),
        ("*.alice.github.io", "alice.github.io"),
        ("*.example.com", "example.com"),
        ("*.www.example.com", "example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("shop.xn--p1ai", "shop.xn--p1ai"),
        ("xn--p1ai", None),
        ("Shop.CO.UK.", "shop.co.uk"),
        ("not a host", None),
        ("", None),
        (None, None),
    ],
)
def test_registrable_domain(host: str, expected: str | None) -> None:
    assert registrable_domain(host) == expected


def test_registrable_domain_is_not_last_two_labels() -> None:
    # Two shops under co.uk are different owners; two hosts under example.com are not.
    assert registrable_domain("shop.co.uk") != registrable_domain("bank.co.uk")
    assert registrable_domain("a.example.com") == registrable_domain("b.example.com")
    assert registrable_domain("alice.github.io") != registrable_domain("bob.github.io")


# --------------------------------------------------------------------------- #
# proof_names


@pytest.mark.parametrize(
    ("host", "registrable", "expected"),
    [
        ("example.com", "example.com", ["example.com"]),
        ("www.example.com", "example.com", ["www.example.com", "example.com"]),
        (
            "a.b.example.com",
            "example.com",
            ["a.b.example.com", "b.example.com", "example.com"],
        ),
        ("*.x.example.com", "example.com", ["x.example.com", "example.com"]),
        ("*.example.com", "example.com", ["example.com"]),
        ("a.b.shop.co.uk", "shop.co.uk", ["a.b.shop.co.uk", "b.shop.co.uk", "shop.co.uk"]),
        ("www.alice.github.io", "alice.github.io", ["www.alice.github.io", "alice.github.io"]),
        # never climbs past the registrable domain, never proves a stranger
        ("evil.com", "example.com", []),
        ("notexample.com", "example.com", []),
        ("example.com", "www.example.com", []),
        ("example.com", "", []),
    ],
)
def test_proof_names(host: str, registrable: str, expected: list[str]) -> None:
    assert proof_names(host, registrable) == expected


def test_proof_names_with_registrable_domain() -> None:
    host = normalise_host("WWW.Shop.co.uk.")
    assert proof_names(host, registrable_domain(host)) == ["www.shop.co.uk", "shop.co.uk"]


# --------------------------------------------------------------------------- #
# covers / overlaps


@pytest.mark.parametrize(
    ("wildcard", "host", "expected"),
    [
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "*.sub.example.com", True),
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "notexample.com", False),
        ("*.example.com", "www.notexample.com", False),
        ("*.example.com", "example.com.evil.com", False),
        ("*.sub.example.com", "*.example.com", False),
        ("*.sub.example.com", "www.example.com", False),
        ("www.example.com", "www.example.com", False),  # not a wildcard
        ("*.", "example.com", False),
        ("*", "example.com", False),
    ],
)
def test_covers(wildcard: str, host: str, expected: bool) -> None:
    assert covers(wildcard, host) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("example.com", "example.com", True),
        ("*.example.com", "www.example.com", True),
        ("www.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", True),
        ("*.a.example.com", "*.example.com", True),
        # the reference judges claims with "*." stripped: apex and wildcard, one owner
        ("*.example.com", "example.com", True),
        ("example.com", "*.example.com", True),
        ("*.example.com", "www.example.org", False),
        ("*.www.example.com", "example.com", False),
        ("www.example.com", "shop.example.com", False),
        ("*.a.example.com", "*.b.example.com", False),
        ("example.com", "example.org", False),
    ],
)
def test_overlaps(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected


# --------------------------------------------------------------------------- #
# parse_aliases


def test_aliases_empty() -> None:
    assert parse_aliases("", "example.com") == ([], [])
    assert parse_aliases("  \t\n ", "example.com") == ([], [])
    assert parse_aliases("", None) == ([], [])
    assert parse_aliases("   ", None) == ([], [])


def test_aliases_good() -> None:
    aliases, errors = parse_aliases(
        "www.example.com\tshop.EXAMPLE.com.\n *.example.com  a.b.example.com", "example.com"
    )
    assert errors == []
    assert aliases == ["www.example.com", "shop.example.com", "*.example.com", "a.b.example.com"]


def test_aliases_psl_private_section() -> None:
    assert parse_aliases("www.alice.github.io", "alice.github.io") == (["www.alice.github.io"], [])
    aliases, errors = parse_aliases("bob.github.io", "alice.github.io")
    assert aliases == []
    assert errors == [
        'server-alias: "bob.github.io" is not under alice.github.io, '
        "the registrable domain of custom_domain"
    ]


def test_aliases_other_registrable_domain() -> None:
    aliases, errors = parse_aliases("www.example.com evil.other.com", "example.com")
    assert aliases == ["www.example.com"]
    assert errors == [
        'server-alias: "evil.other.com" is not under example.com, '
        "the registrable domain of custom_domain"
    ]


def test_aliases_under_co_uk_are_per_shop() -> None:
    aliases, errors = parse_aliases("www.shop.co.uk www.bank.co.uk", "shop.co.uk")
    assert aliases == ["www.shop.co.uk"]
    assert errors == [
        'server-alias: "www.bank.co.uk" is not under shop.co.uk, '
        "the registrable domain of custom_domain"
    ]


@pytest.mark.parametrize("alias", ["*.co.uk", "co.uk", "*.github.io", "github.io", "uk"])
def test_aliases_public_suffix_refused(alias: str) -> None:
    aliases, errors = parse_aliases(alias, "shop.co.uk")
    assert aliases == []
    assert len(errors) == 1
    assert errors[0].startswith(f'server-alias: "{alias}" ')


def test_aliases_without_custom_domain() -> None:
    for custom in (None, ""):
        aliases, errors = parse_aliases("www.example.com other.example.com", custom)
        assert aliases == []
        assert errors == [
            "server-alias: aliases require a custom_domain; set custom_domain or remove server-alias"
        ]


def test_aliases_with_bad_custom_domain() -> None:
    aliases, errors = parse_aliases("www.example.com", "not a host")
    assert aliases == []
    assert len(errors) == 1 and "custom_domain is not a valid host name" in errors[0]
    aliases, errors = parse_aliases("www.co.uk", "co.uk")
    assert aliases == []
    assert len(errors) == 1 and "public suffix" in errors[0]


def test_aliases_duplicates_collapse() -> None:
    aliases, errors = parse_aliases(
        "www.bücher.example WWW.BÜCHER.example. www.xn--bcher-kva.example "
        "shop.bücher.example www.bücher.example",
        "bücher.example",
    )
    assert errors == []
    assert aliases == ["www.xn--bcher-kva.example", "shop.xn--bcher-kva.example"]


def test_alias_equal_to_custom_domain_dropped() -> None:
    assert parse_aliases("example.com EXAMPLE.com. www.example.com", "example.com") == (
        ["www.example.com"],
        [],
    )
    assert parse_aliases("xn--bcher-kva.example", "Bücher.example") == ([], [])


def test_aliases_wildcard_custom_domain() -> None:
    assert parse_aliases("example.com *.example.com", "*.example.com") == (["example.com"], [])


def test_aliases_invalid_entries() -> None:
    aliases, errors = parse_aliases(
        "ok.example.com a_b.example.com http://x.example.com {{alias}} 1.2.3.4 x.example.com:80",
        "example.com",
    )
    assert aliases == ["ok.example.com"]
    assert errors == [
        'server-alias: "a_b.example.com" is not a valid host name: '
        'label "a_b" may contain only letters, digits and hyphens',
        'server-alias: "http://x.example.com" is not a valid host name: '
        "it contains a URL scheme; give only the host name",
        'server-alias: "{{alias}}" is not a valid host name: '
        "it contains template text; give the final host name",
        'server-alias: "1.2.3.4" is not a valid host name: '
        "IP addresses are not accepted; give a host name",
        'server-alias: "x.example.com:80" is not a valid host name: '
        "it contains a port; give only the host name",
    ]


def test_aliases_repeated_bad_entry_reported_once() -> None:
    aliases, errors = parse_aliases("evil.com evil.com EVIL.com", "example.com")
    assert aliases == []
    assert len(errors) == 2  # "evil.com" and "EVIL.com" are quoted as given


def test_aliases_control_characters() -> None:
    aliases, errors = parse_aliases("www.example.com a\x00b.example.com \x1b[31m", "example.com")
    assert aliases == ["www.example.com"]
    assert len(errors) == 2
    for error in errors:
        assert "\x00" not in error and "\x1b" not in error


def test_aliases_limit() -> None:
    ok = " ".join(f"h{i}.example.com" for i in range(MAX_ALIASES))
    aliases, errors = parse_aliases(ok, "example.com")
    assert errors == [] and len(aliases) == MAX_ALIASES

    too_many = ok + " extra.example.com"
    aliases, errors = parse_aliases(too_many, "example.com")
    assert aliases == []
    assert errors == [
        f"server-alias: more than {MAX_ALIASES} entries given; at most {MAX_ALIASES} are allowed"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "a" * 1_000_000,
        "a." * 500_000,
        "é" * 1_000_000,
        "a " * 500_000,
        " " * 1_000_000,
        "\x00" * 1_000_000,
        "www.example.com " * 62_500,
    ],
)
def test_aliases_megabyte_input_is_quick(raw: str) -> None:
    start = time.perf_counter()
    aliases, errors = parse_aliases(raw, "example.com")
    assert time.perf_counter() - start < 1.0
    assert len(errors) <= 1
    assert all(len(error) < 300 for error in errors)


@pytest.mark.parametrize("raw", [None, 42, b"www.example.com"])
def test_aliases_non_string_never_raises(raw: object) -> None:
    aliases, errors = parse_aliases(raw, "example.com")  # type: ignore[arg-type]
    assert aliases == []
    assert errors in ([], ["server-alias: must be a string"])


def test_deterministic() -> None:
    raw = "b.example.com *.example.com a.example.com evil.org"
    assert parse_aliases(raw, "example.com") == parse_aliases(raw, "example.com")


def test_fast_path_agrees_with_full_normalisation(monkeypatch):
    """Names taken by the shortcut are exactly those the full path returns unchanged."""
    import random
    import string

    from cdnreq.validate import hosts

    rnd = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits + "-"
    names = [
        ".".join("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 9))) for _ in range(rnd.randint(1, 4)))
        for _ in range(5000)
    ] + ["xn--bcher-kva.example", "ab--cd.example", "www.0x1f", "a.123", "a" * 64 + ".example"]
    fast = {n: hosts._already_canonical(n) for n in names}
    monkeypatch.setattr(hosts, "_already_canonical", lambda raw: False)
    for name in names:
        try:
            slow = hosts.normalise_host(name)
        except hosts.HostError:
            slow = None
        if fast[name]:
            assert slow == name, name
    assert sum(fast.values()) > 1000  # the shortcut is really exercised

"""cdnreq.validate.ciphers: the ``ciphers`` parameter, checked and normalised."""

from __future__ import annotations

import pytest

from cdnreq.validate.ciphers import (
    LEGACY_NAMES,
    MAX_ENTRIES,
    SUPPORTED_CIPHERS,
    check_ciphers,
)

SUPPORTED_TEXT = " ".join(SUPPORTED_CIPHERS)

# The translation table, written out independently of the module's own table.
EXPECTED_LEGACY = [
    ("ECDHE-ECDSA-WITH-CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("ECDHE-RSA-WITH-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("ECDHE-RSA-AES256-CBC-SHA", "ECDHE-RSA-AES256-SHA"),
    ("ECDHE-RSA-AES128-CBC-SHA", "ECDHE-RSA-AES128-SHA"),
    ("ECDHE-ECDSA-AES256-CBC-SHA", "ECDHE-ECDSA-AES256-SHA"),
    ("ECDHE-ECDSA-AES128-CBC-SHA", "ECDHE-ECDSA-AES128-SHA"),
    ("RSA-AES256-CBC-SHA", "AES256-SHA"),
    ("RSA-AES128-CBC-SHA", "AES128-SHA"),
    ("ECDHE-RSA-3DES-EDE-CBC-SHA", "ECDHE-RSA-DES-CBC3-SHA"),
    ("RSA-3DES-EDE-CBC-SHA", "DES-CBC3-SHA"),
]


def test_tables_are_complete_and_consistent():
    assert len(SUPPORTED_CIPHERS) == 14
    assert len(set(SUPPORTED_CIPHERS)) == 14
    assert dict(EXPECTED_LEGACY) == LEGACY_NAMES
    assert all(new in SUPPORTED_CIPHERS for new in LEGACY_NAMES.values())
    assert not set(LEGACY_NAMES) & set(SUPPORTED_CIPHERS)


@pytest.mark.parametrize("old, new", EXPECTED_LEGACY)
def test_every_legacy_name_is_translated_with_a_warning(old, new):
    assert check_ciphers(old) == (
        new,
        [f'ciphers: "{old}" is an old name, used as "{new}"'],
        [],
    )


@pytest.mark.parametrize("name", SUPPORTED_CIPHERS)
def test_every_supported_name_is_accepted_silently(name):
    assert check_ciphers(name) == (name, [], [])


# (raw, normalised, warnings, errors)
CASES = [
    ("", "", [], []),
    ("   ", "", [], []),
    ("\t\n \r\n", "", [], []),
    ("AES256-SHA", "AES256-SHA", [], []),
    # The customer's order is the preference order: kept as given.
    ("AES128-SHA AES256-SHA", "AES128-SHA AES256-SHA", [], []),
    ("DES-CBC3-SHA ECDHE-RSA-AES256-GCM-SHA384", "DES-CBC3-SHA ECDHE-RSA-AES256-GCM-SHA384", [], []),
    # Any whitespace run separates; output uses single spaces.
    ("  AES128-SHA\t\tAES256-SHA\n", "AES128-SHA AES256-SHA", [], []),
    ("AES128-SHA\r\nAES256-SHA \u00a0 DES-CBC3-SHA", "AES128-SHA AES256-SHA DES-CBC3-SHA", [], []),
    # Duplicates collapse, the first position wins.
    (
        "AES256-SHA AES128-SHA AES256-SHA",
        "AES256-SHA AES128-SHA",
        ['ciphers: "AES256-SHA" is listed more than once; its first position is kept'],
        [],
    ),
    (
        "AES256-SHA AES256-SHA AES256-SHA",
        "AES256-SHA",
        ['ciphers: "AES256-SHA" is listed more than once; its first position is kept'],
        [],
    ),
    # A legacy name and its translation are the same cipher.
    (
        "RSA-AES256-CBC-SHA AES128-SHA AES256-SHA",
        "AES256-SHA AES128-SHA",
        [
            'ciphers: "RSA-AES256-CBC-SHA" is an old name, used as "AES256-SHA"',
            'ciphers: "AES256-SHA" is listed more than once; its first position is kept',
        ],
        [],
    ),
    (
        "AES256-SHA RSA-AES256-CBC-SHA RSA-AES256-CBC-SHA",
        "AES256-SHA",
        [
            'ciphers: "RSA-AES256-CBC-SHA" is an old name, used as "AES256-SHA"',
            'ciphers: "AES256-SHA" is listed more than once; its first position is kept',
        ],
        [],
    ),
    # Translation keeps the position.
    (
        "ECDHE-RSA-AES128-GCM-SHA256 RSA-3DES-EDE-CBC-SHA AES128-SHA",
        "ECDHE-RSA-AES128-GCM-SHA256 DES-CBC3-SHA AES128-SHA",
        ['ciphers: "RSA-3DES-EDE-CBC-SHA" is an old name, used as "DES-CBC3-SHA"'],
        [],
    ),
    # Unknown names: one error, in input order, each named once.
    (
        "FOO",
        "",
        [],
        [f'ciphers: "FOO" is not supported (supported: {SUPPORTED_TEXT})'],
    ),
    (
        "AES256-SHA BAR FOO BAR AES128-SHA",
        "AES256-SHA AES128-SHA",
        [],
        [f'ciphers: "BAR", "FOO" are not supported (supported: {SUPPORTED_TEXT})'],
    ),
    # Names are exact: OpenSSL spellings are upper case.
    (
        "aes256-sha",
        "",
        [],
        [f'ciphers: "aes256-sha" is not supported (supported: {SUPPORTED_TEXT})'],
    ),
    # The default value of the parameter (it repeats one name).
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-RSA-AES256-GCM-SHA384 ECDHE-ECDSA-AES128-GCM-SHA256 "
        "ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-SHA ECDHE-ECDSA-CHACHA20-POLY1305 "
        "ECDHE-RSA-CHACHA20-POLY1305 ECDHE-RSA-AES256-SHA ECDHE-RSA-AES128-SHA "
        "ECDHE-ECDSA-AES256-SHA ECDHE-ECDSA-AES128-SHA AES256-SHA AES128-SHA "
        "ECDHE-RSA-DES-CBC3-SHA DES-CBC3-SHA",
        "ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-RSA-AES256-GCM-SHA384 ECDHE-ECDSA-AES128-GCM-SHA256 "
        "ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-SHA ECDHE-ECDSA-CHACHA20-POLY1305 "
        "ECDHE-RSA-CHACHA20-POLY1305 ECDHE-RSA-AES256-SHA ECDHE-RSA-AES128-SHA "
        "ECDHE-ECDSA-AES128-SHA AES256-SHA AES128-SHA ECDHE-RSA-DES-CBC3-SHA DES-CBC3-SHA",
        ['ciphers: "ECDHE-ECDSA-AES256-SHA" is listed more than once; its first position is kept'],
        [],
    ),
]


@pytest.mark.parametrize("raw, normalised, warnings, errors", CASES)
def test_table(raw, normalised, warnings, errors):
    assert check_ciphers(raw) == (normalised, warnings, errors)


def test_mixed_legacy_unknown_and_duplicates():
    normalised, warnings, errors = check_ciphers(
        "ECDHE-RSA-WITH-CHACHA20-POLY1305 NOPE ECDHE-RSA-CHACHA20-POLY1305 RSA-AES128-CBC-SHA"
    )
    assert normalised == "ECDHE-RSA-CHACHA20-POLY1305 AES128-SHA"
    assert warnings == [
        'ciphers: "ECDHE-RSA-WITH-CHACHA20-POLY1305" is an old name, '
        'used as "ECDHE-RSA-CHACHA20-POLY1305"',
        'ciphers: "ECDHE-RSA-CHACHA20-POLY1305" is listed more than once; '
        "its first position is kept",
        'ciphers: "RSA-AES128-CBC-SHA" is an old name, used as "AES128-SHA"',
    ]
    assert errors == [f'ciphers: "NOPE" is not supported (supported: {SUPPORTED_TEXT})']


def test_unknown_values_are_quoted_escaped_and_truncated():
    long_name = "X" * 500
    hostile = 'A"\x1b[31m\u00e9\n'
    _, _, errors = check_ciphers(f"{long_name} {hostile}")
    assert len(errors) == 1
    listed = errors[0].removeprefix("ciphers: ").split(" are not supported")[0]
    long_quoted, hostile_quoted = listed.split(", ")
    assert long_quoted == '"' + "X" * 55 + '..."'
    assert len(long_quoted) <= 60
    assert hostile_quoted == '"A\\"\\u001b[31m\\u00e9"'  # the \n split the entry
    for char in "\x1b\n\r\u00e9":
        assert char not in errors[0]


def test_truncation_never_splits_an_escape():
    _, _, errors = check_ciphers("\x01" * 40)
    quoted = errors[0].removeprefix("ciphers: ").split(" is not supported")[0]
    assert len(quoted) <= 60
    assert quoted.endswith('..."')
    assert quoted[1:-4] == "\\u0001" * 9


def test_many_unknown_names_are_summarised():
    names = [f"BAD{i}" for i in range(15)]
    _, _, errors = check_ciphers(" ".join(names))
    assert errors == [
        "ciphers: " + ", ".join(f'"{n}"' for n in names[:10])
        + f" and 5 more are not supported (supported: {SUPPORTED_TEXT})"
    ]


def test_too_many_entries_is_one_error():
    assert check_ciphers(" ".join(["AES256-SHA"] * MAX_ENTRIES))[2] == []
    raw = " ".join(["NOPE"] * (MAX_ENTRIES + 1))
    assert check_ciphers(raw) == (
        "",
        [],
        [f"ciphers: {MAX_ENTRIES + 1} entries given; at most {MAX_ENTRIES} are allowed"],
    )


@pytest.mark.parametrize(
    "raw",
    [None, 3, ["AES256-SHA"], b"AES256-SHA", "\x00", "\ud800", "A" * 1_000_000, "- " * 200_000],
)
def test_never_raises(raw):
    normalised, warnings, errors = check_ciphers(raw)
    assert isinstance(normalised, str)
    assert isinstance(warnings, list) and isinstance(errors, list)
    assert all(len(m) < 2000 for m in warnings + errors)

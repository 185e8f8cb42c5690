"""A customer's secret is never quoted back: gaps left in validate/quoting.py
after version 6 (see tests/test_attack_masking.py for the earlier ones).

* A password holding an unencoded "#", "?" or "/" (`https://admin:Pa#ss@b`,
  a common slip) ends the URL's authority where a parser reads it, before
  the "@": the whole password was quoted in the refusal, kept in the store's
  decisions for an accepted `url`, and shown in a master's words and the
  feed, though the validator itself said "it contains user information".
* A parameter *name* holding a URL's password (a URL pasted as a key,
  `{"https://alice:pw@b": ""}`) was quoted whole in the warning or refusal.
* A private key pasted in a field that refuses it (any field but ssl_key,
  in SlapOS's serialised form: a line break is refused there) was quoted:
  60 characters of PEM, an EC key's first 10 secret bytes among them.
* A query parameter named like a secret with an index or a number after its
  name (`?password[0]=`, `?token1=`, `?api_key2=`) was quoted whole.
"""

from __future__ import annotations

import json

import pytest

from cdnreq import scrub
from cdnreq.decide import changes
from cdnreq.decide.kept import verdict_decision
from cdnreq.validate import quoting
from cdnreq.validate.policy import ValidationPolicy
from cdnreq.validate.verdict import validate

SECRET = "S3cretPW"


@pytest.mark.parametrize("url", [
    f"https://admin:Pa#{SECRET}@b.example/", f"https://admin:Pa?{SECRET}@b.example/",
    f"https://admin:Pa/{SECRET}@b.example/", f"https://admin:#{SECRET}@b.example", f"https://admin:P#a@{SECRET}@b.example/x",
    f"https://admin:Pa/{SECRET}@" + "b" * 1500 + ".example",
], ids=["hash", "question", "slash", "first", "at-after", "long"])
def test_a_password_holding_an_unencoded_delimiter_is_masked(url: str) -> None:
    """Refused (quoted), accepted (stored with its verdict), or echoed by a
    master (scrub.py, the feed): the password is never shown."""
    (error,) = validate({"url": url + " x"}).errors
    assert SECRET not in error and "***@" in error, error
    accepted = validate({"_": json.dumps({"url": url})})
    assert accepted.ok and accepted.forward is not None, accepted.errors
    assert SECRET not in repr(verdict_decision("SOFTINST-1", "h", "s", accepted))  # not written to the store
    assert SECRET not in scrub.scrub(f"backend {url} does not answer")
    assert SECRET not in changes._text(f"cannot reach {url}")


def test_nothing_after_the_cut_unmasks_a_password_holding_a_delimiter() -> None:
    """The "@" may lie past what is read (a value's 4,096 characters, a
    master's 64 KB, the feed's 2,000): masked to the cut."""
    for url in (f"https://admin:Pa/{SECRET}" + "x" * 5000 + "@b.example", f"https://admin:Pa#{SECRET}" + "x" * 70000):
        assert SECRET not in scrub.scrub(f"backend {url}")
        assert SECRET not in changes._text(f"backend {url}")
        assert SECRET not in quoting.masked_head(url) and SECRET not in quoting.masked_head(url[8:], bare=True)


@pytest.mark.parametrize("parameters", [
    {"url-netloc-list": f"alice:Pa#{SECRET}@10.0.0.1:80"},
    {"custom_domain": f"alice:Pa/{SECRET}@x.example"},
    {"custom_domain": "a.example", "server-alias": f"alice:Pa?{SECRET}@x.example"},
], ids=["netloc", "domain", "alias"])
def test_a_bare_password_holding_an_unencoded_delimiter_is_masked(parameters: dict) -> None:
    (error,) = validate({"url": "https://b.example", **parameters}).errors
    assert SECRET not in error and '"***@' in error, error


@pytest.mark.parametrize("value, shown", [
    ("https://b.example:8080/@scope x", "https://b.example:8080/@scope x"),  # a port, then a path with an "@"
    ("https://[::1]:80/@scope x", "https://[::1]:80/@scope x"),
    ("https://b.example/a@b c", "https://b.example/a@b c"),
])
def test_a_host_and_port_before_a_path_holding_an_at_sign_are_shown(value: str, shown: str) -> None:
    (error,) = validate({"url": value}).errors
    assert error.endswith(f"(got {json.dumps(shown)})"), error
    assert scrub.scrub(f"see {value} and write to ops@x.example") == f"see {value} and write to ops@x.example"


@pytest.mark.parametrize("name", ["password[0]", "token1", "api_key2", "password%5B0%5D", "password[new]", "user[token]"])
def test_a_query_secret_named_with_an_index_or_a_number_is_masked(name: str) -> None:
    (error,) = validate({"url": f"https://b.example/?{name}={SECRET}&page=2 x"}).errors
    assert error.endswith(f'(got "https://b.example/?{name}=***&page=2 x")'), error
    assert SECRET not in scrub.scrub(f"backend https://b.example/?{name}={SECRET} does not answer")
    accepted = validate({"_": json.dumps({"url": f"https://b.example/?{name}={SECRET}"})})
    assert SECRET not in repr(verdict_decision("SOFTINST-1", "h", "s", accepted))


def test_a_query_parameter_ending_in_a_number_is_shown_when_no_secret() -> None:
    assert quoting.without_userinfo("https://b.example/?page2=3&keyword=x&passage=4") == (
        "https://b.example/?page2=3&keyword=x&passage=4")


@pytest.mark.parametrize("key", [f"https://alice:{SECRET}@b.example", f"alice:{SECRET}@b.example", f"b?token={SECRET}",
                                 f"https://alice:{SECRET}@b.example/" + "x" * 5000])
@pytest.mark.parametrize("forward", [False, True])
def test_a_parameter_name_holding_a_password_is_masked(key: str, forward: bool) -> None:
    verdict = validate({"url": "https://b.example", key: ""}, ValidationPolicy(forward_unknown=forward))
    said = verdict.errors + verdict.warnings
    assert said and SECRET not in json.dumps(said), said
    wrapped = validate({"_": json.dumps({"url": "https://b.example"}), key: ""})
    assert wrapped.errors and SECRET not in json.dumps(wrapped.errors), wrapped.errors


def _ec_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize("field", ["ssl-proxy-ca-crt", "url", "custom_domain", "note", "virtualhostroot-http-port"])
@pytest.mark.parametrize("prefix", ["", "  ", "https://b.example/ "])
def test_a_private_key_in_a_field_that_refuses_it_is_not_quoted(field: str, prefix: str) -> None:
    key = _ec_key()
    body = "".join(key.splitlines()[1:-1])
    for parameters in ({"url": "https://b.example", field: prefix + key},
                       {"_": json.dumps({"url": "https://b.example", field: prefix + key})}):
        errors = validate(parameters, ValidationPolicy(forward_unknown=True)).errors
        said = json.dumps(errors).replace("\\n", "")
        assert errors and not any(body[i:i + 8] in said for i in range(0, len(body) - 8)), errors
    assert quoting.quote_value(key) == '"-----BEGIN EC PRIVATE KEY-----***"'
    assert quoting.quote_value("x" * 5000 + key) == '"' + "x" * 55 + '..."'


@pytest.mark.parametrize("hostile", [
    "//a:b#" * 20000, "//a:b#@" * 10000, "https://a:b/" * 6000 + "@", ("//a:b?x\n" * 8000) + "@",
    "//a:b#" * 10000 + "\n" + "@" * 100,
])
def test_the_delimiters_are_read_once(hostile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The authority of each start is read once, and the text after it at
    most once per line (counted, not timed)."""
    read: list[int] = []
    rfind = quoting._last_at

    def counting(text: str, begins: int, ends: int) -> int:
        read.append(ends - begins)
        return rfind(text, begins, ends)

    monkeypatch.setattr(quoting, "_last_at", counting)
    for cut in (False, True):
        quoting.without_userinfo(hostile, cut=cut)
        quoting.without_userinfo(hostile, bare=True, cut=cut)
        quoting.without_userinfo_in_text(hostile, cut)
    assert sum(read) <= 12 * len(hostile), (sum(read), len(hostile))

"""A customer's secret is never quoted back: the gaps the masking of
validate/quoting.py left (see tests/test_attack_outbound.py for the rule).

* A query parameter named like a secret once its name is decoded
  (`?tok%65n=`, `?api%2Dkey=`, `?api+key=`, a long name) was quoted whole.
* In free text (a master's words, the change feed) a URL ended at a space
  or a quote: `https://alice:pa ss@host` kept its password.
* A value longer than the 4,096 characters masked was masked without what
  followed the cut: `https://alice:pw` and the "@" beyond it was quoted.
* A host name or host:port entry starting `alice@corp:pw@host` (a user
  name holding an "@") was quoted whole.
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


@pytest.mark.parametrize("name", [
    "tok%65n", "TOK%45N", "api%2Dkey", "api%2dKey", "api%5Fkey", "api+key", "access%20token", "p%61ssword",
    "tok%2565n", "token%5B%5D", "x_" + "a" * 50 + "_token", "Api-Key",
])
def test_a_query_parameter_named_like_a_secret_once_decoded_is_masked(name: str) -> None:
    """A server decodes a query parameter's name (`%65` is "e", "+" a space):
    `?tok%65n=` is its `token`. The refusal quoted the value, and the store kept
    the forwarded parameters holding it; a master echoing it kept it too."""
    (error,) = validate({"url": f"https://b.example/?{name}={SECRET}&page=2 x"}).errors
    assert error.endswith(f'(got "https://b.example/?{name}=***&page=2 x")') or (
        SECRET not in error and error.endswith('...")')), error
    assert SECRET not in scrub.scrub(f"backend https://b.example/?{name}={SECRET} does not answer")
    accepted = validate({"_": json.dumps({"url": f"https://b.example/?{name}={SECRET}"})})
    assert accepted.ok and accepted.forward is not None, accepted.errors
    assert SECRET not in repr(verdict_decision("SOFTINST-1", "h", "s", accepted))  # not written to the store


def test_a_query_parameter_not_named_like_a_secret_is_shown_as_given() -> None:
    (error,) = validate({"url": "https://b.example/?page=2&next=/a%2Db&q=monk+ey x"}).errors
    assert error.endswith('(got "https://b.example/?page=2&next=/a%2Db&q=monk+ey x")'), error
    assert quoting.without_userinfo_in_text("see b.example/?page=2 or x=1") == "see b.example/?page=2 or x=1"


@pytest.mark.parametrize("hostile", ["?=" * 32768, "&a" * 32768 + "=", "?" + "a%25" * 20000 + "=x",
                                     ("?token=" + "a" * 60) * 1000])
def test_query_names_are_each_read_once(hostile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each name is decoded and matched once, whatever the value: a master's
    64 KB of words is read in one pass (counted, not timed)."""
    read: list[int] = []
    names_a_secret = quoting._names_a_secret

    def counting(name: str) -> bool:
        read.append(len(name))
        return names_a_secret(name)

    monkeypatch.setattr(quoting, "_names_a_secret", counting)
    quoting.without_userinfo(hostile)
    scrub.redact(hostile)
    assert sum(read) <= 2 * len(hostile), (sum(read), len(hostile))


@pytest.mark.parametrize("url, shown", [
    (f"https://alice:pa ss{SECRET}@b.example/x", "https://***@b.example/x"),
    (f"https://alice:p'{SECRET}@b.example/x", "https://***@b.example/x"),
    (f'https://alice:p"{SECRET}@b.example/x', "https://***@b.example/x"),
    (f"https://al ice:{SECRET}@b.example", "https://***@b.example"),
])
def test_a_password_holding_a_space_or_a_quote_is_masked_in_free_text(url: str, shown: str) -> None:
    """A URL in free text ended at a space or a quote: a master's words
    quoting a backend URL (scrub.py), the change feed's texts (changes.py)
    showed the password after it; the customer's own message masked it."""
    assert scrub.scrub(f"backend {url} does not answer") == f"backend {shown} does not answer"
    assert scrub.scrub(f'backend "{url}" does not answer') == f'backend "{shown}" does not answer'
    assert changes._text(f"cannot reach {url}") == f"cannot reach {shown}"  # the feed
    (error,) = validate({"url": url.replace("x", "x y")}).errors
    assert SECRET not in error, error


def test_ordinary_free_text_stays_readable() -> None:
    for text in ("see https://b.example/x, write to admin@cdn.example", "https://b.example\nadmin@cdn.example",
                 'url: backend address 127.0.0.1 ("https://***@127.0.0.1/") is not allowed',
                 "ciphers: \"DEFAULT@SECLEVEL=1\" is not supported"):
        assert scrub.scrub(text) == " ".join(text.split()), text


@pytest.mark.parametrize("parameters", [
    {"note": f"https://alice:{SECRET}" + " " * 5000 + "@b.example\x01"},
    {"url": "https://b.example", "url-netloc-list": f"alice:{SECRET}" + "x" * 5000 + "@10.0.0.1:80"},
    {"url": "https://b.example", "custom_domain": "a.example", "server-alias": f"alice:{SECRET}" + "x" * 5000 + "@x.example"},
], ids=["spaces", "netloc", "alias"])
def test_nothing_after_the_cut_of_a_long_value_unmasks_what_is_quoted(parameters: dict) -> None:
    """Only a value's first 4,096 characters are read for credentials; the
    "@" that ends a password may lie beyond, and the quoted head kept it."""
    errors = validate({"url": "https://b.example", **parameters}, ValidationPolicy(forward_unknown=True)).errors
    assert errors and SECRET not in json.dumps(errors), errors


def test_nothing_after_the_cut_of_a_long_text_unmasks_what_is_shown() -> None:
    """The same for a master's words (the first 64 KB are read) and the
    change feed's texts (cut at 2,000 characters)."""
    assert SECRET not in scrub.scrub(f"https://alice:{SECRET}" + "\t" * 70000 + "@b.example/")
    assert SECRET not in json.dumps(changes._text(f"https://alice:{SECRET}" + "\t" * 3000 + "@b.example/"))


@pytest.mark.parametrize("parameters, shown", [
    ({"custom_domain": f"alice@corp:{SECRET}@x.example"}, '"***@x.example"'),
    ({"custom_domain": "a.example", "server-alias": f"alice@corp:{SECRET}@x.example"}, '"***@x.example"'),
    ({"url-netloc-list": f"alice@corp:{SECRET}@10.0.0.1:80"}, '"***@10.0.0.1:80"'),
    ({"url-netloc-list": f"alice@corp:p@{SECRET}@10.0.0.1:80"}, '"***@10.0.0.1:80"'),
])
def test_a_bare_user_name_holding_an_at_sign_keeps_its_password(parameters: dict, shown: str) -> None:
    """A host name or a host:port entry is masked from its start when it
    holds a password (`alice:pw@host`); a user name holding an "@" (an
    e-mail address: `alice@corp:pw@host`) was read as no user information."""
    (error,) = validate({"url": "https://b.example", **parameters}).errors
    assert shown in error and SECRET not in error, error

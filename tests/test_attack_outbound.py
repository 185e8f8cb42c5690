"""Attacks on what leaves cdnreq: what a customer is told, what the operator's
pages and commands show, the change feed, the master's words relayed.

* A backend URL's credentials (`https://user:password@backend`) were quoted
  back in full in the customer's error (`url: ... (got "https://alice:
  S3cret@back end.example/")`), and from there in its record, `/instances`,
  `status`, `explain`, `plan` and the logs of every operator who looks; the
  change feed masked them, but only up to the first `@` (a password holding
  one showed its tail), and a master's error title quoting a forwarded URL
  kept them. Now `***` wherever a value is quoted.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdnreq import scrub
from cdnreq.validate import quoting
from cdnreq.validate.verdict import validate
from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, write_config
from test_domains_slapproxy import CDNREQ, PREFIX, errors_shown, once, shown

PASSWORD = "S3cretPW"


@pytest.mark.parametrize("parameters, expected", [
    ({"url": f"https://alice:{PASSWORD}@back end.example/"},
     'url: must be a URL starting with http://, https:// or ftp://, without spaces'
     ' (got "https://***@back end.example/")'),
    ({"url": f"https://alice:{PASSWORD}@127.0.0.1/"},
     'url: backend address 127.0.0.1 ("https://***@127.0.0.1/") is not allowed ([validation].backend_deny)'),
    ({"url": f"https://alice:p@{PASSWORD}@127.0.0.1/"},  # the user information runs to the last "@"
     'url: backend address 127.0.0.1 ("https://***@127.0.0.1/") is not allowed ([validation].backend_deny)'),
    ({"url": f"https://alice:{PASSWORD}@evil.example\\@127.0.0.1/"},
     'url: backend address 127.0.0.1 ("https://***@127.0.0.1/") is not allowed ([validation].backend_deny)'),
    ({"url": f"https://alice:{PASSWORD}@b.example/\r\n"},
     'url: must be a URL starting with http://, https:// or ftp://, without spaces (got "https://***@b.example/\\r\\n")'),
    ({"url": "https://b.example", "https-url": f"ftp://alice:{PASSWORD}@b.example/"},
     'https-url: must be a URL starting with https://, without spaces (got "ftp://***@b.example/")'),
    ({"url": "https://b.example", "health-check-failover-url": f"http://alice:{PASSWORD}@10.0.0.1/"},
     'health-check-failover-url: backend address 10.0.0.1 ("http://***@10.0.0.1/") is not allowed'
     ' ([validation].backend_deny)'),
    ({"url": "https://b.example", "url-netloc-list": f"alice:{PASSWORD}@10.0.0.1:80"},
     'url-netloc-list: "***@10.0.0.1:80" contains user information; write only host:port'),
    ({"url": "https://b.example", "custom_domain": f"alice:{PASSWORD}@x.example"},
     'custom_domain: "***@x.example" is not a valid host name: it contains user information; give only the host name'),
], ids=["pattern", "denied", "at-in-password", "backslash", "control", "https-url", "failover", "netloc", "domain"])
def test_a_backends_password_is_never_quoted_back(parameters: dict, expected: str) -> None:
    errors = validate(parameters).errors
    assert expected in errors, errors
    assert PASSWORD not in json.dumps(errors)


def test_an_at_sign_that_is_no_user_information_is_shown_as_given() -> None:
    (error,) = validate({"url": "https://b.example", "ciphers": "DEFAULT@SECLEVEL=1"}).errors
    assert error.startswith('ciphers: "DEFAULT@SECLEVEL=1" is not supported'), error
    (error,) = validate({"url": "https://b.example/a@b c"}).errors
    assert error.endswith('(got "https://b.example/a@b c")'), error
    (error,) = validate({"url": "https://b.example", "custom_domain": "user@x.example"}).errors
    assert error.startswith('custom_domain: "user@x.example" is not a valid host name'), error


def test_a_long_value_is_still_cut_and_marked_once_masked() -> None:
    (error,) = validate({"url": f"https://alice:{PASSWORD}@" + "b" * 1000 + ".example/ x"}).errors
    assert error.endswith('(got "https://***@bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb...")'), error


@pytest.mark.slapproxy
def test_a_refused_backend_url_s_password_reaches_no_page_command_or_feed(
    cdn_site: CdnSite, devdns: DevDns, tmp_path: Path
) -> None:
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(tmp_path / "c.toml", cdn_site, database=database, request_prefix=PREFIX,
                          dns={"nameservers": [devdns.address], "timeout_s": 0.5, "tries": 1})
    guid = cdn_site.add_customer("creds", {"url": f"https://alice:{PASSWORD}@back end.example/"})
    logs = once(config).stderr
    assert errors_shown(cdn_site, guid) == [
        'url: must be a URL starting with http://, https:// or ftp://, without spaces'
        ' (got "https://***@back end.example/")'
    ]
    commands = {
        " ".join(args): subprocess.run([CDNREQ, *args, "--config", str(config)], capture_output=True, text=True)
        for args in (["explain", guid, "--json"], ["plan", "--json"], ["status", "--all", "--json"],
                     ["events", "tail", "--json"])
    }
    assert {name: done.returncode for name, done in commands.items()}["plan --json"] == 0, commands
    with sqlite3.connect(database) as db:
        stored = json.dumps([list(db.execute(f"SELECT * FROM {table}")) for table in ("instances", "events", "changes")],
                            ensure_ascii=False, default=repr)
    outputs = {"published": json.dumps(shown(cdn_site, guid)), "logs": logs, "store": stored,
               **{name: done.stdout + done.stderr for name, done in commands.items()}}
    assert "back end.example" in outputs["explain " + guid + " --json"]  # the message is there, masked
    assert [name for name, text in outputs.items() if PASSWORD in text] == []


def test_the_feed_masks_a_password_that_holds_an_at_sign() -> None:
    """The change feed masked up to the first "@": `https://***@S3cretPW@127.0.0.1/`
    went to every consumer (a message stored by an earlier version, a master's
    words relayed, the technical CDN's answer)."""
    from dataclasses import replace

    from cdnreq.decide import changes
    from cdnreq.decide.actions import Kind
    from cdnreq.model import Phase, Record

    before = Record(guid="SOFTINST-1", title="cdnreq-SOFTINST-1", phase=Phase.NEW, created_at=1.0, updated_at=1.0)
    told = f'url: backend address 127.0.0.1 ("https://alice:p@{PASSWORD}@127.0.0.1/") is not allowed'
    (refused,) = changes.of_outcome(before, replace(before, published=b"a", published_error="x"), Kind.PUBLISH,
                                    True, {"request-error-list": json.dumps([told])}, 1.0)
    assert refused.payload == {"errors": ['url: backend address 127.0.0.1 ("https://***@127.0.0.1/") is not allowed']}
    requested = replace(before, phase=Phase.REQUESTED, tech_guid="T-1")
    answer = {"url": f"https://cdn:p@{PASSWORD}@cdn.example/"}
    (live,) = changes.of_outcome(requested, replace(requested, live_at=2.0, connection=answer), Kind.POLL, True,
                                 None, 2.0)
    assert live.payload["url"] == "https://***@cdn.example/"


def test_a_master_s_words_quoting_a_backend_url_lose_its_credentials(tmp_path: Path) -> None:
    """A master that refuses a request quoting the URL it was sent: the title was
    scrubbed of keys and `password=` values, not of a URL's user information, and
    went as is to the customer, the store, the logs and `explain`."""
    from bench.double import Double, Refused
    from test_faults_hostile import ThreadedDouble, write_config as double_config

    from cdnreq.scrub import scrub

    assert scrub(f"cannot reach https://alice:p@{PASSWORD}@back.example/x: refused") == (
        "cannot reach https://***@back.example/x: refused")

    class Echoing(Double):
        def _request(self, body):
            raise Refused(400, f"backend {body['parameters']['url']} does not answer")

    double = Echoing(publish_after="immediately")
    guid = "SOFTINST-echoed"
    double.add(guid, {"url": f"https://alice:{PASSWORD}@b.example/"})
    with ThreadedDouble(double) as served:
        config = double_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db")
        done = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        error = served.run(lambda: double.errors.get(guid))
        explain = subprocess.run([CDNREQ, "explain", guid, "--json", "--config", str(config)],
                                 capture_output=True, text=True)
    assert error == "The CDN could not accept this entry: backend https://***@b.example/ does not answer", error
    with sqlite3.connect(tmp_path / "state" / "cdnreq.db") as db:
        stored = json.dumps([list(db.execute(f"SELECT * FROM {table}")) for table in ("instances", "events", "changes")],
                            ensure_ascii=False, default=repr)
    outputs = {"logs": done.stderr, "explain": explain.stdout + explain.stderr, "store": stored}
    assert "https://***@b.example/" in outputs["explain"]
    assert [name for name, text in outputs.items() if PASSWORD in text] == []


@pytest.mark.slapproxy
def test_a_private_key_sent_in_slapos_serialised_parameters_is_not_written_to_the_store(
    cdn_site: CdnSite, devdns: DevDns, tmp_path: Path
) -> None:
    """The store keeps each instance's verdict for a restart, with the parameters
    to forward when they differ from those listed: unwrapped from "_" (how SlapOS
    clients serialise them) or without a dropped unknown key. That copy held the
    customer's ssl_key, accepted or refused, in the database and every backup,
    and its backend's password (`https://user:password@backend`)."""
    import trustme
    from test_domains_slapproxy import REQUEST, entries, title_of
    from test_faults_hostile import pem_body_lines

    from devtools.devmaster import MasterLog

    site = trustme.CA().issue_cert("shop-tls.example")
    key, crt = site.private_key_pem.bytes().decode(), site.cert_chain_pems[0].bytes().decode()
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(tmp_path / "c.toml", cdn_site, database=database, request_prefix=PREFIX,
                          dns={"nameservers": [devdns.address], "timeout_s": 0.5, "tries": 1})
    wrapped = cdn_site.add_customer("wrapped", {"_": json.dumps({"url": "https://b.example", "ssl_key": key,
                                                                   "ssl_crt": crt})})
    unknown = cdn_site.add_customer("unknown", {"url": "https://b.example", "ssl_key": key, "ssl_crt": crt,
                                                "colour": "blue"})
    refused = cdn_site.add_customer("refused", {"_": json.dumps({"url": "https://b.example", "ssl_key": key})})
    basic = cdn_site.add_customer("basic", {"_": json.dumps({"url": f"https://alice:{PASSWORD}@b.example/"})})
    once(config)
    held = entries(cdn_site)
    assert held[title_of(wrapped)]["parameters"]["ssl_key"] == key  # the technical CDN gets it: it serves the site
    assert held[title_of(unknown)]["parameters"]["ssl_key"] == key
    assert held[title_of(basic)]["parameters"]["url"] == f"https://alice:{PASSWORD}@b.example/"
    assert errors_shown(cdn_site, refused) == ["ssl_crt: is needed when ssl_key is given"]
    log = MasterLog(cdn_site)
    log.mark()
    once(config)  # a restart decides them afresh: nothing requested again
    assert REQUEST not in log.calls()
    files = b"".join(p.read_bytes() for p in database.parent.iterdir() if p.name.startswith("cdnreq.db"))
    assert [line for line in pem_body_lines(key) if line.encode() in files] == []
    assert PASSWORD.encode() not in files  # nor a backend's password (a URL's user information)


# -- masking reads a hostile value once -------------------------------------------------

_SCHEME = r"((?:(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+:)?[/\\]{2})"
# to the last "@" before the path; or, when the authority holds a ":" and no port (no digits in the
# alphabet: any ":"), a password holding an unencoded "/", "?" or "#", to the last "@" after it
_USER = r"(?:[^/?#]*@|[^/?#:]*:.*@)"
_RULES = {  # the rule as first written, by regular expressions: the oracle on short values
    "value": re.compile(_SCHEME + _USER, re.DOTALL),
    "bare": re.compile(r"(^(?=[^/?#]*:[^/?#]*@)|^(?=[^/?#@]*:[^/?#@]*(?:[/?#]|\Z).*@)|" + _SCHEME[1:] + _USER,
                       re.DOTALL),
    # spaces and quotes too (a password may hold them), not past a line; the authority as written
    # (to a space or a quote) holding a ":" runs to the last "@" on its line
    "text": re.compile(_SCHEME + r"""(?:[^/?#\r\n]*@|[^/?#\s"':]*:[^\r\n]*@)"""),
}


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.text(alphabet="/\\:@a ?#\"'\t\nH.", max_size=16))
def test_masking_in_one_pass_masks_what_the_rule_says(text: str) -> None:
    by_rule = {name: rule.sub(r"\1***@", text) if "@" in text else text for name, rule in _RULES.items()}
    assert quoting.without_userinfo(text) == by_rule["value"]
    assert quoting.without_userinfo(text, bare=True) == by_rule["bare"]
    assert quoting.without_userinfo_in_text(text) == by_rule["text"]
    # the start of a longer text: as if an "@" followed its end
    cut = {name: rule.sub(r"\1***@", text + "@")[:-1] for name, rule in _RULES.items()}
    assert quoting.without_userinfo(text, cut=True) == cut["value"]
    assert quoting.without_userinfo(text, bare=True, cut=True) == cut["bare"]
    assert quoting.without_userinfo_in_text(text, cut=True) == cut["text"]


@pytest.mark.parametrize("hostile", ["@" + "\\\\" * 32768, "@" + " \\\\" * 20000, "a@" + "\\\\x" * 20000])
def test_a_value_of_backslashes_is_read_once_not_once_per_backslash(
    hostile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user information after each pair of slashes (a backslash may stand
    for one) runs to the last "@" before the path. A regular expression
    tried every pair of a run holding no "@" and read the rest of the run
    again each time: 64 KB of backslashes in a master's error (scrub.redact
    reads 64 KB) took seconds of the daemon's one thread. Counted here: the
    characters the runs read, whatever the machine's speed."""
    read = []

    class Counting:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern = pattern

        def match(self, text: str, at: int) -> re.Match[str] | None:
            found = self.pattern.match(text, at)
            read.append(found.end() - at if found else 0)
            return found

    for name in ("_RUN_IN_VALUE", "_RUN_IN_TEXT"):
        monkeypatch.setattr(quoting, name, Counting(getattr(quoting, name)))
    for masked in (quoting.without_userinfo(hostile), quoting.without_userinfo_in_text(hostile),
                   scrub.redact(hostile)):
        assert "***" not in masked
    assert read and sum(read) <= 3 * len(hostile), (sum(read), len(hostile))


@pytest.mark.parametrize("url, shown", [
    ("https://b.example/?token=TOK123&x=1 y", "https://b.example/?token=***&x=1 y"),
    ("https://b.example/a b?x=1&api_key=K3Y;password=p@ss#f", "https://b.example/a b?x=1&api_key=***;password=***#f"),
    ("https://b.example/?X-Amz-Signature=abc&page=2 ", "https://b.example/?X-Amz-Signature=***&page=2 "),
    ("https://b.example/cb #access_token=T0K&x=1", "https://b.example/cb #access_token=***&x=1"),
    ("https://b.example/ ?pass=P4SS&token[]=A", "https://b.example/ ?pass=***&token[]=***"),
])
def test_a_secret_in_a_backend_url_s_query_is_never_quoted_back(url: str, shown: str) -> None:
    """A backend URL may carry its credential in the query rather than
    before the host (`?token=`, `&api_key=`, a signed URL's signature): the
    refusal quoted it whole, into the record, /instances, status, explain,
    plan and the feed."""
    errors = validate({"url": url}).errors
    assert len(errors) == 1 and f"(got {json.dumps(shown)})" in errors[0], errors


@pytest.mark.parametrize("parameters, secret", [
    ({"api_token": "TOKEN4\x01abc"}, "TOKEN4"),
    ({"backend": {"db_password": "PW-\x01-1234"}}, "PW-"),
    ({"backend": {"auth": ["S3CR3T\x02"]}}, "S3CR3T"),
])
def test_an_unknown_parameter_named_like_a_secret_is_not_quoted_back(parameters: dict, secret: str) -> None:
    """With [validation].forward_unknown, an unknown parameter's value holding
    a control character was refused with the value quoted, whatever its name:
    an `api_token` went to the record, /instances, status, explain, plan and
    the feed. Its length is said instead; other values are still quoted."""
    from cdnreq.validate.policy import ValidationPolicy

    policy = ValidationPolicy(forward_unknown=True)
    errors = validate({"url": "https://b.example", **parameters}, policy).errors
    assert len(errors) == 1 and "looks like a secret" in errors[0] and secret not in errors[0], errors
    plain = validate({"url": "https://b.example", "note": "hello\x01"}, policy).errors
    assert plain == ('note: must not contain the control character U+0001 (got "hello\\u0001")',), plain


def test_a_change_holding_a_lone_surrogate_is_delivered_escaped() -> None:
    """A change's payload may hold a lone surrogate (a master's answer read
    from JSON: `"url": "\\udc80"`): the webhook body's UTF-8 encoding raised
    outside the delivery's error handling, every round of the consumer's
    outbox failed at that change, and no later change reached it."""
    from cdnreq.decide.deliveries import Delivery, body

    payload = json.dumps({"url": "https://shop.example/\udc80", "note": "caf\u00e9"})
    data = body(Delivery(7, "SOFTINST-\udc81", 0, None, 1_767_225_600.0, "live", payload, "t\u00eftle"))
    data.decode("ascii")  # escaped: valid JSON a receiver can read
    read = json.loads(data)
    assert read["data"]["payload"]["url"] == "https://shop.example/\udc80" and read["data"]["instance_guid"] == "SOFTINST-\udc81"
    plain = body(Delivery(8, "SOFTINST-1", 0, None, 1_767_225_600.0, "live", json.dumps({"note": "caf\u00e9"}), None))
    assert "café".encode() in plain  # the others as before: UTF-8, not escaped

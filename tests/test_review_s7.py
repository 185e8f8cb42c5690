"""Review of this session's changes (s7): defects found, each with its test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdnreq.master import MasterUnavailable
from cdnreq.store import Store
from tests.test_attack_master_lies import Liar, fleet, ok_tick
from tests.test_tick_stages import opened  # noqa: F401


class FailingReads(Liar):
    """Fails every read-back of `failing` (the master's 503)."""

    failing: set[str] = set()

    async def get_instance(self, instance_guid: str) -> Any:
        if instance_guid in self.failing:
            self.polled.append(instance_guid)
            raise MasterUnavailable("get_instance", "HTTP 503")
        return await super().get_instance(instance_guid)


async def test_a_sleeper_whose_read_back_retry_lies_past_an_interval_sleeps_on(
    tmp_path: Path, opened: list[Store]
) -> None:
    """A read-back that failed is retried after its backoff (up to
    retry_max_s and a quarter), which may lie further than verify_interval_s
    from now; the sleeper carrying that retry was taken for one planned under
    a clock since stepped back (read_back_horizon): woken at every other
    tick, its record and challenge read and its gate decided again, asleep
    again the tick after, until the retry. A master outage made the fleet
    do it."""
    r, master, clock = await fleet(tmp_path, opened, verify_interval_s=1000.0, retry_base_s=2000.0,
                                   retry_max_s=3600.0)
    master.__class__ = FailingReads
    FailingReads.failing = {"P0"}
    clock.now += 1200  # every read-back due: P0's fails, retried 2000 s or more later
    for _ in range(3):
        await ok_tick(r, clock)
    assert master.polled.count("P0") == 1, master.polled
    asleep = []
    for _ in range(6):
        await ok_tick(r, clock)
        asleep.append("P0" in r.sleepers)
    assert asleep == [True] * 6, asleep
    assert master.polled.count("P0") == 1, master.polled


@pytest.mark.parametrize("url", [
    "https://alice:it's-S3cretPW@b.example/",  # a quote is allowed in user information (RFC 3986 sub-delims)
    'https://alice:S3cretPW"x@b.example/',
    "https://b.example/feed?access_token=S3cretPW",  # masked in messages as a secret, kept in the store
])
def test_a_backend_secret_holding_a_quote_or_in_the_query_is_not_written_with_a_kept_decision(url: str) -> None:
    """A kept decision whose forwarded parameters hold a URL's credentials is
    kept empty (decide/kept._holds_secret). It looked for them in the JSON
    text of the parameters, as free text, where a URL ends at a quote: a
    password holding `'` (or `"`, escaped in the JSON) was written to the
    store and its backups with the decision; so was a secret in the URL's
    query, which every message masks (validate/quoting._QUERY_SECRET)."""
    from cdnreq.decide import kept
    from cdnreq.validate.verdict import validate

    verdict = validate({"_": json.dumps({"url": url})})
    assert verdict.ok and verdict.forward is not None, verdict.errors
    decision = kept.verdict_decision("SOFTINST-1", "h", "s", verdict)
    assert "S3cretPW" not in repr(decision), decision
    plain = kept.verdict_decision("SOFTINST-1", "h", "s", validate({"_": json.dumps({"url": "https://b.example/?a=b@c"})}))
    assert plain.verdict is not None  # nothing secret: kept as before


@pytest.mark.parametrize("url, shown", [
    ("https:/alice:S3cretPW@b.example/", "https:/***@b.example/"),
    ("https:alice:S3cretPW@b.example/", "https:***@b.example/"),
    ("HTTP:\\alice:S3cretPW@b.example/", "HTTP:\\***@b.example/"),
    ("ftp:alice:p@S3cretPW@b.example/", "ftp:***@b.example/"),
])
def test_a_password_after_a_scheme_without_its_two_slashes_is_masked(url: str, shown: str) -> None:
    """A browser reads `https:/alice:password@b.example/` (one slash, or
    none, or a backslash) as `https://alice:password@b.example/`: a
    customer's typo the URL pattern refuses, and the refusal quoted the
    password, to the record, /instances, status, explain, plan and the
    feed. Masking started only after two slashes."""
    from cdnreq import scrub
    from cdnreq.validate import quoting
    from cdnreq.validate.verdict import validate

    (error,) = validate({"url": url}).errors
    assert f"(got {json.dumps(shown)})" in error, error
    assert quoting.without_userinfo_in_text(f"cannot reach {url} now") == f"cannot reach {shown} now"
    assert "S3cretPW" not in scrub.scrub(f"backend {url} refused")
    for kept in ("see news:comp.lang.python or mailto:bob@b.example", "xhttps:a@b", "DEFAULT@SECLEVEL=1"):
        assert quoting.without_userinfo(kept) == kept  # no special scheme before: nothing to mask


@pytest.mark.parametrize("key", ["api_key\x1b[2J", "db_password\n2026-12-07 12:00:00 [info] tick done", "token\u202e"])
def test_a_nested_key_named_like_a_secret_is_escaped_where_it_is_named(key: str) -> None:
    """An unknown parameter's value under a key named like a secret is not
    quoted (validate/quoting.quote_named): its key is named instead, and was
    named as the customer typed it, raw: an escape sequence, a line break
    that forges a log line or a bidirectional control went into the message
    published, stored and shown by status, explain, plan and the feed, where
    every other value is escaped."""
    from cdnreq.validate import text
    from cdnreq.validate.policy import ValidationPolicy
    from cdnreq.validate.verdict import validate

    (error,) = validate({"url": "https://b.example", "backend": {key: "x\x01"}},
                        ValidationPolicy(forward_unknown=True)).errors
    assert "looks like a secret" in error and text._FORBIDDEN.search(error) is None, error
    (error,) = validate({"url": "https://b.example", "api_token": "TOKEN4\x01abc"},
                        ValidationPolicy(forward_unknown=True)).errors
    assert error.endswith("(got a value of 10 characters, not shown: api_token looks like a secret)"), error


async def test_a_refusal_told_under_a_clock_that_jumped_ahead_is_read_back_once_it_is_back(
    tmp_path: Path, opened: list[Store]
) -> None:
    """92fd9bf: a read-back planned under a clock since stepped back is due
    now, for a record written after now and for a sleeper. A refused
    instance never sleeps (its gate is not settled): it stays in the idle
    cache with the read-back time computed under the jumped clock, a month
    ahead, and that cache was trusted while that time lay after now: the
    refusal the master dropped was not told again for a month."""
    from tests.test_attack_master_lies import PLAIN, entry

    r, master, clock = await fleet(tmp_path, opened, verify_interval_s=1000.0)
    master.entries.append(entry("R", url="http://127.0.0.1/"))
    real = clock.now
    for _ in range(3):
        await ok_tick(r, clock)
    assert any(guid == "R" for guid, _ in master.published), master.published
    clock.now = real + 30 * 86400
    for _ in range(6):
        await ok_tick(r, clock)
    assert "R" in master.polled  # read back (its instance still holds the refusal) under the jumped clock
    clock.now = real + 60  # NTP brought the clock back
    master.polled.clear()
    for _ in range(4):
        await ok_tick(r, clock)
    assert {g for g in master.polled if g in ("R", "A", *PLAIN)} == {"R", "A", *PLAIN}, master.polled


@pytest.mark.parametrize("url", [
    "https://b.example/x?X-Amz-Signature=S3cretPW&page=2",
    "https://b.example/x?sig=S3cretPW",
    "https://b.example/x?user=bob&pwd=S3cretPW",
])
def test_a_query_secret_a_master_quotes_is_masked_as_a_customer_s_is(url: str) -> None:
    """4d9da18 masks a query parameter named like a secret wherever a
    customer's value is quoted (validate/quoting._QUERY_SECRET); a master's
    words quoting the same URL (scrub, 042e646) are scrubbed by another list
    of names (scrub._SECRET_VALUE) without `signature` or `sig`: a signed
    URL's signature went to the customer, the store, the logs, explain and
    the feed. One list now; `pwd` added to it."""
    from cdnreq.scrub import scrub
    from cdnreq.validate.verdict import validate

    assert "S3cretPW" not in scrub(f"backend {url} answered 403"), scrub(f"backend {url} answered 403")
    errors = validate({"url": url + " x"}).errors
    assert len(errors) == 1 and "S3cretPW" not in errors[0], errors

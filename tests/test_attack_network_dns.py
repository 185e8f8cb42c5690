"""The DNS on a hostile network: answers that do not answer the question.

A name server (or a middlebox in front of it) that answers NOERROR with
records owned by another name than the one asked, and no CNAME leading from
the question to them, said nothing about the name asked. Such an answer was
read as NODATA ("absent"): a proven host's re-check then counted as failing
(a warning published to its customer, the grace period's clock started, and
with release_on_recheck_failure the host released and the live entry
destroyed after it). It is "unknown": the name is asked again later.

A real DNS server on loopback (devtools.dnsserver, dnslib) and the real
resolver (aiodns/c-ares).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RR, TXT, DNSRecord

from cdnreq.decide import recheck
from cdnreq.decide.gate import DomainPolicy
from cdnreq.dns.challenge import issue
from cdnreq.dns.resolver import Resolver
from cdnreq.model import HostClaim, InstanceGuid
from devtools.dnsserver import LoopbackServer

SECRET = b"s" * 32
GUID = InstanceGuid("SOFTINST-1")
LABEL = "_cdnreq-challenge"
NOW = 1_800_000_000.0


def _answer(request: DNSRecord, protocol: str) -> DNSRecord:
    """TXT questions under wrong.test get an answer owned by another name;
    those under mixed.test one record of their own among others'; the rest
    NXDOMAIN."""
    qname = str(request.q.qname).rstrip(".").lower()
    reply = request.reply()
    if qname.endswith("wrong.test"):
        reply.add_answer(RR("elsewhere.test.", QTYPE.TXT, rdata=TXT("cdnreq-not-for-this-name"), ttl=0))
    elif qname.endswith("mixed.test"):
        reply.add_answer(RR("elsewhere.test.", QTYPE.TXT, rdata=TXT("cdnreq-not-for-this-name"), ttl=0))
        reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT("mine"), ttl=0))
    else:
        reply.header.rcode = 3  # NXDOMAIN
    return reply


@pytest.fixture
def server() -> Iterator[str]:
    loopback = LoopbackServer(_answer)
    port = loopback.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loopback.stop()


async def test_an_answer_for_another_name_is_unknown_not_absent(server: str) -> None:
    async with Resolver(nameservers=[server], timeout_s=0.5, tries=1) as resolver:
        found = await resolver.txt_many(["a.wrong.test", "a.mixed.test", "a.nothing.test"])
    assert (found["a.wrong.test"].outcome, found["a.wrong.test"].detail) == ("unknown", "answer for another name")
    assert (found["a.mixed.test"].outcome, found["a.mixed.test"].values) == ("found", ("mine",))
    assert (found["a.nothing.test"].outcome, found["a.nothing.test"].detail) == ("absent", "NXDOMAIN")


async def test_a_proven_hosts_recheck_does_not_fail_on_answers_for_another_name(server: str) -> None:
    """The re-check of a proven host whose every name gets such an answer
    waits: no warning, no grace clock."""
    policy = DomainPolicy(label=LABEL, grace_s=0.0, release_on_recheck_failure=True)
    claim = HostClaim("www.wrong.test", GUID, "wrong.test", NOW - 86400, NOW - 86400, None)
    challenge = issue(SECRET, GUID, "www.wrong.test", NOW - 86400)
    names = recheck.names(claim, policy)
    assert names == [f"{LABEL}.www.wrong.test", f"{LABEL}.wrong.test"]
    async with Resolver(nameservers=[server], timeout_s=0.5, tries=1) as resolver:
        txt = await resolver.txt_many(names)
    result = recheck.verdict(claim, challenge, txt, None, policy)
    assert result == "unknown"
    after = recheck.apply(claim, result, NOW, policy)  # not released, as it was with grace 0
    assert after is not None and after.failing_since == claim.failing_since

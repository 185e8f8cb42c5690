"""devtools.devdns answers as documented, checked with dnslib as an independent client."""

from __future__ import annotations

import socket

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from devtools.devdns import DevDns


def ask(dns: DevDns, name: str, qtype: str = "TXT", *, tcp: bool = False,
        timeout: float = 2.0) -> DNSRecord:
    packet = DNSRecord.question(name, qtype).send(
        dns.host, dns.port, tcp=tcp, timeout=timeout, ipv6=":" in dns.host)
    return DNSRecord.parse(packet)


def txt_values(reply: DNSRecord) -> list[list[bytes]]:
    return [list(rr.rdata.data) for rr in reply.rr if rr.rtype == QTYPE.TXT]


def test_address_and_port(devdns: DevDns) -> None:
    assert devdns.host == "127.0.0.1"
    assert devdns.address == f"127.0.0.1:{devdns.port}"


def test_txt_over_udp_and_tcp(devdns: DevDns) -> None:
    devdns.set_txt("Example.TEST.", "one")
    for tcp in (False, True):
        reply = ask(devdns, "example.test", tcp=tcp)
        assert reply.header.rcode == RCODE.NOERROR
        assert txt_values(reply) == [[b"one"]]
    assert devdns.queries == 2
    assert devdns.tcp_queries == 1


def test_multiple_records_add_and_replace(devdns: DevDns) -> None:
    devdns.set_txt("m.test", "a", "b")
    devdns.add_txt("m.test", "c")
    assert txt_values(ask(devdns, "m.test")) == [[b"a"], [b"b"], [b"c"]]
    devdns.set_txt("m.test", "z")
    assert txt_values(ask(devdns, "m.test")) == [[b"z"]]


def test_long_txt_is_split_into_character_strings(devdns: DevDns) -> None:
    value = "v" * 600
    devdns.set_txt("long.test", value)
    [chunks] = txt_values(ask(devdns, "long.test", tcp=True))
    assert [len(c) for c in chunks] == [255, 255, 90]
    assert b"".join(chunks) == value.encode()


def test_utf8_txt(devdns: DevDns) -> None:
    devdns.set_txt("u.test", "clé ✓")
    assert txt_values(ask(devdns, "u.test")) == [["clé ✓".encode()]]


def test_nxdomain_and_nodata(devdns: DevDns) -> None:
    devdns.set_a("host.test", "192.0.2.1")
    nx = ask(devdns, "nothing.test")
    assert nx.header.rcode == RCODE.NXDOMAIN and not nx.rr
    nodata = ask(devdns, "host.test", "TXT")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    a = ask(devdns, "host.test", "A")
    assert [str(rr.rdata) for rr in a.rr] == ["192.0.2.1"]


def test_remove(devdns: DevDns) -> None:
    devdns.set_txt("gone.test", "x")
    devdns.remove("gone.test")
    assert ask(devdns, "gone.test").header.rcode == RCODE.NXDOMAIN


def test_a_and_aaaa(devdns: DevDns) -> None:
    devdns.set_a("h.test", "192.0.2.1", "192.0.2.2")
    devdns.set_aaaa("h.test", "2001:db8::1")
    assert [str(rr.rdata) for rr in ask(devdns, "h.test", "A").rr] == ["192.0.2.1", "192.0.2.2"]
    assert [str(rr.rdata) for rr in ask(devdns, "h.test", "AAAA").rr] == ["2001:db8::1"]


def test_cname_with_known_target(devdns: DevDns) -> None:
    devdns.set_cname("alias.test", "mid.test")
    devdns.set_cname("mid.test", "target.test")
    devdns.set_txt("target.test", "t")
    reply = ask(devdns, "alias.test")
    assert [(str(rr.rname), QTYPE[rr.rtype]) for rr in reply.rr] == [
        ("alias.test.", "CNAME"), ("mid.test.", "CNAME"), ("target.test.", "TXT"),
    ]
    assert txt_values(reply) == [[b"t"]]
    cname = ask(devdns, "alias.test", "CNAME")
    assert [str(rr.rdata) for rr in cname.rr] == ["mid.test."]


def test_cname_with_unknown_target_or_no_following(devdns: DevDns) -> None:
    devdns.set_cname("away.test", "elsewhere.example")
    reply = ask(devdns, "away.test")
    assert reply.header.rcode == RCODE.NOERROR
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["CNAME"]
    devdns.set_cname("alias.test", "target.test")
    devdns.set_txt("target.test", "t")
    devdns.follow_cnames = False
    assert [QTYPE[rr.rtype] for rr in ask(devdns, "alias.test").rr] == ["CNAME"]


def test_cname_loop_ends(devdns: DevDns) -> None:
    devdns.set_cname("l1.test", "l2.test")
    devdns.set_cname("l2.test", "l1.test")
    reply = ask(devdns, "l1.test")
    assert [(str(rr.rname), str(rr.rdata)) for rr in reply.rr] == [
        ("l1.test.", "l2.test."), ("l2.test.", "l1.test."),
    ]


def test_cname_chain_capped(devdns: DevDns) -> None:
    for i in range(20):
        devdns.set_cname(f"c{i}.test", f"c{i + 1}.test")
    reply = ask(devdns, "c0.test", tcp=True)
    assert len(reply.rr) == 9  # the asked name plus 8 hops


@pytest.mark.parametrize(("kind", "rcode"), [("servfail", RCODE.SERVFAIL), ("refused", RCODE.REFUSED)])
def test_error_behaviours(devdns: DevDns, kind: str, rcode: int) -> None:
    devdns.set_txt("bad.test", "x")
    devdns.behave("BAD.test.", kind)
    reply = ask(devdns, "bad.test")
    assert reply.header.rcode == rcode and not reply.rr
    devdns.behave("bad.test", "normal")
    assert txt_values(ask(devdns, "bad.test")) == [[b"x"]]


def test_timeout_never_answers(devdns: DevDns) -> None:
    devdns.set_txt("silent.test", "x")
    devdns.behave("silent.test", "timeout")
    for tcp in (False, True):
        with pytest.raises(socket.timeout):
            ask(devdns, "silent.test", tcp=tcp, timeout=0.3)
    assert devdns.queries_for("silent.test") == 2


def test_truncate_over_udp_answers_over_tcp(devdns: DevDns) -> None:
    devdns.set_txt("big.test", "payload")
    devdns.behave("big.test", "truncate")
    udp = ask(devdns, "big.test")
    assert udp.header.tc == 1 and not udp.rr
    tcp = ask(devdns, "big.test", tcp=True)
    assert tcp.header.tc == 0 and txt_values(tcp) == [[b"payload"]]


def test_default_behaviour_applies_to_unset_names_only(devdns: DevDns) -> None:
    devdns.set_txt("known.test", "k")
    devdns.default_behaviour = "refused"
    assert ask(devdns, "unset.test").header.rcode == RCODE.REFUSED
    assert txt_values(ask(devdns, "known.test")) == [[b"k"]]
    devdns.behave("chosen.test", "normal")
    assert ask(devdns, "chosen.test").header.rcode == RCODE.NXDOMAIN
    devdns.default_behaviour = "timeout"
    with pytest.raises(socket.timeout):
        ask(devdns, "unset.test", timeout=0.2)
    with pytest.raises(ValueError):
        devdns.default_behaviour = "nonsense"


def test_counts(devdns: DevDns) -> None:
    devdns.set_txt("c.test", "x")
    ask(devdns, "c.test")
    ask(devdns, "C.test", tcp=True)
    ask(devdns, "other.test")
    assert devdns.queries == 3
    assert devdns.queries_for("c.test") == 2
    assert devdns.queried_names() == {"c.test", "other.test"}
    devdns.reset_counts()
    assert devdns.queries == 0 and devdns.tcp_queries == 0 and devdns.queried_names() == set()


def test_several_queries_on_one_tcp_connection(devdns: DevDns) -> None:
    devdns.set_txt("a.test", "1")
    devdns.set_txt("b.test", "2")
    with socket.create_connection((devdns.host, devdns.port), timeout=2) as conn:
        for name in ("a.test", "b.test"):
            packet = DNSRecord.question(name, "TXT").pack()
            conn.sendall(len(packet).to_bytes(2, "big") + packet)
        replies = []
        buf = b""
        while len(replies) < 2:
            buf += conn.recv(4096)
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                size = int.from_bytes(buf[:2], "big")
                replies.append(DNSRecord.parse(buf[2:2 + size]))
                buf = buf[2 + size:]
    assert [txt_values(r) for r in replies] == [[[b"1"]], [[b"2"]]]


def test_given_port_and_context_manager() -> None:
    with DevDns() as first:
        port = first.port
    with DevDns(port=port) as second:  # the port is free again after stop()
        second.set_txt("p.test", "x")
        assert txt_values(ask(second, "p.test")) == [[b"x"]]
        with pytest.raises(OSError), DevDns(port=port):
            pass


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        dns = DevDns(host="::1").start()
    except OSError as error:
        pytest.skip(f"cannot listen on ::1: {error}")
    try:
        assert dns.address == f"[::1]:{dns.port}"
        dns.set_txt("v6.test", "x")
        assert txt_values(ask(dns, "v6.test")) == [[b"x"]]
    finally:
        dns.stop()


def test_refuses_non_loopback_and_bad_input() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevDns(host="0.0.0.0")
    dns = DevDns()
    with pytest.raises(ValueError):
        dns.behave("x.test", "explode")
    with pytest.raises(ValueError):
        dns.set_a("x.test", "not-an-ip")

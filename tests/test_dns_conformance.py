"""Authoritative-server behaviour, checked with real clients (dnspython, dig, kdig) over UDP and TCP."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

TRANSPORTS = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]


def rrset_texts(message: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(" ".join(str(rr) for rr in [rrset.name, rrset.rdtype]) + " " + str(rdata)
                  for rrset in getattr(message, section) for rdata in rrset)


def values(message: dns.message.Message, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(str(rd) for rrset in message.answer if rrset.rdtype == wanted for rd in rrset)


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_static_records_are_authoritative_answers(example_server, tcp: bool) -> None:
    reply = example_server.query("www.example.org", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR
    assert not reply.flags & dns.flags.RA  # not a resolver
    assert values(reply, "A") == ["127.0.0.2"]
    assert values(example_server.query("www.example.org", "AAAA", tcp=tcp), "AAAA") == ["::1"]
    assert values(example_server.query("example.org", "MX", tcp=tcp), "MX") == ["10 mail.example.org."]
    assert values(example_server.query("example.org", "TXT", tcp=tcp), "TXT") == ['"v=spf1 -all"']
    assert values(example_server.query("example.org", "NS", tcp=tcp), "NS") == ["ns1.example.org."]
    srv = example_server.query("_http._tcp.www.example.org", "SRV", tcp=tcp)
    assert values(srv, "SRV") == ["10 5 8080 www.example.org."]
    soa = example_server.query("example.org", "SOA", tcp=tcp)
    assert values(soa, "SOA")[0].startswith("ns1.example.org. hostmaster.example.org. 2026112701")
    ptr = example_server.query("4.3.2.1.wild.test", "PTR", tcp=tcp)
    assert values(ptr, "PTR") == ["exists.wild.test."]


def test_additional_section_carries_in_zone_target_addresses(example_server) -> None:
    reply = example_server.query("example.org", "MX")
    assert [str(rd) for rrset in reply.additional for rd in rrset
            if rrset.rdtype == dns.rdatatype.A] == ["127.0.0.3"]


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_nxdomain_carries_the_soa_with_the_negative_ttl(example_server, tcp: bool) -> None:
    reply = example_server.query("no-such-host.example.org", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert not reply.answer
    [soa] = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA and str(soa.name) == "example.org."
    assert soa.ttl == 60  # min(SOA TTL 300, SOA minimum 60), RFC 2308


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_nodata_for_a_name_without_the_type(example_server, tcp: bool) -> None:
    reply = example_server.query("mail.example.org", "AAAA", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert not reply.answer
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


def test_empty_non_terminal_is_nodata_not_nxdomain(example_server) -> None:
    reply = example_server.query("deep.wild.test", "A")
    # "deep" has no records but "a.b.deep" does, so it exists (RFC 8020)...
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    # ...and it blocks the wildcard (RFC 4592 2.2.2): no synthesis for it
    assert example_server.query("b.deep.wild.test", "A").rcode() == dns.rcode.NOERROR
    assert not example_server.query("b.deep.wild.test", "A").answer


def test_cname_chain_is_followed_inside_the_zone(example_server) -> None:
    reply = example_server.query("docs.example.org", "A")
    assert rrset_texts(reply) == [
        "docs.example.org. 5 web.example.org.",
        "web.example.org. 5 www.example.org.",
        "www.example.org. 1 127.0.0.2",
    ]
    assert example_server.query("docs.example.org", "CNAME").answer[0].rdtype == dns.rdatatype.CNAME
    dangling = example_server.query("dangling.wild.test", "A")
    assert dangling.rcode() == dns.rcode.NXDOMAIN and dangling.answer[0].rdtype == dns.rdatatype.CNAME
    outside = example_server.query("outside.wild.test", "A")
    assert outside.rcode() == dns.rcode.NOERROR and values(outside, "CNAME") == ["www.example.net."]


def test_names_match_case_insensitively_and_the_question_case_is_echoed(example_server) -> None:
    reply = example_server.query("WwW.ExAmPlE.oRg", "A")
    assert str(reply.question[0].name) == "WwW.ExAmPlE.oRg."
    assert values(reply, "A") == ["127.0.0.2"]
    assert str(reply.answer[0].name) == "WwW.ExAmPlE.oRg."
    # a second spelling must not be served the first one's cached bytes
    again = example_server.query("WWW.EXAMPLE.ORG", "A")
    assert str(again.question[0].name) == "WWW.EXAMPLE.ORG."


def test_wildcards_synthesise_answers(example_server) -> None:
    reply = example_server.query("anything.wild.test", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rrset_texts(reply) == ["anything.wild.test. 1 127.0.1.1"]
    assert values(example_server.query("x.y.wild.test", "TXT"), "TXT") == ['"synthesised"']
    exact = example_server.query("exists.wild.test", "A")
    assert values(exact, "A") == ["127.0.1.2"]  # an existing name is never overridden
    nodata = example_server.query("anything.wild.test", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_delegation_is_a_referral(example_server) -> None:
    reply = example_server.query("host.sub.wild.test", "A")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.AA
    assert not reply.answer
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.NS]
    assert any(str(rrset.name) == "ns.sub.wild.test." for rrset in reply.additional)


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_names_outside_every_zone_are_refused(example_server, tcp: bool) -> None:
    reply = example_server.query("www.example.com", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.answer and not reply.flags & dns.flags.AA


def test_edns_answer_carries_opt_and_plain_query_does_not(example_server) -> None:
    with_edns = example_server.query("www.example.org", "A", use_edns=0, payload=4096)
    assert with_edns.edns == 0
    assert with_edns.payload == 1232  # our own limit, whatever the client offers
    plain = example_server.query("www.example.org", "A", use_edns=False)
    assert plain.edns == -1


def test_unknown_edns_version_gets_badvers(example_server) -> None:
    reply = example_server.query("www.example.org", "A", use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0 and not reply.answer


def test_unknown_edns_options_are_ignored(example_server) -> None:
    option = dns.edns.GenericOption(65001, b"whatever")
    reply = example_server.query("www.example.org", "A", use_edns=0, options=[option])
    assert values(reply, "A") == ["127.0.0.2"]


def test_large_answer_is_truncated_on_udp_and_whole_on_tcp(example_server) -> None:
    udp = example_server.query("big.wild.test", "TXT", use_edns=0, payload=1232)
    assert udp.flags & dns.flags.TC and not udp.answer and udp.edns == 0
    tcp = example_server.query("big.wild.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(values(tcp, "TXT")) == 13


def test_udp_size_follows_the_client(example_server) -> None:
    # ~700 bytes: fits an EDNS client's 1232, not a classic 512-byte client
    big_enough = example_server.query("medium.wild.test", "TXT", use_edns=0, payload=1232)
    assert not big_enough.flags & dns.flags.TC and len(values(big_enough, "TXT")) == 6
    classic = example_server.query("medium.wild.test", "TXT", use_edns=False)
    assert classic.flags & dns.flags.TC
    tiny = example_server.query("medium.wild.test", "TXT", use_edns=0, payload=100)
    assert tiny.flags & dns.flags.TC  # below 512 counts as 512 (RFC 6891 6.2.5)


def test_several_queries_on_one_tcp_connection(example_server) -> None:
    names = ["www.example.org", "mail.example.org", "ns1.example.org", "nope.example.org"]
    with socket.create_connection((example_server.host, example_server.port), timeout=5) as sock:
        messages = [dns.message.make_query(name, "A", id=1000 + i) for i, name in enumerate(names)]
        # pipelined: all queries written before any answer is read (RFC 7766 6.2.1.1)
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in messages)))
        replies = {}
        for _ in names:
            reply, _ = dns.query.receive_tcp(sock, time.monotonic() + 5)
            replies[reply.id] = reply
    assert values(replies[1000], "A") == ["127.0.0.2"]
    assert values(replies[1001], "A") == ["127.0.0.3"]
    assert values(replies[1002], "A") == ["127.0.0.1"]
    assert replies[1003].rcode() == dns.rcode.NXDOMAIN


def test_idle_tcp_connections_are_closed(example_server) -> None:
    with socket.create_connection((example_server.host, example_server.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # server closes: --tcp-idle-timeout 2
        assert 1.5 < time.monotonic() - started < 8


def _raw_udp(server, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (server.host, server.port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def _rcode_of(reply: bytes) -> int:
    return struct.unpack("!H", reply[2:4])[0] & 0xF


def test_hostile_packets_get_formerr_notimp_or_nothing(example_server) -> None:
    query = dns.message.make_query("www.example.org", "A", id=4242).to_wire()
    assert _raw_udp(example_server, b"\x12\x34\x00", timeout=0.5) is None  # no header: dropped
    truncated = _raw_udp(example_server, query[:-3])
    assert truncated[:2] == query[:2] and _rcode_of(truncated) == dns.rcode.FORMERR
    two_questions = bytearray(query)
    two_questions[4:6] = b"\x00\x02"
    assert _rcode_of(_raw_udp(example_server, bytes(two_questions))) == dns.rcode.FORMERR
    no_question = bytearray(query[:12])
    no_question[4:6] = b"\x00\x00"
    assert _rcode_of(_raw_udp(example_server, bytes(no_question))) == dns.rcode.FORMERR
    status_opcode = bytearray(query)
    status_opcode[2] = (status_opcode[2] & 0x87) | (2 << 3)
    assert _rcode_of(_raw_udp(example_server, bytes(status_opcode))) == dns.rcode.NOTIMP
    response_bit = bytearray(query)
    response_bit[2] |= 0x80
    assert _raw_udp(example_server, bytes(response_bit), timeout=0.5) is None  # never answer answers
    oversized = query + b"\x00" * 5000
    assert _rcode_of(_raw_udp(example_server, oversized)) == dns.rcode.FORMERR
    pointer_loop = query[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert _rcode_of(_raw_udp(example_server, pointer_loop)) == dns.rcode.FORMERR
    # after all that, it still answers
    assert values(example_server.query("www.example.org", "A"), "A") == ["127.0.0.2"]
    assert example_server.metric("summoner_dns_rejected_packets_total") >= 6
    log = example_server.log()
    assert log.count("rejected packet (malformed)") == 1  # one line per class, not per packet


def test_zone_transfer_is_not_implemented(example_server) -> None:
    reply = example_server.query("example.org", "AXFR", tcp=True)
    assert reply.rcode() == dns.rcode.NOTIMP


def test_garbage_on_tcp_closes_only_that_connection(example_server) -> None:
    with socket.create_connection((example_server.host, example_server.port), timeout=5) as sock:
        sock.sendall(struct.pack("!H", 3) + b"\xff\xff\xff")
        assert sock.recv(100) == b""
    assert values(example_server.query("www.example.org", "A", tcp=True), "A") == ["127.0.0.2"]


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is not installed")
def test_dig_sees_authoritative_answers_and_tc_fallback(example_server) -> None:
    base = ["dig", "-p", str(example_server.port), f"@{example_server.host}", "+norec", "+time=3", "+tries=1"]
    out = subprocess.run([*base, "www.example.org", "A"], capture_output=True, text=True, timeout=20).stdout
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    assert "127.0.0.2" in out
    # dig retries a truncated answer over TCP by itself
    big = subprocess.run([*base, "+bufsize=1232", "big.wild.test", "TXT"],
                         capture_output=True, text=True, timeout=20).stdout
    assert "Truncated, retrying in TCP mode" in big and big.count("IN\tTXT\t") == 13
    refused = subprocess.run([*base, "example.com"], capture_output=True, text=True, timeout=20).stdout
    assert "status: REFUSED" in refused


@pytest.mark.skipif(shutil.which("kdig") is None, reason="kdig (knot-dnsutils) is not installed")
def test_kdig_over_udp_and_tcp(example_server) -> None:
    base = ["kdig", "-p", str(example_server.port), f"@{example_server.host}", "+norec", "+time=3", "+retry=0"]
    for transport in ("+notcp", "+tcp"):
        out = subprocess.run([*base, transport, "nope.example.org", "A"],
                             capture_output=True, text=True, timeout=20).stdout
        assert "status: NXDOMAIN" in out and "SOA" in out
    out = subprocess.run([*base, "+tcp", "+keepopen", "www.example.org", "A", "mail.example.org", "A"],
                         capture_output=True, text=True, timeout=20).stdout
    assert "127.0.0.2" in out and "127.0.0.3" in out


def test_ipv6_listener(start_server) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured")
    server = start_server(host="::1")
    assert values(server.query("www.example.org", "A"), "A") == ["127.0.0.2"]
    assert values(server.query("www.example.org", "A", tcp=True), "A") == ["127.0.0.2"]


def test_more_than_one_opt_record_is_formerr(example_server) -> None:
    query = bytearray(dns.message.make_query("www.example.org", "A", id=77).to_wire())
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    query[10:12] = b"\x00\x02"
    reply = _raw_udp(example_server, bytes(query) + opt + opt)
    assert reply[:2] == b"\x00\x4d" and _rcode_of(reply) == dns.rcode.FORMERR


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize("rdclass", ["CH", "HS"])
def test_a_class_other_than_in_is_refused(example_server, rdclass: str, tcp: bool) -> None:
    # www.example.org exists in IN: only the class can explain REFUSED
    reply = example_server.query("www.example.org", "A", tcp=tcp, rdclass=rdclass)
    assert reply.rcode() == dns.rcode.REFUSED and not reply.answer and not reply.flags & dns.flags.AA
    assert [q.to_text() for q in reply.question] == [f"www.example.org. {rdclass} A"]


@pytest.mark.parametrize("rdtype", ["IXFR", "MAILA", "MAILB"])
def test_transfer_and_mailbox_meta_types_are_not_implemented(example_server, rdtype: str) -> None:
    assert example_server.query("example.org", rdtype).rcode() == dns.rcode.NOTIMP
    assert example_server.query("example.org", rdtype, tcp=True).rcode() == dns.rcode.NOTIMP


def test_the_do_bit_is_echoed(example_server) -> None:
    for name in ("www.example.org", "absent.example.org", "anything.wild.test"):  # exact, NXDOMAIN, wildcard
        reply = example_server.query(name, "A", use_edns=0, want_dnssec=True)
        assert reply.edns == 0 and reply.ednsflags & dns.flags.DO, name
        assert not example_server.query(name, "A", use_edns=0).ednsflags & dns.flags.DO, name


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_ds_at_a_delegation_is_answered_by_the_parent(example_server, tcp: bool) -> None:
    reply = example_server.query("sub.wild.test", "DS", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA and not reply.answer
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]  # NODATA, RFC 4035 3.1.4.1
    referral = example_server.query("sub.wild.test", "A", tcp=tcp)
    assert not referral.flags & dns.flags.AA and referral.authority[0].rdtype == dns.rdatatype.NS


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR", "MAILA", "MAILB"])
def test_meta_types_get_notimp_with_the_question(example_server, rdtype: str, tcp: bool) -> None:
    reply = example_server.query("Example.Org", rdtype, tcp=tcp)
    assert reply.rcode() == dns.rcode.NOTIMP and not reply.answer and not reply.flags & dns.flags.AA
    assert [q.to_text() for q in reply.question] == [f"Example.Org. IN {rdtype}"]


def _with_records(query: bytes, answer: bytes = b"", additional: bytes = b"", ancount: int = 0,
                  arcount: int = 0) -> bytes:
    """``query`` (a question, no records) with these sections appended."""
    data = bytearray(query)
    struct.pack_into("!HHH", data, 6, ancount, 0, arcount)
    return bytes(data) + answer + additional


def _record(rdtype: int, rdata: bytes, rdlength: int | None = None, rdclass: int = 1) -> bytes:
    """A record owned by the root, with RDLENGTH ``len(rdata)`` unless told."""
    return b"\0" + struct.pack("!HHIH", rdtype, rdclass, 0, len(rdata) if rdlength is None else rdlength) + rdata


_QUESTION = dns.message.make_query("www.example.org", "A", id=0x5151).to_wire()
_OPT = _record(41, b"", rdclass=1232)


def test_edns_and_meta_checks_hold_on_every_path(example_server) -> None:
    """The same rules whether the query takes the compiled path or not: an
    extra record in the additional section sends it down the dnslib path."""
    extra = _record(16, b"\x03abc")
    for query, rcode in ((_with_records(_QUESTION, additional=_OPT + _OPT, arcount=2), dns.rcode.FORMERR),
                         (_with_records(_QUESTION, additional=extra + _OPT + _OPT, arcount=3), dns.rcode.FORMERR),
                         (_with_records(_QUESTION, additional=extra, arcount=1), dns.rcode.NOERROR)):
        reply = _raw_udp(example_server, query)
        assert reply is not None and reply[:2] == query[:2] and _rcode_of(reply) == rcode, query.hex()


# Bugs found by tests/test_fuzz.py: the dnslib path accepts what dnslib
# accepts.  Each test sends the packet to the live server over UDP.

@pytest.mark.xfail(strict=True, reason="summoner/wire.py counts OPT records only in the additional section "
                   "(request.ar): an OPT in the answer section is ignored and the query answered NOERROR, "
                   "where RFC 6891 6.1.1 allows the OPT only in the additional section (malformed: FORMERR)")
def test_an_opt_in_the_answer_section_is_formerr(example_server) -> None:
    query = _with_records(_QUESTION, answer=_OPT, ancount=1)
    reply = _raw_udp(example_server, query)
    assert reply is not None and reply[:2] == query[:2] and _rcode_of(reply) == dns.rcode.FORMERR


@pytest.mark.xfail(strict=True, reason="dnslib parses an OPT's RDATA while more than 4 bytes remain and drops "
                   "the rest, so an OPT whose RDATA is not a whole number of options (here 3 bytes) is accepted "
                   "and the query answered NOERROR instead of FORMERR")
def test_an_opt_with_a_truncated_option_is_formerr(example_server) -> None:
    query = _with_records(_QUESTION, additional=_record(41, b"\x00\x0a\x00", rdclass=1232), arcount=1)
    reply = _raw_udp(example_server, query)
    assert reply is not None and reply[:2] == query[:2] and _rcode_of(reply) == dns.rcode.FORMERR


@pytest.mark.xfail(strict=True, reason="dnslib's parsers of known types (here MX) read their fields and ignore "
                   "RDLENGTH, so a record whose RDLENGTH (200) runs past the end of the packet is accepted and "
                   "the query answered NOERROR instead of FORMERR")
def test_a_record_whose_rdlength_runs_past_the_packet_is_formerr(example_server) -> None:
    query = _with_records(_QUESTION, additional=_record(15, b"\x00\x0a\x00", rdlength=200), arcount=1)
    reply = _raw_udp(example_server, query)
    assert reply is not None and reply[:2] == query[:2] and _rcode_of(reply) == dns.rcode.FORMERR


@pytest.mark.xfail(strict=True, reason="dnslib raises 'Error: Empty RR' for any record with RDLENGTH 0 (not an "
                   "OPT), so a well-formed query carrying an unknown-type record with empty RDATA (RFC 3597) "
                   "in its additional section gets FORMERR instead of its answer")
def test_a_record_with_empty_rdata_does_not_make_a_query_malformed(example_server) -> None:
    query = _with_records(_QUESTION, additional=_record(65280, b""), arcount=1)
    dns.message.from_wire(query)  # well-formed
    reply = _raw_udp(example_server, query)
    assert reply is not None and reply[:2] == query[:2] and _rcode_of(reply) == dns.rcode.NOERROR
    assert values(dns.message.from_wire(reply), "A") == ["127.0.0.2"]


@pytest.fixture
def arrowhead_server(start_server, arrowhead_double):
    """summoner on the example zones, with Arrowhead names under ah.test."""
    from tests.arrowhead_double.fixtures import wait_for
    from tests.conftest import EXAMPLE_ZONES
    server = start_server(EXAMPLE_ZONES, "--no-on-demand", "--arrowhead-orchestrator", arrowhead_double.http,
                          "--arrowhead-registry", arrowhead_double.http, "--arrowhead-domain", "ah.test",
                          "--arrowhead-deadline", "5")
    wait_for(lambda: any(s["systemName"] == "summoner" for s in arrowhead_double.control("state")["systems"]),
             what="summoner's system registration")
    return server, arrowhead_double


def test_pipelined_tcp_answers_go_back_as_they_complete(arrowhead_server) -> None:
    """RFC 7766 6.2.1.1: on one connection, the answers to fast questions
    are not held behind an earlier slow one (an orchestration the Arrowhead
    double delays).  Every answer arrives once, matched to its query by ID."""
    server, double = arrowhead_server
    delay = 0.8
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.register_provider("humidity", "10.1.2.4", 8081)
    double.control("knobs", {"delay": {"orchestration": delay}})
    questions = [("temperature.ah.test", "A"), ("www.example.org", "A"), ("mail.example.org", "A"),
                 ("humidity.ah.test", "A"), ("mail.example.org", "AAAA"), ("www.example.com", "A"),
                 ("example.org", "MX")]
    slow = {3000, 3003}
    queries = [dns.message.make_query(name, rdtype, id=3000 + i) for i, (name, rdtype) in enumerate(questions)]
    arrivals: list[tuple[float, dns.message.Message]] = []
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        # all written before any answer is read, the slow ones first and in the
        # middle; one write each, a little apart, so the server reads each query
        # on its own (it must keep reading while it owes an answer)
        for query in queries:
            wire = query.to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            time.sleep(0.02)
        for _ in queries:
            reply, _ = dns.query.receive_tcp(sock, time.monotonic() + 10)
            arrivals.append((time.monotonic() - started, reply))
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing more: one answer per query
    order = [reply.id for _, reply in arrivals]
    assert sorted(order) == [q.id for q in queries], order
    assert set(order[-2:]) == slow, order  # every fast answer before either slow one
    assert all(at >= delay * 0.9 for at, reply in arrivals if reply.id in slow), arrivals
    by_id = {reply.id: reply for _, reply in arrivals}
    for query in queries:
        assert by_id[query.id].question == query.question
    assert values(by_id[3000], "A") == ["10.1.2.3"] and values(by_id[3003], "A") == ["10.1.2.4"]
    assert values(by_id[3001], "A") == ["127.0.0.2"] and values(by_id[3002], "A") == ["127.0.0.3"]
    nodata = by_id[3004]
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority[0].rdtype == dns.rdatatype.SOA
    assert by_id[3005].rcode() == dns.rcode.REFUSED
    assert values(by_id[3006], "MX") == ["10 mail.example.org."]

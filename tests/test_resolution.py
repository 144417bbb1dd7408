"""The chain (summoner/resolution.py): the first definitive answer wins,
tentative answers fall back and are handed down, Deferred stages, failing
stages, and the compiled hot path with the later stages' claims."""

from __future__ import annotations

import dns.message
import dns.rcode
from dnslib import QTYPE, RCODE, RR, A
from twisted.internet import defer

from summoner.answer import Answer, Apex, Query
from summoner.compiled import REFUSED, wire_name
from summoner.resolution import Chain, key_of_wire
from summoner.static import StaticStage
from summoner.wire import Responder, parse_hot
from summoner.zonefile import load_zone_dir
from tests.conftest import EXAMPLE_ZONES


class Fixed:
    """A stage that gives one result for every name (or passes), and
    remembers what it was asked and which earlier answer it was handed."""

    def __init__(self, name: str, result: object = None, claimed: str | None = None) -> None:
        self.name = name
        self.result = result
        self.claimed = claimed
        self.asked: list[tuple[str, Answer | None]] = []
        self.claims_asked: list[tuple[str, Apex | None]] = []

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        self.claims_asked.append((key, zone))
        return key == self.claimed

    def resolve(self, query: Query, earlier: Answer | None = None) -> object:
        self.asked.append((query.key, earlier))
        if self.claimed is not None and query.key != self.claimed:
            return None
        result = self.result
        return result() if callable(result) else result


def address(ip: str, name: str = "x.test") -> Answer:
    return Answer(answer=[RR(name, QTYPE.A, ttl=5, rdata=A(ip))])


def nxdomain() -> Answer:
    return Answer(rcode=RCODE.NXDOMAIN, tentative=True)


def resolved(chain: Chain, name: str = "x.test", qtype: str = "A") -> Answer:
    """The chain's answer, waiting for a Deferred that has already fired."""
    result = chain.resolve(Query.of(name, qtype))
    if isinstance(result, defer.Deferred):
        results: list[Answer] = []
        result.addCallback(results.append)
        assert results, "the Deferred did not fire"
        return results[0]
    return result


def ips(answer: Answer) -> list[str]:
    return [str(rr.rdata) for rr in answer.answer]


def test_the_first_definitive_answer_wins_and_later_stages_are_not_asked() -> None:
    later = Fixed("later", address("10.0.0.3"))
    chain = Chain([Fixed("passes"), Fixed("answers", address("10.0.0.2")), later])
    assert ips(resolved(chain)) == ["10.0.0.2"]
    assert later.asked == []


def test_nothing_answers_refused() -> None:
    answer = resolved(Chain([Fixed("a"), Fixed("b")]))
    assert answer.rcode == RCODE.REFUSED and not answer.authoritative
    assert resolved(Chain([])).rcode == RCODE.REFUSED


def test_a_tentative_answer_is_the_fallback_when_no_later_stage_answers() -> None:
    first = nxdomain()
    second = Fixed("passes")
    answer = resolved(Chain([Fixed("zone", first), second]))
    assert answer is first and answer.rcode == RCODE.NXDOMAIN
    assert second.asked == [("x.test", first)]  # handed down to the later stage


def test_a_later_definitive_answer_beats_a_tentative_one() -> None:
    assert ips(resolved(Chain([Fixed("zone", nxdomain()), Fixed("later", address("10.0.0.4"))]))) == ["10.0.0.4"]


def test_the_latest_tentative_answer_is_handed_on_and_is_the_fallback() -> None:
    # e.g. the zone's NXDOMAIN, then the on-demand stage's "cannot boot, this
    # is the service it stands for": the later stage must see the second
    first, second = nxdomain(), Answer(rcode=RCODE.SERVFAIL, tentative=True, remote_service="hello")
    last = Fixed("last")
    assert resolved(Chain([Fixed("a", first), Fixed("b", second), last])) is second
    assert last.asked == [("x.test", second)]
    # through Deferreds too
    later = Fixed("later")
    chain = Chain([Fixed("a", first), Fixed("slow b", lambda: defer.succeed(second)), later])
    assert resolved(chain) is second and later.asked == [("x.test", second)]


def test_deferred_stages_resume_the_chain() -> None:
    first = nxdomain()
    later = Fixed("later", address("10.0.0.5"))
    chain = Chain([Fixed("slow zone", lambda: defer.succeed(first)), Fixed("slow pass", lambda: defer.succeed(None)),
                   later])
    assert ips(resolved(chain)) == ["10.0.0.5"]
    assert later.asked == [("x.test", first)]  # the tentative answer survives the Deferreds
    # a Deferred definitive answer stops the chain
    stopped = Fixed("never")
    assert ips(resolved(Chain([Fixed("slow", lambda: defer.succeed(address("10.0.0.6"))), stopped]))) == ["10.0.0.6"]
    assert stopped.asked == []
    # and a Deferred tentative answer is the fallback
    assert resolved(Chain([Fixed("slow", lambda: defer.succeed(first)), Fixed("passes")])) is first


def test_a_failing_stage_is_servfail_not_an_exception() -> None:
    def boom() -> Answer:
        raise RuntimeError("boom")
    later = Fixed("later", address("10.0.0.7"))
    answer = resolved(Chain([Fixed("broken", boom), later]))
    assert answer.rcode == RCODE.SERVFAIL and not answer.cacheable
    assert later.asked == []
    failed = resolved(Chain([Fixed("broken later", lambda: defer.fail(RuntimeError("late boom")))]))
    assert failed.rcode == RCODE.SERVFAIL and not failed.cacheable
    # and over the wire: a SERVFAIL response, not an exception
    reply = Responder(Chain([Fixed("broken", boom)])).respond(dns.message.make_query("x.test", "A").to_wire(), "udp")
    assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL


def hot(name: str, qtype: str = "A") -> tuple[bytes, list[int], int]:
    parsed = parse_hot(dns.message.make_query(name, qtype).to_wire())
    assert parsed is not None
    return parsed[2], parsed[3], parsed[4]


def test_compiled_answers_static_names_without_asking_later_stages() -> None:
    later = Fixed("later", address("10.0.0.8"), claimed="www.example.org")
    chain = Chain([StaticStage(load_zone_dir(EXAMPLE_ZONES)), later])
    fragment = chain.compiled(*hot("www.example.org"))
    assert fragment is not None and fragment.rcode == RCODE.NOERROR and fragment.counts[0] == 1
    assert later.claims_asked == []  # an existing name is the zone's: nobody else is asked


def test_compiled_leaves_claimed_in_zone_names_to_the_chain_with_the_zone() -> None:
    static = StaticStage(load_zone_dir(EXAMPLE_ZONES))
    later = Fixed("later", address("10.0.0.9", "dyn.example.org"), claimed="dyn.example.org")
    chain = Chain([static, later])
    assert chain.compiled(*hot("dyn.example.org")) is None  # claimed: the slow path decides
    key, zone = later.claims_asked[-1]
    assert key == "dyn.example.org" and zone is not None and zone.origin == "example.org"
    assert zone.soa.rtype == QTYPE.SOA and zone.soa.ttl == 60  # the negative TTL (RFC 2308)
    # an unclaimed in-zone name keeps the zone's NXDOMAIN
    other = chain.compiled(*hot("other.example.org"))
    assert other is not None and other.rcode == RCODE.NXDOMAIN
    # a name in no zone, claimed by nobody: the chain's REFUSED, asked with no zone
    assert chain.compiled(*hot("elsewhere.test")) is REFUSED
    assert later.claims_asked[-1] == ("elsewhere.test", None)


def test_a_claimed_in_zone_name_is_answered_by_the_later_stage_over_the_wire() -> None:
    later = Fixed("later", lambda: address("127.0.9.1", "dyn.example.org"), claimed="dyn.example.org")
    responder = Responder(Chain([StaticStage(load_zone_dir(EXAMPLE_ZONES)), later]))

    def ask(name: str) -> dns.message.Message:
        return dns.message.from_wire(responder.respond(dns.message.make_query(name, "A").to_wire(), "udp"))
    reply = ask("dyn.example.org")
    assert reply.rcode() == dns.rcode.NOERROR and str(reply.answer[0][0]) == "127.0.9.1"
    # it was handed the zone's tentative NXDOMAIN, zone and SOA included
    earlier = later.asked[-1][1]
    assert earlier is not None and earlier.tentative and earlier.rcode == RCODE.NXDOMAIN
    assert earlier.zone is not None and earlier.zone.origin == "example.org"
    # names it does not claim keep the zone's NXDOMAIN, and static names never reach it
    assert ask("other.example.org").rcode() == dns.rcode.NXDOMAIN
    assert str(ask("www.example.org").answer[0][0]) == "127.0.0.2"
    assert [key for key, _ in later.asked] == ["dyn.example.org"]  # the others: the compiled path


def test_names_needing_escapes_are_left_to_the_slow_path() -> None:
    assert key_of_wire(wire_name("a.example.org")) == "a.example.org"
    assert key_of_wire(b"\x03a.b\x07example\x03org\x00") is None  # a dot inside a label
    assert key_of_wire(b"\x00") == ""
    chain = Chain([StaticStage(load_zone_dir(EXAMPLE_ZONES)), Fixed("later")])
    assert chain.compiled(b"\x03a.b\x07example\x03org\x00", [0, 4, 12, 16], QTYPE.A) is None

"""The responder and chain in-process: answer replay, its lifetime, and stage hand-over."""

from __future__ import annotations

import time

import dns.message
import dns.rcode
from dnslib import CNAME, QTYPE, RR, A

from summoner.resolution import Answer, Chain, Query
from summoner.static import StaticStage
from summoner.wire import Responder
from summoner.zonefile import load_zone_dir
from tests.conftest import EXAMPLE_ZONES


class CountingStage:
    name = "counting"

    def __init__(self, cache_seconds: float | None, claimed: str = "dyn.example.org") -> None:
        self.calls = 0
        self.cache_seconds = cache_seconds
        self.claimed = claimed

    def claims(self, key: str, zone=None) -> bool:
        return key == self.claimed

    def resolve(self, query: Query, earlier=None) -> Answer | None:
        if query.key != self.claimed:
            return None
        self.calls += 1
        rr = RR(query.name, QTYPE.A, ttl=5, rdata=A(f"127.0.9.{self.calls}"))
        return Answer(answer=[rr], cache_seconds=self.cache_seconds)


def ask(responder: Responder, name: str) -> dns.message.Message:
    wire = responder.respond(dns.message.make_query(name, "A").to_wire(), "udp")
    return dns.message.from_wire(wire)


def test_a_later_stage_claims_an_in_zone_name_the_zone_does_not_have() -> None:
    stage = CountingStage(None)
    responder = Responder(Chain([StaticStage(load_zone_dir(EXAMPLE_ZONES)), stage]))
    reply = ask(responder, "dyn.example.org")
    assert reply.rcode() == dns.rcode.NOERROR and str(reply.answer[0][0]) == "127.0.9.1"
    # names the later stage does not claim keep the zone's tentative NXDOMAIN
    assert ask(responder, "other.example.org").rcode() == dns.rcode.NXDOMAIN
    # and existing static names never reach it
    assert str(ask(responder, "www.example.org").answer[0][0]) == "127.0.0.2"


def test_replayed_answers_expire_after_their_lifetime() -> None:
    stage = CountingStage(0.2)
    responder = Responder(Chain([stage]))
    query = dns.message.make_query("dyn.example.org", "A")
    for new_id in (1, 2, 3):
        query.id = new_id
        reply = dns.message.from_wire(responder.respond(query.to_wire(), "udp"))
        assert reply.id == new_id  # the ID is patched into the replayed bytes
    assert stage.calls == 1
    time.sleep(0.25)
    assert str(ask(responder, "dyn.example.org").answer[0][0]) == "127.0.9.2"
    assert stage.calls == 2


def test_clear_cache_forgets_replays() -> None:
    stage = CountingStage(None)
    responder = Responder(Chain([stage]))
    ask(responder, "dyn.example.org")
    ask(responder, "dyn.example.org")
    assert stage.calls == 1
    responder.clear_cache()
    assert str(ask(responder, "dyn.example.org").answer[0][0]) == "127.0.9.2"


def test_a_failing_stage_gives_servfail_not_an_exception() -> None:
    class Broken:
        name = "broken"

        def resolve(self, query: Query, earlier=None) -> Answer:
            raise RuntimeError("boom")

    responder = Responder(Chain([Broken()]))
    assert ask(responder, "x.example.org").rcode() == dns.rcode.SERVFAIL


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    from summoner.backoff import Backoff, delay_after
    backoff = Backoff(1.0, 5.0)
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.upcoming == 1.0 and backoff.failed() == 1.0
    jittered = Backoff(10.0, 100.0, jitter=0.2)
    assert all(8.0 <= jittered.failed() / 2 ** i <= 12.0 for i in range(3))
    assert delay_after(3, 5.0, 300.0) == 20.0


def test_an_answer_that_cannot_be_encoded_late_is_servfail() -> None:
    from twisted.internet import defer

    class Late:
        name = "late"

        def resolve(self, query: Query, earlier=None) -> defer.Deferred:
            # a provider name over 255 octets: dnslib only notices when encoding
            bad = RR(query.name, QTYPE.CNAME, ttl=5, rdata=CNAME(("a" * 60 + ".") * 5))
            return defer.succeed(Answer(answer=[bad]))

    responder = Responder(Chain([Late()]))
    results: list[bytes] = []
    responder.respond(dns.message.make_query("late.example.org", "A").to_wire(), "udp").addCallback(results.append)
    assert dns.message.from_wire(results[0]).rcode() == dns.rcode.SERVFAIL

"""The wire layer (summoner/wire.py) in-process: answer replay, its
lifetime, per-entry invalidation (``Answer.on_hit``) with the real on-demand
stage, and answers that fail to encode.  Chain semantics: tests/test_resolution.py;
the static stage's answers: tests/test_static.py; the wire format against
RFCs: tests/test_dns_conformance.py."""

from __future__ import annotations

import time

import dns.message
import dns.rcode
from dnslib import CNAME, QTYPE, RR, A
from twisted.internet import defer, reactor
from twisted.trial import unittest

from summoner.answer import Answer, Apex, Query
from summoner.resolution import Chain
from summoner.static import StaticStage
from summoner.vm.app import OnDemand
from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import State
from summoner.wire import Responder
from summoner.zonefile import ZoneSet, load_zone_dir, parse_zone_text
from tests.conftest import EXAMPLE_ZONES
from tests.vm.fakes import FakeBackend, host, manifest


class CountingStage:
    name = "counting"

    def __init__(self, cache_seconds: float | None, claimed: str = "dyn.example.org") -> None:
        self.calls = 0
        self.hits = 0
        self.holds = True  # what on_hit says about the cached answer
        self.cache_seconds = cache_seconds
        self.claimed = claimed

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        return key == self.claimed

    def resolve(self, query: Query, earlier: Answer | None = None) -> Answer | None:
        if query.key != self.claimed:
            return None
        self.calls += 1
        rr = RR(query.name, QTYPE.A, ttl=5, rdata=A(f"127.0.9.{self.calls}"))
        return Answer(answer=[rr], cache_seconds=self.cache_seconds, on_hit=self.hit)

    def hit(self) -> bool:
        self.hits += 1
        return self.holds


def ask(responder: Responder, name: str, qtype: str = "A") -> dns.message.Message:
    wire = responder.respond(dns.message.make_query(name, qtype).to_wire(), "udp")
    return dns.message.from_wire(wire)


def address(reply: dns.message.Message) -> str:
    return reply.answer[0][0].to_text()


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


def test_a_replay_whose_answer_no_longer_holds_is_resolved_afresh_and_only_that_one() -> None:
    static = StaticStage(load_zone_dir(EXAMPLE_ZONES))
    stage = CountingStage(None)
    responder = Responder(Chain([static, stage]))
    assert address(ask(responder, "www.example.org")) == "127.0.0.2"
    assert address(ask(responder, "dyn.example.org")) == "127.0.9.1"
    assert address(ask(responder, "dyn.example.org")) == "127.0.9.1"
    assert (stage.calls, stage.hits) == (1, 1)  # one replay, asked whether it holds
    stage.holds = False
    assert address(ask(responder, "dyn.example.org")) == "127.0.9.2"  # not replayed: resolved again
    assert (stage.calls, stage.hits) == (2, 2)
    stage.holds = True
    assert address(ask(responder, "dyn.example.org")) == "127.0.9.2"  # the new answer is replayed
    assert stage.calls == 2
    # The static answer stayed cached: the zone behind it changes now, and the
    # replay still says what was cached, until the app clears the cache (as a
    # zone reload does).
    text = (EXAMPLE_ZONES / "example.org.zone").read_text().replace("127.0.0.2", "127.0.0.99").replace("::1", "::99")
    changed = parse_zone_text(text, "example.org", EXAMPLE_ZONES / "example.org.zone")
    static.update(ZoneSet({changed.origin: changed}))
    assert address(ask(responder, "www.example.org", "AAAA")) == "::99"  # the stage has the new data
    assert address(ask(responder, "www.example.org")) == "127.0.0.2"  # replayed
    responder.clear_cache()
    assert address(ask(responder, "www.example.org")) == "127.0.0.99"


class OnDemandReplayTest(unittest.TestCase):
    """The real on-demand stage, its fleet on a fake libvirt whose "VMs" are
    local HTTP listeners (tests/vm/fakes.py)."""

    timeout = 30

    @defer.inlineCallbacks
    def test_a_stopped_vm_s_name_is_summoned_again_while_static_replays_stay(self):
        backend = FakeBackend(0.05)
        od = OnDemand(OnDemandConfig(virt_type="qemu", reap_interval=0.1), reactor,
                      backend=backend, images={"hello": manifest("hello")})
        od.update_hosts([host("summoned", "127.0.0.97", "hello")])
        self.addCleanup(backend.teardown)
        self.addCleanup(od.stop)
        yield od.start()
        static = StaticStage(load_zone_dir(EXAMPLE_ZONES))
        responder = Responder(Chain([static, od.stage]))
        query = dns.message.make_query("summoned.example.org", "A").to_wire()

        def answer(reply: bytes) -> str:
            return address(dns.message.from_wire(reply))
        assert address(ask(responder, "www.example.org")) == "127.0.0.2"
        cold = responder.respond(query, "udp")
        self.assertIsInstance(cold, defer.Deferred)  # the first query boots the VM
        self.assertEqual(answer((yield cold)), "127.0.0.97")
        svc = od.fleet.services["summoned.example.org"]
        before = svc.last_demand
        warm = responder.respond(query, "udp")
        self.assertIsInstance(warm, bytes)  # replayed
        self.assertEqual(answer(warm), "127.0.0.97")
        self.assertGreater(svc.last_demand, before)  # and the replay counted as demand
        self.assertEqual(backend.creates, 1)

        stopped = yield od.stop_service("summoned.example.org")
        self.assertEqual(stopped["state"], "stopped")
        self.assertIs(svc.state, State.STOPPED)
        # The cache-flush callback above does nothing: the stale entry is
        # found out on its own (its on_hit says the service is not READY).
        again = responder.respond(query, "udp")
        self.assertIsInstance(again, defer.Deferred)  # not replayed: summoned again
        self.assertEqual(answer((yield again)), "127.0.0.97")
        self.assertEqual(backend.creates, 2)
        self.assertIs(svc.state, State.READY)
        self.assertIsInstance(responder.respond(query, "udp"), bytes)  # and replayed again
        # The static answer was replayed throughout: it never left the cache.
        text = (EXAMPLE_ZONES / "example.org.zone").read_text().replace("127.0.0.2", "127.0.0.99")
        changed = parse_zone_text(text, "example.org", EXAMPLE_ZONES / "example.org.zone")
        static.update(ZoneSet({changed.origin: changed}))
        assert address(ask(responder, "www.example.org")) == "127.0.0.2"

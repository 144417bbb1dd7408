"""Idle reaping by DNS demand and guest traffic (summoner.vm.reaper),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from twisted.internet import defer

from summoner.answer import Query
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class ReaperTest(FleetCase):
    @defer.inlineCallbacks
    def test_idle_reap_then_reboot(self):
        od = self.make([host("hello", "127.0.0.47", "hello", idle=0.3)], {"hello": manifest("hello")})
        yield od.start()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        # Queries (on_hit) keep it alive past the idle timeout.
        for _ in range(5):
            yield sleep(0.1)
            answer.on_hit()
        self.assertEqual(self.svc("hello.example.org").state, State.READY)
        yield sleep(0.6)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual(self.backend.domains, {})
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(self.backend.creates, 2)

    @defer.inlineCallbacks
    def test_guest_traffic_keeps_it_alive(self):
        od = self.make([host("hello", "127.0.0.48", "hello", idle=0.3)], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        dom = "summoner-hello.example.org"
        for i in range(8):  # counters change every tick: traffic, no DNS
            self.backend.traffic_tokens[dom] = (f"TCP[TIME_WAIT] {i}",)
            yield sleep(0.1)
        self.assertEqual(self.svc("hello.example.org").state, State.READY)
        self.backend.traffic_tokens[dom] = ()
        yield sleep(0.7)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)


ReaperTestEventsBefore, ReaperTestEventsAfter = event_orders(ReaperTest)

"""libvirt's lifecycle events turned into transitions (summoner.vm.events),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from dnslib import RCODE
from twisted.internet import defer

from summoner.answer import Query
from summoner.vm.backend import DomainEvent
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class EventsTest(FleetCase):
    @defer.inlineCallbacks
    def test_external_destroy_is_noticed_and_next_query_boots(self):
        od = self.make([host("hello", "127.0.0.46", "hello")], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        warm = od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertTrue(warm.on_hit())  # a cached replay of it holds while the VM runs
        self.backend.kill("summoner-hello.example.org")
        yield sleep(0.01)  # the events arrive
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertFalse(warm.on_hit())  # ...and not once it is gone: the wire layer resolves afresh
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 2)

    @defer.inlineCallbacks
    def test_a_standby_pause_reported_late_does_not_abort_its_boot(self):
        od = self.make([host("hello", "127.0.0.97", "hello")], {"hello": manifest("hello")},
                       standby=True, boot_delay=0.2)
        yield od.start()
        yield sleep(0.05)
        svc = self.svc("hello.example.org")
        uuid = self.backend.domains["summoner-hello.example.org"]["uuid"]
        pending = od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.05)
        # the pause libvirt reports for the standby's creation, arriving after the resume
        od.fleet.events.on_event("summoner-hello.example.org", DomainEvent.SUSPENDED, "paused", uuid)
        answer = yield pending
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(svc.state, State.READY)


EventsTestEventsBefore, EventsTestEventsAfter = event_orders(EventsTest)

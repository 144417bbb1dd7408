"""Stop modes and queries that come while a VM stops (summoner.vm.stop),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

import time

from dnslib import RCODE
from twisted.internet import defer

from summoner.answer import Query
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class StopTest(FleetCase):
    @defer.inlineCallbacks
    def test_suspend_mode_resumes_fast(self):
        od = self.make([host("hello", "127.0.0.49", "hello", idle=0.2, stop="suspend")],
                       {"hello": manifest("hello")}, boot_delay=0.3)
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.5)
        self.assertEqual(self.svc("hello.example.org").state, State.SUSPENDED)
        started = time.monotonic()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertLess(time.monotonic() - started, 0.1)  # no boot delay
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 1)

    @defer.inlineCallbacks
    def test_shutdown_mode_destroys_after_grace(self):
        od = self.make([host("hello", "127.0.0.100", "hello", idle=0.2, stop="shutdown")],
                       {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.5)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPING)  # ACPI ignored, in grace
        yield sleep(0.6)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual(self.backend.destroys, 1)

    @defer.inlineCallbacks
    def test_shutdown_mode_guest_that_powers_off_needs_no_destroy(self):
        od = self.make([host("hello", "127.0.0.102", "hello", idle=0.2, stop="shutdown")],
                       {"hello": manifest("hello")})
        self.backend.acpi.add("hello.example.org")  # the guest honours the ACPI power button
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.65)  # reaped after ~0.3 s, powered off ~0.11 s later; the grace (0.5 s) not over
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual((self.backend.shutdowns, self.backend.destroys), (1, 0))
        self.assertIn(("summoner-hello.example.org", "stopped", "shutdown"), self.backend.events)
        yield sleep(0.5)  # past the grace: still no destroy
        self.assertEqual(self.backend.destroys, 0)

    @defer.inlineCallbacks
    def test_query_while_stopping_boots_again(self):
        od = self.make([host("hello", "127.0.0.96", "hello")], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        stopping = od.stop_service("hello.example.org")
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPING)
        d = od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertIsInstance(d, defer.Deferred)
        yield stopping
        answer = yield d
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 2)


StopTestEventsBefore, StopTestEventsAfter = event_orders(StopTest)

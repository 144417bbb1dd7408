"""Standby domains (summoner.vm.standby),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from dnslib import RCODE
from twisted.internet import defer, reactor

from summoner.answer import Query
from summoner.vm.app import OnDemand
from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class StandbyTest(FleetCase):
    @defer.inlineCallbacks
    def test_standby_domain_is_used_by_the_cold_boot_and_prepared_again(self):
        od = self.make([host("hello", "127.0.0.98", "hello")], {"hello": manifest("hello")}, standby=True)
        yield od.start()
        yield sleep(0.05)
        svc = self.svc("hello.example.org")
        self.assertTrue(svc.standby)
        self.assertEqual(self.backend.domains["summoner-hello.example.org"]["state"], "paused")
        self.assertEqual(self.backend.creates, 1)
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 1)  # the query resumed the standby, no create
        self.assertEqual(svc.boot_count, 1)
        self.assertFalse(svc.standby)
        yield od.stop_service("hello.example.org")
        yield sleep(0.05)
        self.assertTrue(svc.standby)  # a new standby after the stop
        self.assertEqual(self.backend.creates, 2)
        # A restarted summoner takes the standby over instead of making another.
        od2 = OnDemand(OnDemandConfig(virt_type="qemu", standby=True), reactor,
                       backend=self.backend, images={"hello": manifest("hello")})
        od2.update_hosts([host("hello", "127.0.0.98", "hello")])
        yield od2.start()
        self.assertTrue(od2.fleet.services["hello.example.org"].standby)
        self.assertEqual(od2.fleet.services["hello.example.org"].state, State.STOPPED)
        self.assertEqual(self.backend.creates, 2)
        od2.reaper.stop()


StandbyTestEventsBefore, StandbyTestEventsAfter = event_orders(StandbyTest)
